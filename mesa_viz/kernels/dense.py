"""Exact attention rows straight from a method's layout (``relative(i, j)``), for
probes: a few query rows, no blocking, float32."""

from __future__ import annotations

import numpy as np
import torch

from ..methods import Method
from .rope import Rope, rotate

__all__ = ["dense_logits", "dense_rows"]


def dense_logits(method: Method, q_rows, k, rows, rope: Rope, scale: float):
    """Exact pre-softmax attention logits for a few query ``rows`` straight
    from the layout: ``logits[r, j] = scale * (R(rel[r, j]) q_r) . k_j``, ``-inf``
    where the layout hides key ``j`` from row ``r``.

    ``q_rows [b, h, R, d]`` un-rotated queries of absolute positions ``rows``
    (the method's ``query_scale`` applied here); ``k [b, kv_h, kv_len, d]``
    (its ``key_scale`` applied here).
    Returns ``[b, h, R, kv_len]`` (float32).
    """
    Lk, dev = k.shape[2], k.device
    rel, vis = method.relative(np.asarray(rows)[:, None], np.arange(Lk)[None, :])
    rel = torch.as_tensor(np.where(vis, rel, 0), dtype=torch.float32, device=dev)
    vis = torch.as_tensor(vis, device=dev)
    rep = q_rows.shape[1] // k.shape[1]
    kk = k.repeat_interleave(rep, 1).to(torch.float32) * torch.as_tensor(
        method.key_scale(np.arange(Lk)), dtype=torch.float32, device=dev)[:, None]
    sq = Rope(rope.inv_freq, rope.scaling ** 2)
    factor = torch.as_tensor(method.query_scale(rows), dtype=torch.float32, device=dev)
    logits = []
    for r in range(len(rows)):
        qr = q_rows[:, :, r:r + 1].to(torch.float32) * factor[r]   # [b,h,1,d]
        qrot = rotate(qr.expand(-1, -1, Lk, -1), sq, rel[r])      # [b,h,Lk,d]
        sc = (qrot * kk).sum(-1) * scale
        logits.append(sc.masked_fill(~vis[r], float("-inf")))
    return torch.stack(logits, dim=2)


def dense_rows(method: Method, q_rows, k, rows, rope: Rope, scale: float):
    """Exact attention probabilities for a few query ``rows``: the softmax of
    :func:`dense_logits` (same arguments), ``[b, h, R, kv_len]`` (float32)."""
    return torch.softmax(dense_logits(method, q_rows, k, rows, rope, scale), dim=-1)
