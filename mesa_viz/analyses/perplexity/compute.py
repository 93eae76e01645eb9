"""Perplexity by position: the per-token negative log-likelihood (natural log) of a
long text under a method, averaged per position bucket ``[0, T), [T, 1.5T),
[1.5T, 2T), ...``.  The NLL of token ``t`` (predicted from the tokens before it)
belongs to position ``t``.

One forward per method and text: a bucket holds what the method's prefill
computes at those positions (Mesa predicts a middle-chunk token from the first
chunk and its own chunk, only its last chunk from every key; sink and window
methods from their window), so compare methods inside a bucket.

Memory: the decoder runs once to its final hidden states ``[n, hidden]``; the
LM head then scores them in slices of ``slice_tokens`` positions, so no ``[n,
vocab]`` logits are ever held (49k x 32k x 4 bytes would be 6 GB).  Before its
numbers are trusted, the sliced head is checked on the model itself against
the model's own logits on a short prefix (a model that post-processes its
logits, e.g. soft-capping, is refused).
"""

from __future__ import annotations

import numpy as np

from ...models.parts import model_device
from ...runtime import apply

__all__ = ["token_nll", "bucket_edges", "by_bucket", "check_head", "TEXTS", "SLICE_TOKENS"]


#: The texts :func:`perplexity` runs on when none are named.
TEXTS = ("book", "code")


#: Positions the LM head scores at once (``slice_tokens x vocab`` floats).
SLICE_TOKENS = 512


#: Largest |sliced - model logits| the head check allows (float32 noise).
_HEAD_TOLERANCE = 1e-3


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
