"""``python -m mesa_viz_vllm passkey`` (:mod:`mesa_viz_vllm.passkey`): the rows
vLLM's engine gives are those of ``mesa-viz passkey`` on transformers for the
same samples -- the same prompts, answers, parsed passkeys, resolved parameters
and needle cuts -- all but ``seconds``."""

from __future__ import annotations

import pytest
import torch

from vllm_cases import KV_CACHE_BYTES, NOT_HERE

pytest.importorskip("vllm", reason=NOT_HERE)
mesa_viz_vllm = pytest.importorskip("mesa_viz_vllm", reason=NOT_HERE)

#: The tiny Llama's own training length (its max_position_embeddings, 128) serves as T:
#: mesa_viz's passkey evaluate() refuses a train_length in method_params (its memory check
#: passes it twice), so neither engine is given one.
GRID = dict(methods=["origin", "mesa", "rerope"], lengths=[100, 400], depths=[0.5], samples=2,
            max_new_tokens=8)


def _without_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_vllm_passkey_rows_are_the_transformers_engines(saved_models, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mesa_viz.analyses.passkey import run as passkey_run
    from mesa_viz.runs import read_jsonl
    from mesa_viz_vllm.__main__ import main

    _, path = saved_models("llama")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    reference = list(passkey_run.evaluate(model, AutoTokenizer.from_pretrained(path),
                                          out=tmp_path / "hf.jsonl", **GRID))
    code = main(["passkey", path, "--methods", ",".join(GRID["methods"]), "--lengths",
                 "100,400", "--depths", "0.5", "--samples", "2",
                 "--engine-arg", "dtype=float32", "--engine-arg", "max_model_len=420",
                 "--engine-arg", "enforce_eager=true",
                 "--engine-arg", f"kv_cache_memory_bytes={KV_CACHE_BYTES}",
                 "--out", str(tmp_path / "vllm")])
    assert code == 0, capsys.readouterr().err
    got = read_jsonl(tmp_path / "vllm" / "passkey.jsonl")
    assert len(reference) == 3 * 2 * 2
    key = lambda r: (r["method"], r["length"], r["seed"])  # noqa: E731
    assert sorted(_without_seconds(got), key=key) == sorted(_without_seconds(reference), key=key)
