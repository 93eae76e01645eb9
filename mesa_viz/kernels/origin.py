"""Origin's kernel (linear positions, ``methods/base.py``), which every method
whose layout is Origin's at a length hands to, and the one-query helpers a
decode step shares."""

from __future__ import annotations

import torch

from ..methods import Origin
from . import sets
from .decode_memo import memo_keys, same
from .flash_decoding import flash_decode, uses_flash_decoding
from .registry import kernel
from .rope import arange, rotate

__all__ = ["origin", "row_scores", "softmax_pv"]


@kernel(Origin, rules=None, linear=lambda method, kv_len: True)
def origin(method, q, k, v, i0, rope, scale, backend):
    """Linear positions: query ``i`` and key ``j`` rotated to ``i`` and ``j``
    (a decode step on the CPU: :func:`.flash_decoding.flash_decode`)."""
    Lq, Lk, dev = q.shape[2], k.shape[2], q.device
    qr = rotate(q, rope, arange(i0, i0 + Lq, dev), ("lin", i0, i0 + Lq))
    if Lq == 1:                                           # decode: keys rotated once
        kr = memo_keys(rope, k, 0, Lk, "lin", same)
        if uses_flash_decoding(q, v, backend):
            return flash_decode([(qr, kr, v, None)], scale)
        return softmax_pv([row_scores(qr, kr)], v, scale, q, backend)
    kr = rotate(k, rope, arange(0, Lk, dev), ("lin", 0, Lk))
    if backend in sets.FUSED_BACKENDS and i0 == 0 and Lq == Lk:  # flash/efficient causal kernel
        return sets.causal_sdpa(qr, kr, v, scale)
    out = []
    B = sets.block_size(q, Lk, backend)
    for a in range(0, Lq, B):
        b = min(Lq, a + B)
        kmax = i0 + b
        mask = arange(0, kmax, dev)[None, :] <= arange(i0 + a, i0 + b, dev)[:, None]
        out.append(sets.sdpa(qr[:, :, a:b], kr[:, :, :kmax], v[:, :, :kmax], mask, scale,
                             backend))
    return torch.cat(out, dim=2)


def row_scores(q_rot, k_rot):
    """Scores ``[b, kv_h, rep, L]`` of one rotated query ``[b, h, 1, d]``
    against rotated keys ``[b, kv_h, L, d]`` (GQA folded: no key copies)."""
    b, h, _, d = q_rot.shape
    return torch.matmul(q_rot.reshape(b, k_rot.shape[1], h // k_rot.shape[1], d),
                        k_rot.transpose(-1, -2))


def softmax_pv(scores, v, scale, q, backend):
    """One query's output ``[b, h, 1, d_v]`` from its scores ``[b, kv_h, rep,
    L_s]`` over consecutive key ranges covering ``v [b, kv_h, sum L_s, d_v]``."""
    logits = torch.cat(scores, dim=-1).float() * scale if len(scores) > 1 else \
        scores[0].float() * scale
    p = torch.softmax(sets.capped(logits, backend), dim=-1).to(v.dtype)
    out = sets.pv(p, v, split=not sets.uses_cpu_paths(q, backend))
    return out.reshape(q.shape[0], q.shape[1], 1, -1)
