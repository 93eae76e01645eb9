"""Kernels of the grouping methods (``methods/grouped.py``): Self-Extend (its
near/far :class:`~.rules.Rules` with floor-divided positions) and Dual Chunk
Attention (two key sets per block of rows sharing their first true-position key)."""

from __future__ import annotations

import numpy as np
import torch

from ..methods.grouped import DualChunk, SelfExtend
from . import sets
from .near_far import has_memo, rules_kernel, step_with_memo
from .registry import kernel
from .rope import arange, rotate, scale_rows
from .rules import Rules

__all__ = ["self_extend_rules", "dual_chunk", "dual_chunk_is_origin"]


def self_extend_rules(method: SelfExtend) -> Rules:
    """Neighbour keys (``t < W``) at true positions; grouped keys with the query
    at ``i // G + W - W // G`` and the key at ``j // G`` (Self-Extend Eq. 3,
    ``//`` as the authors' fixed code, or ``W - W / G`` with ``shift="float"``)."""
    G, W = method.group_size, method.window
    return Rules(near=W, qa=1.0, qg=G, qb=float(method.group_shift()), ka=1.0, kg=G)


kernel(SelfExtend, rules=lambda m, i0: self_extend_rules(m),
       linear=lambda m, kv_len: m.group_size == 1)(rules_kernel)


def dual_chunk_is_origin(method: DualChunk, kv_len: int) -> bool:
    """Up to ``chunk_size + local_window`` keys every key is at its true distance."""
    return kv_len <= method.chunk_size + method.local_window


@kernel(DualChunk, rules=None, linear=dual_chunk_is_origin)
def dual_chunk(method, q, k, v, i0, rope, scale, backend):
    """Dual Chunk Attention in two key sets.  Chunk size ``s``, local window
    ``w``; a query ``i`` in chunk ``c = i // s`` sees keys from ``floor(i) =
    (c - 1) s`` (if ``i mod s < w``: intra- and successive-chunk) or ``c s``
    (intra-chunk) at true positions, and every key before ``floor(i)`` with
    the query at ``s + w - 1`` and the key at ``j mod s`` (the paper's
    inter-chunk ``P_q = c - 1`` and ``P_k = j mod s``).  Query rows go in
    blocks that share ``floor(i)``; queries and keys times the method's
    ``query_scale`` and ``key_scale`` (``mscale``) first."""
    Lk = k.shape[2]
    s, w, Lq, dev = method.chunk_size, method.local_window, q.shape[2], q.device
    q = scale_rows(q, method.query_scale(np.arange(i0, i0 + Lq)))        # mscale
    if Lq == 1 and not method.mscale and has_memo(rope):       # a decode step: keys kept rotated
        floor = next(_chunk_blocks(i0, 1, s, w, 1))[2]
        return step_with_memo(q, k, v, i0, rope, scale, backend, ("dual-chunk", s, w),
                              lambda i: torch.full(i.shape, s + w - 1, device=i.device),
                              lambda j: torch.remainder(j, s), floor, floor)
    k = scale_rows(k, method.key_scale(np.arange(Lk)))
    j = arange(0, Lk, dev)
    k_lin = rotate(k, rope, j, ("lin", 0, Lk))
    k_far = rotate(k, rope, torch.remainder(j, s), ("chunk-k", Lk))
    q_far = rotate(q, rope, torch.full((Lq,), s + w - 1, device=dev), ("chunk-q", i0, i0 + Lq))
    out = []
    for a, b, floor in _chunk_blocks(i0, Lq, s, w, sets.block_size(q, Lk, backend)):
        i = arange(i0 + a, i0 + b, dev)
        q_lin = rotate(q[:, :, a:b], rope, i, ("lin", i0 + a, i0 + b))
        mask = j[None, floor:i0 + b] <= i[:, None]
        key_sets = [(q_lin, k_lin[:, :, floor:i0 + b], v[:, :, floor:i0 + b], mask),
                    (q_far[:, :, a:b], k_far[:, :, :floor], v[:, :, :floor], None)]
        out.append(sets.attend_sets(key_sets, scale, backend))
    return torch.cat(out, dim=2)


def _chunk_blocks(i0: int, q_len: int, s: int, w: int, block: int):
    """``(a, b, floor)``: query rows ``i0 + a .. i0 + b - 1`` (at most ``block``)
    sharing the first key they see at a true position, ``floor``."""
    a = 0
    while a < q_len:
        i = i0 + a
        c, r = divmod(i, s)
        edge = c * s + w if r < w else (c + 1) * s           # where floor(i) changes
        b = min(q_len, a + block, edge - i0)
        yield a, b, max(0, (c - 1) * s if r < w else c * s)
        a = b
