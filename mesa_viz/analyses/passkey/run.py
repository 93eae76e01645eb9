"""The passkey evaluation: every method x length x depth x sample answered greedily
under ``apply()``, one row a sample, appended as it finishes (a rerun resumes).
Samples of one method, length, depth and exact token count run in batches of up
to ``batch_size`` rows, each row equal to the sample run alone
(``tests/tiny/runtime/test_batches.py``)."""

from __future__ import annotations

import functools
import logging
import numbers
import time
from collections.abc import Iterator
from pathlib import Path

from ...models.parts import model_device, model_name, train_length_fields
from ...runs.sweep import ResultsFile, sweep
from ...runs.validate import check_lengths, check_methods
from ...runtime import apply, fits
from .rows import row_key
from .samples import DEPTHS, check_depth, make_sample, parse_answer

__all__ = ["evaluate", "check_grid", "check_batch_size", "RESULTS_FILE"]

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
             max_new_tokens: int = 8, batch_size: int = 1) -> Iterator[dict]:
    """Passkey answers for every method x length x depth x sample, streamed.

    ``samples``: an int (seeds ``0..samples-1`` per length x depth, prompts
    made here; ``depths`` default :data:`.samples.DEPTHS`) or a list of sample
    dicts (:func:`.samples.read_samples`; ``lengths``/``depths`` ``None`` take
    them all).  ``method_params``: ``{method: {param: value}}``.  ``out``: the
    ``.jsonl`` file each row is appended to as it finishes; rows already there
    are not run again.  Checks the grid now and returns an iterator yielding
    the grid's rows (old and new) in order, lengths first, with a tqdm progress
    bar; a length that ``runtime.memory`` predicts will not fit (in a batch of
    ``batch_size``) is skipped with a warning.

    ``batch_size``: samples of one method, length, depth and token count
    answered in one ``generate`` call (the rows are those of the samples run
    one at a time; a rerun runs only a batch's missing samples).  1 suits a
    CPU; on a GPU larger batches amortise each forward.
    """
    method_params = dict(method_params or {})
    methods = list(methods)
    check_grid(methods, lengths, depths, method_params)
    check_batch_size(batch_size)
    results = ResultsFile(out, row_key)
    todo = _samples_for(tokenizer, samples, lengths, depths)
    name = model_name(model)
    if others := results.others("model", name):
        log.warning("%s holds rows of other models %s: they count as done too", out, others)
    _warn_other_keys(results, methods, todo)
    units = [(method, batch) for length in sorted({s["length"] for s in todo})
             for method in methods
             for batch in _batches([s for s in todo if s["length"] == length], batch_size)]

    @functools.cache
    def too_long(method: str, length: int, rows: int) -> bool:
        return not fits(model, method, length, method_params.get(method, {}), max_new_tokens,
                        batch=rows)

    def run(unit):
        method, batch = unit
        missing = [s for s in batch if row_key(s, method) not in results]
        return _run_batch(model, tokenizer, missing, method, method_params.get(method, {}),
                          max_new_tokens, name)

    return sweep(results, units, keys=lambda u: [row_key(s, u[0]) for s in u[1]], run=run,
                 skip=lambda u: too_long(u[0], u[1][0]["length"], len(u[1])),
                 desc="passkey", unit="batch")


def check_batch_size(batch_size) -> None:
    """ValueError unless ``batch_size`` is an int >= 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: allowed an int >= 1")


def _batches(samples: list[dict], batch_size: int) -> list[list[dict]]:
    """``samples`` in order, cut into runs of one depth and exact token count
    (so a batch needs no padding), each cut into batches of up to ``batch_size``."""
    out, run = [], []
    for s in samples:
        if run and (s["depth"], len(s["input_ids"])) != (run[0]["depth"],
                                                         len(run[0]["input_ids"])):
            out.append(run)
            run = []
        run.append(s)
    out += [run] if run else []
    return [r[i:i + batch_size] for r in out for i in range(0, len(r), batch_size)]


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


def _generate(model, tokenizer, batch, method, params, max_new_tokens):
    """Greedy answers to the samples of ``batch`` (equal token counts) in one
    ``generate`` call under ``method``: (their texts, the resolved method, seconds)."""
    import torch

    ids = torch.tensor([s["input_ids"] for s in batch], device=model_device(model))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    t0 = time.perf_counter()
    with torch.inference_mode(), apply(model, method, **params) as state:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad)
    seconds = time.perf_counter() - t0
    resolved = state.resolved or state.method.resolve(ids.shape[1], state.train_length)
    stop = _stop_ids(model, tokenizer)
    texts = [tokenizer.decode(_until_stop(row[ids.shape[1]:].tolist(), stop),
                              skip_special_tokens=True) for row in out]
    return texts, resolved, seconds


def _stop_ids(model, tokenizer) -> set[int]:
    """The token ids ``generate`` stops a row at (the generation config's
    ``eos_token_id``, one id or several, else the tokenizer's)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = tokenizer.eos_token_id if eos is None else eos
    return set() if eos is None else set(eos if isinstance(eos, (list, tuple)) else [eos])


def _until_stop(tokens: list[int], stop: set[int]) -> list[int]:
    """``tokens`` up to their first stop id, included: what the row would have
    generated alone (in a batch, ``generate`` pads a finished row until the
    others stop)."""
    for k, t in enumerate(tokens):
        if t in stop:
            return tokens[:k + 1]
    return tokens


def _run_batch(model, tokenizer, batch, method, params, max_new_tokens, name) -> list[dict]:
    """Answer the samples of ``batch`` (equal token counts): one row each, its
    ``seconds`` the batch's time shared equally."""
    texts, resolved, seconds = _generate(model, tokenizer, batch, method, params,
                                         max_new_tokens)
    return [_row(s, method, params, text, resolved, seconds / len(batch), name, model)
            for s, text in zip(batch, texts)]


def _row(sample, method, params, text, resolved, seconds, name, model) -> dict:
    """The row of one answered sample."""
    got, span = parse_answer(text), sample.get("needle_span")
    row = dict(method=method, length=int(sample["length"]), depth=float(sample["depth"]),
               seed=int(sample["seed"]), expected=int(sample["passkey"]), answer=got,
               correct=got == int(sample["passkey"]), needle_span=span,
               needle_cuts=None if span is None else list(resolved.span_cuts(*span)),
               filler_offset=sample.get("filler_offset"), text=text,
               seconds=round(seconds, 4), params=resolved.params(), model=name,
               **train_length_fields(model, params.get("train_length")))
    log.debug("%s L=%d depth=%g seed=%d: %r (%s)", method, row["length"], row["depth"],
              row["seed"], text, "ok" if row["correct"] else "wrong")
    return row
