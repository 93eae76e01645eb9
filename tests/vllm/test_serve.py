"""The method through ``hf_overrides`` alone, as ``vllm serve --hf-overrides``
runs it: the JSON printed by ``python -m mesa_viz_vllm overrides``, handed to
vLLM's own ``LLM`` with the engine in its own process and tensor parallel 2
on CPU; the same greedy tokens and log-probabilities as ``apply()``.  And the
refusals made before an engine starts."""

from __future__ import annotations

import json

import pytest

from vllm_cases import (KV_CACHE_BYTES, NOT_HERE, check_rows, compare, prompts_of, reference,
                        run_vllm)

pytest.importorskip("vllm", reason=NOT_HERE)
mesa_viz_vllm = pytest.importorskip("mesa_viz_vllm", reason=NOT_HERE)

T, STEPS, LONGEST = 64, 6, 512


def _overrides(capsys, path: str, *args: str) -> tuple[int, str, str]:
    """``python -m mesa_viz_vllm overrides PATH ARGS``: (exit code, stdout, stderr)."""
    from mesa_viz_vllm.__main__ import main
    capsys.readouterr()
    code = main(["overrides", path, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_hf_overrides_run_mesa_in_engine_processes_with_tensor_parallel_2(saved_models,
                                                                          monkeypatch, capsys):
    model, path = saved_models("llama")
    code, out, err = _overrides(capsys, path, "--method", "mesa", "--train-length", str(T),
                                "--max-model-len", str(LONGEST))
    assert code == 0, err
    overrides = json.loads(out)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")   # one NUMA node: no binding
    from vllm import LLM
    llm = LLM(model=path, hf_overrides=overrides, dtype="float32", max_model_len=LONGEST,
              enforce_eager=True, kv_cache_memory_bytes=KV_CACHE_BYTES,
              tensor_parallel_size=2, distributed_executor_backend="mp",
              enable_prefix_caching=False, enable_chunked_prefill=False)
    try:
        prompts = prompts_of((40, 333, 480), seed=2)
        label = dict(family="llama", method="mesa", setting="hf_overrides, own process, TP 2")
        refs = reference(model, "mesa", T, {}, prompts, STEPS)
        check_rows([compare(label, p, r, g)
                    for p, r, g in zip(prompts, refs, run_vllm(llm, prompts, STEPS))])
    finally:
        llm.llm_engine.engine_core.shutdown()


def test_the_overrides_command_names_a_bad_parameter(saved_models, capsys):
    code, out, err = _overrides(capsys, saved_models("llama")[1], "--method", "mesa",
                                "--param", "first_chunks=8")
    assert (code, out) == (2, "")
    assert "unknown parameter(s) ['first_chunks'] for method 'mesa'" in err


@pytest.mark.parametrize("method, params, engine, match", [
    ("mesa", {}, {"enable_prefix_caching": True}, r"enable_prefix_caching=True"),
    ("nope", {}, {}, r"unknown method 'nope'"),
    ("rerope", {"window": 0}, {}, r"window=0"),
])
def test_llm_refuses_before_the_engine_starts(saved_models, method, params, engine, match):
    with pytest.raises(ValueError, match=match):
        mesa_viz_vllm.LLM(saved_models("llama")[1], method, train_length=T, engine=engine,
                          **params)


def test_another_vllm_release_is_refused(monkeypatch):
    import vllm
    monkeypatch.setattr(vllm, "__version__", "0.31.0")
    with pytest.raises(RuntimeError, match=r"vLLM 0\.31\.0 is not the release .* allowed 0\.32"):
        mesa_viz_vllm.LLM("unused", "mesa")
