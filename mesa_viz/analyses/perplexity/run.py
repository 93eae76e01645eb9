"""The perplexity sweep: every method x length x text scored once
(:func:`.compute.token_nll`), one row per position bucket, appended as each text
finishes (a rerun skips what is there)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

from ...data import LONG_TEXTS, long_text, text_ids
from ...models.parts import model_device, model_name, train_length_fields
from ...runs.sweep import ResultsFile, sweep
from ...runs.validate import check_lengths, check_methods
from ...runtime import fits
from .compute import SLICE_TOKENS, TEXTS, bucket_edges, by_bucket, check_head, token_nll
from .rows import row_key

__all__ = ["evaluate"]

log = logging.getLogger(__name__)


def evaluate(model, tokenizer, *, methods, lengths, texts=TEXTS, out: "str | Path",
             method_params: dict | None = None, buckets=None,
             train_length: int | None = None, slice_tokens: int = SLICE_TOKENS,
             cache: "str | Path | None" = None) -> Iterator[dict]:
    """NLL by position bucket for every method x length x text, streamed.

    ``texts``: names of :data:`mesa_viz.data.LONG_TEXTS` (fetched once into
    ``cache``) or ``{name: text}``.  Each run scores the first ``length``
    tokens of the text.  ``buckets``: token positions of the bucket edges
    (default ``0, T, 1.5T, 2T, ...``).  ``method_params``: ``{method: {param:
    value}}``.  ``out``: the ``.jsonl`` file each row is appended to; rows
    already there are not run again.  Checks everything now (unknown method,
    a length longer than a text: ValueError) and returns an iterator of rows
    ``method, length, text, bucket_start, bucket_end, tokens, nll, ppl,
    train_length, train_length_from, params, model, source, seconds``, with a tqdm progress bar.
    """
    method_params = dict(method_params or {})
    methods, lengths = list(methods), [int(n) for n in lengths]
    check_methods(methods, method_params)
    check_lengths(lengths)
    fields = train_length_fields(model, train_length)
    T = fields["train_length"]
    edges = {n: bucket_edges(n, T, buckets) for n in lengths}
    named = _texts(texts, cache)
    ids = {(name, n): text_ids(tokenizer, text, n, name=name)
           for name, (text, _) in named.items() for n in lengths}
    units = [(m, n, t) for n in sorted(set(lengths)) for m in methods for t in named]
    check_head(model, _prefix(model, next(iter(ids.values()))), slice_tokens)
    results, name = ResultsFile(out, row_key), model_name(model)

    def keys(unit):
        method, n, text = unit
        return [(method, n, text, a, b) for a, b in zip(edges[n], edges[n][1:])]

    def run(unit):
        method, n, text = unit
        return _run_unit(model, method, n, text, ids[text, n], edges[n],
                         method_params.get(method, {}), fields, slice_tokens, name,
                         named[text][1])

    return sweep(results, units, keys, run, desc="perplexity", unit="text",
                 skip=lambda u: not fits(model, u[0], u[1], method_params.get(u[0], {})))


def _texts(texts, cache) -> dict[str, tuple[str, str]]:
    """``{name: (text, source)}`` from names of :data:`LONG_TEXTS` or a
    ``{name: text}`` mapping."""
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, dict):
        if not texts or not all(isinstance(t, str) and t for t in texts.values()):
            raise ValueError("texts: allowed a non-empty {name: non-empty text} mapping "
                             f"or names from {sorted(LONG_TEXTS)}")
        return {str(k): (v, "given") for k, v in texts.items()}
    names = list(texts or ())
    unknown = [t for t in names if t not in LONG_TEXTS]
    if not names or unknown:
        raise ValueError(f"texts {unknown or names}: allowed names from {sorted(LONG_TEXTS)} "
                         "or a {name: text} mapping")
    return {t: (long_text(t, cache=cache), LONG_TEXTS[t].source) for t in names}


def _prefix(model, ids: list[int]):
    import torch
    return torch.tensor([ids[:16]], device=model_device(model))


def _run_unit(model, method, n, text, ids, edges, params, fields, slice_tokens, name,
              source) -> list[dict]:
    t0, T = time.perf_counter(), fields["train_length"]
    nll, resolved = token_nll(model, ids, method, train_length=T, slice_tokens=slice_tokens,
                              **params)
    seconds = round(time.perf_counter() - t0, 3)
    log.info("%s, %d tokens of %s: mean NLL %.4f (%.1f s)", method, n, text,
             float(nll.mean()), seconds)
    return [dict(method=method, length=n, text=text, **b, ppl=math.exp(b["nll"]),
                 **fields, params=resolved, model=name, source=source, seconds=seconds)
            for b in by_bucket(nll, edges)]
