"""lm-eval's ``vllm`` model type under a method (``mesa-viz-vllm``,
:mod:`mesa_viz_vllm.harness`) and ``python -m mesa_viz_vllm ruler``
(:mod:`mesa_viz_vllm.ruler`): two offline RULER tasks at 4x ``T`` on a tiny
Llama give the rows ``mesa-viz ruler`` gives on transformers -- the same
prompts, predictions, scores and needle cuts -- and a request past
``max_model_len`` is refused, never cut."""

from __future__ import annotations

import pytest
import torch

from vllm_cases import KV_CACHE_BYTES, NOT_HERE

pytest.importorskip("vllm", reason=NOT_HERE)
pytest.importorskip("lm_eval", reason=NOT_HERE)
mesa_viz_vllm = pytest.importorskip("mesa_viz_vllm", reason=NOT_HERE)

T = 160                       # the tiny tokenizer spends ~250 tokens on RULER's template
GRID = dict(methods=["origin", "mesa"], tasks=["niah_multivalue_noise", "ruler_fwe"],
            lengths=[4 * T], samples=2, train_length=T, gen_kwargs={"max_gen_toks": 8})
ENGINE = dict(dtype="float32", enforce_eager=True, kv_cache_memory_bytes=KV_CACHE_BYTES)


def _held_back(row: dict) -> dict:
    """The row with its prediction's trailing U+FFFD dropped: vLLM's incremental
    detokenizer holds back the bytes of a character the last token leaves
    unfinished, where transformers' one decode writes U+FFFD (the same tokens;
    random weights emit such bytes often, a real model at the end of an
    answer rarely)."""
    return {**row, "prediction": row["prediction"].rstrip("\ufffd")}


def test_vllm_ruler_rows_are_the_transformers_engines(saved_models, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mesa_viz.analyses.ruler import run as ruler_run
    from mesa_viz.runs import read_jsonl
    from mesa_viz_vllm.__main__ import main

    _, path = saved_models("llama")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    reference = list(ruler_run.evaluate(model, AutoTokenizer.from_pretrained(path),
                                        out=tmp_path / "hf" / "ruler.jsonl", **GRID))
    code = main(["ruler", path, "--methods", "origin,mesa", "--tasks",
                 ",".join(GRID["tasks"]), "--lengths", str(4 * T), "--samples", "2",
                 "--train-length", str(T), "--max-gen-toks", "8",
                 *[f"--engine-arg={k}={str(v).lower()}" for k, v in ENGINE.items()],
                 "--out", str(tmp_path / "vllm")])
    assert code == 0, capsys.readouterr().err
    got = read_jsonl(tmp_path / "vllm" / "ruler.jsonl")
    assert len(reference) == 2 * 2 * 2
    key = lambda r: (r["method"], r["task"], r["length"], r["sample"])  # noqa: E731
    assert sorted(map(_held_back, got), key=key) == sorted(map(_held_back, reference), key=key)
    assert any(r["needle_cuts"] for r in got if r["method"] == "mesa") or \
        all(r["needle_spans"] is not None for r in got)
    assert "mesa" in capsys.readouterr().out                      # the summary table


def test_the_model_type_runs_through_lm_eval(saved_models, monkeypatch):
    """``lm_eval.simple_evaluate(model="mesa-viz-vllm", model_args="...")``:
    the model type is found by name, its model args parsed as lm-eval's
    command line parses them, and its engine runs the method (the rows above
    check its numbers)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import mesa_viz_vllm.harness as harness  # (lm-eval's CLI: mesa_viz's start-up hook)
    from mesa_viz.analyses.ruler.tasks import TASK_DIR
    _, path = saved_models("llama")
    manager = TaskManager(include_path=str(TASK_DIR), metadata=dict(
        pretrained=path, max_seq_lengths=[4 * T], num_samples=1))
    built = []
    real = harness.MethodVLLM.__init__
    monkeypatch.setattr(harness.MethodVLLM, "__init__",
                        lambda self, *a, **k: built.append(self) or real(self, *a, **k))
    try:
        args = ",".join(f"{k}={v}" for k, v in dict(
            pretrained=path, method="mesa", train_length=T, max_model_len=4 * T + 256,
            **ENGINE).items())
        res = lm_eval.simple_evaluate(model=harness.MODEL_TYPE, model_args=args,
                                      tasks=["niah_multivalue_noise"], task_manager=manager,
                                      gen_kwargs="max_gen_toks=4", bootstrap_iters=0)
    finally:
        for lm in built:
            harness.shutdown(lm)
    assert 0 <= res["results"]["niah_multivalue_noise"][f"{4 * T},none"] <= 1
    assert [lm.spec.method for lm in built] == ["mesa"] and built[0].spec.train_length == T
    assert built[0].max_length == 4 * T + 256


def test_a_request_past_max_model_len_is_refused(saved_models):
    from lm_eval.api.instance import Instance

    from mesa_viz_vllm.harness import MethodVLLM, shutdown
    _, path = saved_models("llama")
    lm = MethodVLLM(pretrained=path, method="rerope", max_model_len=64, **ENGINE)
    try:
        long = Instance("generate_until", {}, ("word " * 80, {"max_gen_toks": 4}), 0)
        with pytest.raises(ValueError, match="longer than max_model_len=64"):
            lm.generate_until([long])
    finally:
        shutdown(lm)


@pytest.mark.parametrize("args, match", [
    (dict(method="mesa"), "max_model_len=None"),
    (dict(method="yarn", max_model_len=512), "changes the RoPE frequencies"),
    (dict(method="mesa", max_model_len=512, enable_chunked_prefill=True),
     "enable_chunked_prefill=True"),
    (dict(method="mesa", max_model_len=512, data_parallel_size=2), "data_parallel_size=2"),
    (dict(method="mesa", max_model_len=512, stair_width=0), "stair_width"),
])
def test_bad_model_args_are_refused_before_the_engine(saved_models, args, match):
    from mesa_viz_vllm.harness import MethodVLLM
    _, path = saved_models("llama")
    with pytest.raises(ValueError, match=match):
        MethodVLLM(pretrained=path, **args)


def test_lm_evals_command_line_finds_the_model_type():
    """mesa_viz's lm-eval start-up hook registers ``mesa-viz-vllm`` where the
    plugin is installed, as ``lm_eval --model mesa-viz-vllm`` needs."""
    import subprocess
    import sys
    code = ("import lm_eval.models\nfrom lm_eval.api.registry import get_model\n"
            "print(get_model('mesa-viz-vllm').__module__, get_model('vllm').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.stdout.split() == ["mesa_viz_vllm.harness", "VLLM"], out.stderr[-2000:]
