"""The passkey evaluation with vLLM as the engine: the samples, answers and rows of
``mesa_viz.analyses.passkey`` (``mesa-viz passkey``), identical in form, each
method's samples answered greedily by one vLLM engine running the method.

A row is the transformers engine's row for the same sample: the prompt made by
``make_sample`` with the model's tokenizer, the answer parsed by
``parse_answer``, the method's parameters resolved for the last forward
``generate`` ran (the prompt plus all generated tokens but the last), the
needle's cuts read off that layout; only ``seconds`` (the engine's time, shared
by the samples of the call) differs.  Rows are appended to ``passkey.jsonl``
as each method finishes; a rerun resumes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mesa_viz.analyses.passkey import run as passkey_run
from mesa_viz.analyses.passkey.rows import row_key
from mesa_viz.methods import get_method
from mesa_viz.models.parts import model_name, train_length_source
from mesa_viz.runs.sweep import ResultsFile, sweep

from .engine import LLM, model_holder

__all__ = ["evaluate"]

log = logging.getLogger(__name__)


def evaluate(model: str, *, methods, lengths=None, depths=None, samples=1,
             out: "str | Path", method_params: dict | None = None, max_new_tokens: int = 8,
             engine: dict | None = None) -> list[dict]:
    """Passkey rows for every method x length x depth x sample, as
    ``mesa_viz.analyses.passkey.evaluate`` makes them, from one vLLM engine per
    method on ``model`` (a path).  ``method_params``: ``{method: {param:
    value}}`` (``train_length`` among them); ``engine``: ``vllm.LLM``
    arguments.  ``out``: the ``.jsonl`` file rows are appended to."""
    from transformers import AutoTokenizer

    method_params = dict(method_params or {})
    methods = list(methods)
    passkey_run.check_grid(methods, lengths, depths, method_params)
    tokenizer = AutoTokenizer.from_pretrained(model)
    holder = model_holder(model)
    todo = passkey_run._samples_for(tokenizer, samples, lengths, depths)
    results = ResultsFile(out, row_key)
    units = [(m, todo) for m in methods]

    def run(unit):
        method, batch = unit
        missing = [s for s in batch if row_key(s, method) not in results]
        return _answer(model, tokenizer, holder, missing, method,
                       method_params.get(method, {}), max_new_tokens, engine or {})

    return list(sweep(results, units, keys=lambda u: [row_key(s, u[0]) for s in u[1]],
                      run=run, desc="passkey (vLLM)", unit="method"))


def _answer(model, tokenizer, holder, batch, method, params, max_new_tokens,
            engine) -> list[dict]:
    """The rows of ``batch`` answered by one engine running ``method``."""
    from vllm import SamplingParams, TokensPrompt

    own = {k: v for k, v in params.items() if k != "train_length"}
    T = params.get("train_length")
    llm = LLM(model, method, train_length=T, engine=engine, **own)
    try:
        stop = passkey_run._stop_ids(holder, tokenizer)       # where generate() stops
        sp = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, ignore_eos=True,
                            stop_token_ids=sorted(stop))
        t0 = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=s["input_ids"]) for s in batch], sp,
                            use_tqdm=False)
        seconds = (time.perf_counter() - t0) / max(1, len(batch))
    finally:
        llm.llm_engine.engine_core.shutdown()
    T = T if T is not None else train_length_source(holder)[0]
    rows = []
    for s, o in zip(batch, outs):
        tokens = passkey_run._until_stop(list(o.outputs[0].token_ids), stop)
        P = len(s["input_ids"])
        # the last forward generate() ran: the prompt and every generated token but the last
        resolved = get_method(method, **own).resolve(P + max(0, len(tokens) - 1), T,
                                                     prefill_length=P)
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        rows.append(passkey_run._row(s, method, params, text, resolved, seconds,
                                     model_name(holder), holder))
    return rows
