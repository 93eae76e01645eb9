"""The passkey evaluation: every method x length x depth x sample answered greedily
under ``apply()``, one row a sample, appended as it finishes (a rerun resumes)."""

from __future__ import annotations

import functools
import logging
import numbers
import time
from collections.abc import Iterator
from pathlib import Path

from ...models.parts import model_device, model_name
from ...runs.sweep import ResultsFile, sweep
from ...runs.validate import check_lengths, check_methods
from ...runtime import apply, fits
from .rows import row_key
from .samples import DEPTHS, check_depth, make_sample, parse_answer

__all__ = ["evaluate", "check_grid", "RESULTS_FILE"]

log = logging.getLogger(__name__)

#: The file name ``mesa-viz passkey`` writes in its run folder.
RESULTS_FILE = "passkey.jsonl"


def check_grid(methods, lengths, depths, method_params: dict | None = None) -> None:
    """Raise ValueError for a grid :func:`evaluate` would refuse (no model needed)."""
    check_methods(methods, method_params)
    if lengths is not None:
        check_lengths(lengths)
    if depths is not None and not depths:
        raise ValueError("depths is empty: allowed a non-empty list of numbers in [0, 1]")
    for d in depths or ():
        check_depth(d)


def _samples_for(tokenizer, samples, lengths, depths) -> list[dict]:
    """Samples to run: generated (``samples`` an int: seeds 0..samples-1 per
    length x depth) or given (a list of sample dicts, filtered to the grid)."""
    if isinstance(samples, numbers.Integral):
        if samples < 1 or not lengths:
            raise ValueError(f"samples={samples!r} with lengths={lengths!r}: allowed samples "
                             ">= 1 with lengths given (or a list of sample dicts)")
        return [make_sample(tokenizer, L, d, s) for L in lengths
                for d in (DEPTHS if depths is None else depths) for s in range(samples)]
    out = [s for s in samples if (lengths is None or s["length"] in lengths)
           and (depths is None or s["depth"] in depths)]
    if not out:
        raise ValueError(f"no given samples match lengths={lengths} depths={depths}")
    return out


def evaluate(model, tokenizer, *, methods, lengths=None, depths=None, samples=1,
             out: "str | Path", method_params: dict | None = None,
             max_new_tokens: int = 8) -> Iterator[dict]:
    """Passkey answers for every method x length x depth x sample, streamed.

    ``samples``: an int (seeds ``0..samples-1`` per length x depth, prompts
    made here; ``depths`` default :data:`.samples.DEPTHS`) or a list of sample
    dicts (:func:`.samples.read_samples`; ``lengths``/``depths`` ``None`` take
    them all).  ``method_params``: ``{method: {param: value}}``.  ``out``: the
    ``.jsonl`` file each row is appended to as it finishes; rows already there
    are not run again.  Checks the grid now and returns an iterator yielding
    the grid's rows (old and new) in order, lengths first, with a tqdm progress
    bar; a length that ``runtime.memory`` predicts will not fit is skipped with
    a warning.
    """
    method_params = dict(method_params or {})
    methods = list(methods)
    check_grid(methods, lengths, depths, method_params)
    results = ResultsFile(out, row_key)
    todo = _samples_for(tokenizer, samples, lengths, depths)
    name = model_name(model)
    if others := results.others("model", name):
        log.warning("%s holds rows of other models %s: they count as done too", out, others)
    _warn_other_keys(results, methods, todo)
    units = [(method, s) for length in sorted({s["length"] for s in todo}) for method in methods
             for s in todo if s["length"] == length]

    @functools.cache
    def too_long(method: str, length: int) -> bool:
        return not fits(model, method, length, method_params.get(method, {}), max_new_tokens)

    return sweep(results, units, keys=lambda u: [row_key(u[1], u[0])],
                 run=lambda u: [_run_one(model, tokenizer, u[1], u[0],
                                         method_params.get(u[0], {}), max_new_tokens, name)],
                 skip=lambda u: too_long(u[0], u[1]["length"]), desc="passkey", unit="sample")


def _warn_other_keys(results: ResultsFile, methods, todo) -> None:
    """Say so when the file holds rows for these samples asked with other keys
    (another sampler, e.g. before keys were drawn per depth): kept, not reused."""
    asked = {k[:4] for k in (row_key(s, m) for s in todo for m in methods)}
    mine = {k for s in todo for k in (row_key(s, m) for m in methods)}
    stale = [k for k in results.rows if k[:4] in asked and k not in mine]
    if stale:
        log.warning("%s holds %d rows of these samples asked with other keys (an older "
                    "sampler): they stay in the file but are run again", results.path,
                    len(stale))


def _generate(model, tokenizer, sample, method, params, max_new_tokens):
    """Greedy answer under ``method``: (text, the resolved method, seconds)."""
    import torch

    ids = torch.tensor([sample["input_ids"]], device=model_device(model))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    t0 = time.perf_counter()
    with torch.inference_mode(), apply(model, method, **params) as state:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad)
    seconds = time.perf_counter() - t0
    resolved = state.resolved or state.method.resolve(ids.shape[1], state.train_length)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return text, resolved, seconds


def _run_one(model, tokenizer, sample, method, params, max_new_tokens, name) -> dict:
    """Answer one sample: its row."""
    text, resolved, seconds = _generate(model, tokenizer, sample, method, params, max_new_tokens)
    got, span = parse_answer(text), sample.get("needle_span")
    row = dict(method=method, length=int(sample["length"]), depth=float(sample["depth"]),
               seed=int(sample["seed"]), expected=int(sample["passkey"]), answer=got,
               correct=got == int(sample["passkey"]), needle_span=span,
               needle_cuts=None if span is None else list(resolved.span_cuts(*span)),
               filler_offset=sample.get("filler_offset"), text=text,
               seconds=round(seconds, 4), params=resolved.params(), model=name)
    log.debug("%s L=%d depth=%g seed=%d: %r (%s)", method, row["length"], row["depth"],
              row["seed"], text, "ok" if row["correct"] else "wrong")
    return row
