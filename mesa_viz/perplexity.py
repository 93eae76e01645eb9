"""Perplexity by position: how well each method predicts long real text
before and past the training length ``T``.

The per-token negative log-likelihood (natural log) of the first ``length``
tokens of a long text (:data:`mesa_viz.data.LONG_TEXTS`: a book and a source
file from PyPI, or any text given) under each method, averaged per position
bucket ``[0, T), [T, 1.5T), [1.5T, 2T), ...``.  The NLL of token ``t``
(predicted from the tokens before it) belongs to position ``t``.

One forward per method and text: a bucket holds what the method's prefill
computes at those positions (Mesa predicts a middle-chunk token from the
first chunk and its own chunk, only its last chunk from every key; sink and
window methods from their window), so compare methods inside a bucket.

Memory: the decoder runs once to its final hidden states ``[n, hidden]``;
the LM head then scores them in slices of ``slice_tokens`` positions, so no
``[n, vocab]`` logits are ever held (49k x 32k x 4 bytes would be 6 GB).
Before its numbers are trusted, the sliced head is checked on the model
itself against the model's own logits on a short prefix (a model that
post-processes its logits, e.g. soft-capping, is refused).

:func:`perplexity` (also ``mesa_viz.perplexity(...)``) appends one JSON line
per method, length, text and bucket to ``out`` as each text finishes and
yields it; a rerun skips what is there.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .checks import check_lengths, check_methods, fits
from .data import LONG_TEXTS, long_text, text_ids
from .results import append_jsonl, read_jsonl

__all__ = ["perplexity", "token_nll", "bucket_edges", "by_bucket", "summary", "TEXTS",
           "SLICE_TOKENS"]

log = logging.getLogger(__name__)

#: The texts :func:`perplexity` runs on when none are named.
TEXTS = ("book", "code")
#: Positions the LM head scores at once (``slice_tokens x vocab`` floats).
SLICE_TOKENS = 512
#: Largest |sliced - model logits| the head check allows (float32 noise).
_HEAD_TOLERANCE = 1e-3


# -- buckets -------------------------------------------------------------------------

def bucket_edges(length: int, train_length: int, buckets=None) -> list[int]:
    """Bucket edges over positions ``0..length``: ``buckets`` (token
    positions, increasing, from 0) cut at ``length``, or by default ``0, T,
    1.5T, 2T, ...`` and ``length``."""
    if buckets is None:
        step = max(1, train_length // 2)
        inner = [0, *range(train_length, length, step)]
    else:
        inner = [int(b) for b in buckets]
        if inner[:1] != [0] or any(b <= a for a, b in zip(inner, inner[1:])):
            raise ValueError(f"buckets={list(buckets)}: allowed increasing token positions "
                             "starting at 0, e.g. 0,8192,12288,16384")
    return [b for b in inner if b < length] + [int(length)]


def by_bucket(nll: np.ndarray, edges: list[int]) -> list[dict]:
    """Mean NLL per bucket ``[start, end)`` of positions: ``nll [n - 1]`` is
    the NLL of tokens ``1..n-1``.  Rows ``bucket_start, bucket_end, tokens,
    nll`` (buckets without tokens are left out)."""
    rows = []
    for start, end in zip(edges, edges[1:]):
        part = nll[max(start, 1) - 1:end - 1]
        if len(part):
            rows.append(dict(bucket_start=int(start), bucket_end=int(end), tokens=len(part),
                             nll=float(np.mean(part, dtype=np.float64))))
    return rows


# -- the model -----------------------------------------------------------------------

def _decoder_and_head(model):
    """The model without its LM head, and the head."""
    head = model.get_output_embeddings()
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    if head is None or decoder is None or decoder is model:
        raise ValueError(f"{type(model).__name__} has no separate decoder and LM head: "
                         "allowed causal LMs whose head is get_output_embeddings()")
    return decoder, head


def _sliced_logits(model, ids, slice_tokens: int):
    """``[n, hidden]`` final hidden states of ``ids [1, n]`` and a function
    giving the float32 logits ``[e - s, vocab]`` of positions ``s:e``."""
    import torch
    decoder, head = _decoder_and_head(model)
    out = decoder(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    hidden = out.last_hidden_state[0]
    return hidden, lambda s, e: head(hidden[s:e]).float()


def check_head(model, ids, slice_tokens: int = SLICE_TOKENS) -> float:
    """Max |head(decoder(ids)) - model(ids).logits| on ``ids [1, n]`` (a short
    prefix); ValueError when the difference shows the model post-processes its
    logits (then sliced scoring would measure something else)."""
    import torch
    with torch.inference_mode():
        full = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
        _, logits = _sliced_logits(model, ids, slice_tokens)
        diff = float((logits(0, ids.shape[1]) - full).abs().max())
    if not diff <= _HEAD_TOLERANCE * max(1.0, float(full.abs().max())):
        raise ValueError(f"{type(model).__name__}: the LM head applied to the decoder's "
                         f"hidden states differs from the model's logits by {diff:.3g} "
                         "(logit soft-capping or scaling?): perplexity by slices would be "
                         "wrong, refused; allowed models whose logits are head(hidden)")
    return diff


def token_nll(model, input_ids, method="origin", *, train_length: int | None = None,
              slice_tokens: int = SLICE_TOKENS, **params) -> tuple[np.ndarray, dict]:
    """``(nll [n - 1], params)``: float32 NLL (nats) of tokens ``1..n-1`` of
    ``input_ids`` (``[n]`` or ``[1, n]``) under ``method``, scored through the
    head in slices of ``slice_tokens`` positions; ``params`` are the resolved
    method parameters."""
    import torch
    import torch.nn.functional as F

    from .application import apply
    from .models import model_device
    if slice_tokens < 1:
        raise ValueError(f"slice_tokens={slice_tokens}: allowed >= 1")
    ids = torch.as_tensor(input_ids, device=model_device(model)).reshape(1, -1)
    if ids.shape[1] < 2:
        raise ValueError(f"input of {ids.shape[1]} tokens: allowed >= 2 (token 0 has no NLL)")
    with torch.inference_mode():
        with apply(model, method, train_length=train_length, **params) as state:
            _, logits = _sliced_logits(model, ids, slice_tokens)
        n = ids.shape[1] - 1
        nll = torch.empty(n, dtype=torch.float32)
        for s in range(0, n, slice_tokens):
            e = min(s + slice_tokens, n)
            nll[s:e] = F.cross_entropy(logits(s, e), ids[0, s + 1:e + 1], reduction="none").cpu()
    resolved = state.resolved or state.method.resolve(n + 1, state.train_length)
    return nll.numpy(), resolved.params()


# -- the run -------------------------------------------------------------------------

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


def _train_length(model, train_length) -> int:
    from .application import train_length_of
    return int(train_length) if train_length is not None else train_length_of(model)


def _model_name(model) -> str:
    return str(getattr(model.config, "_name_or_path", "") or type(model).__name__)


def perplexity(model, tokenizer, *, methods, lengths, texts=TEXTS, out: "str | Path",
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
    train_length, params, model, source, seconds``, with a tqdm progress bar.
    """
    method_params = dict(method_params or {})
    methods, lengths = list(methods), [int(n) for n in lengths]
    check_methods(methods, method_params)
    check_lengths(lengths)
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"out={str(out)!r} is a folder: allowed a .jsonl file path")
    T = _train_length(model, train_length)
    edges = {n: bucket_edges(n, T, buckets) for n in lengths}
    named = _texts(texts, cache)
    ids = {(name, n): text_ids(tokenizer, text, n, name=name)
           for name, (text, _) in named.items() for n in lengths}
    units = [(m, n, t) for n in sorted(set(lengths)) for m in methods for t in named]
    check_head(model, _prefix(model, next(iter(ids.values()))), slice_tokens)
    return _stream(model, units, ids, edges, named, out, method_params, T, slice_tokens)


def _prefix(model, ids: list[int]):
    import torch

    from .models import model_device
    return torch.tensor([ids[:16]], device=model_device(model))


def _row_key(row: dict) -> tuple:
    return (row["method"], int(row["length"]), row["text"], int(row["bucket_start"]),
            int(row["bucket_end"]))


def _stream(model, units, ids, edges, named, out, method_params, T, slice_tokens):
    from tqdm.auto import tqdm

    done = {_row_key(r): r for r in read_jsonl(out)}
    name = _model_name(model)
    with tqdm(total=len(units), desc="perplexity", unit="text") as bar:
        for method, n, text in units:
            keys = [(method, n, text, a, b) for a, b in zip(edges[n], edges[n][1:])]
            params = method_params.get(method, {})
            if any(k not in done for k in keys) and fits(model, method, n, params):
                bar.set_postfix_str(f"{method} {n} {text}")
                for row in _run_unit(model, method, n, text, ids[text, n], edges[n], params,
                                     T, slice_tokens, name, named[text][1]):
                    if _row_key(row) not in done:
                        append_jsonl(out, row)
                        done[_row_key(row)] = row
            bar.update(1)
            yield from (done[k] for k in keys if k in done)


def _run_unit(model, method, n, text, ids, edges, params, T, slice_tokens, name,
              source) -> list[dict]:
    t0 = time.perf_counter()
    nll, resolved = token_nll(model, ids, method, train_length=T, slice_tokens=slice_tokens,
                              **params)
    seconds = round(time.perf_counter() - t0, 3)
    log.info("%s, %d tokens of %s: mean NLL %.4f (%.1f s)", method, n, text,
             float(nll.mean()), seconds)
    return [dict(method=method, length=n, text=text, **b, ppl=math.exp(b["nll"]),
                 train_length=T, params=resolved, model=name, source=source, seconds=seconds)
            for b in by_bucket(nll, edges)]


def summary(rows, length: int | None = None) -> list[dict]:
    """One row per method x text at ``length`` (default the longest in
    ``rows``): ``method, text`` and the mean NLL of each bucket as a column
    ``"[start, end)"``, for :func:`mesa_viz.results.format_table`."""
    rows = list(rows)
    if not rows:
        return []
    length = max(r["length"] for r in rows) if length is None else int(length)
    table: dict = {}
    for r in (r for r in rows if r["length"] == length):
        cell = table.setdefault((r["method"], r["text"]), dict(method=r["method"], text=r["text"]))
        cell[f"[{r['bucket_start']}, {r['bucket_end']})"] = r["nll"]
    return list(table.values())


class _CallableModule(types.ModuleType):
    """``mesa_viz.perplexity(...)`` calls :func:`perplexity` whether
    ``mesa_viz.perplexity`` is this module (once imported) or the function."""

    def __call__(self, *args, **kwargs):
        return perplexity(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
