"""The one-launch attention of :class:`~mesa_viz.kernels.rules.Rules` written in
torch, tile by tile (:func:`twin`), and the launch's settings.

The torch kernels score a method's near keys and far keys as separate key sets
merged by log-sum-exp; on a GPU each of those is a small launch.  The fused
kernel (:mod:`.triton`) does the same attention as one launch per layer: every
query block walks every key block once, rotating the keys of the block in
registers to the position its set needs (:mod:`..rules`), scoring, and folding
the scores into one online softmax; for Stair PE two products per tile, one
choice per score.

:func:`twin` has exactly the Triton kernel's blocking and indexing
(``block_m`` query rows x ``block_n`` keys, causal key range per query block,
online softmax); the tests compare it, and the Triton source under
``TRITON_INTERPRET=1``, with the dense complex-RoPE reference.  Shapes: ``q [b,
h, rows, d]``, ``k, v [b, kv_h, keys, d]``, queries at ``i0 ..``, keys at
``0 ..``; full rotary (``d = 2 * len(inv_freq)``).
"""

from __future__ import annotations

import math
import torch

from ..rules import Rules, positions

__all__ = ["twin", "rotate_halves", "decode_rows", "DECODE_ROWS"]

#: Most packed rows (query heads of a KV group times query rows) one decode tile holds.
DECODE_ROWS = 64


def decode_rows(q_heads: int, kv_heads: int, rows: int) -> int:
    """The tile rows of the split-key decode launch (:func:`.triton.fused_decode`)
    for ``rows`` query rows: the KV group's rows packed, rounded up to a power
    of two of at least 16 (``tl.dot``'s least); 0 where they exceed
    :data:`DECODE_ROWS` (the one-launch kernel over query blocks serves)."""
    need = (q_heads // kv_heads) * rows
    block = max(16, 1 << (need - 1).bit_length())
    return block if block <= DECODE_ROWS else 0


#: Keys :func:`rotate_halves` rotates per step (bounds its float32 temporaries).
ROTATE_STEP = 1 << 16


def rotate_halves(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """``x [..., L, d]`` rotated to ``pos [L]`` (half-split RoPE, full rotary),
    as the kernels do in registers: ``(x1 cos - x2 sin, x2 cos + x1 sin)`` in
    float32, rounded once to ``x``'s dtype; a new contiguous tensor, made
    ``ROTATE_STEP`` positions at a time."""
    half = inv_freq.shape[0]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    inv = inv_freq.to(device=x.device, dtype=torch.float32)
    for a in range(0, x.shape[-2], ROTATE_STEP):
        b = min(x.shape[-2], a + ROTATE_STEP)
        ang = pos[a:b, None].to(torch.float32) * inv[None, :]          # [L, d/2]
        cos, sin = ang.cos(), ang.sin()
        x1, x2 = x[..., a:b, :half].float(), x[..., a:b, half:].float()
        out[..., a:b, :half] = x1 * cos - x2 * sin
        out[..., a:b, half:] = x2 * cos + x1 * sin
    return out


def _tile_scores(rules: Rules, q, kt, i, j, inv_freq):
    """Scores ``[b, h, M, N]`` of one tile (visibility not applied)."""
    qn_pos, qa_pos, qb_pos, kf_pos, use_a = positions(rules, i, j)
    s_near = rotate_halves(q, qn_pos, inv_freq) @ rotate_halves(kt, j.float(), inv_freq) \
        .transpose(-1, -2)
    kf = rotate_halves(kt, kf_pos, inv_freq).transpose(-1, -2)
    s_far = rotate_halves(q, qa_pos, inv_freq) @ kf
    if use_a is not None:
        s_far = torch.where(use_a, s_far, rotate_halves(q, qb_pos, inv_freq) @ kf)
    return s_near, s_far


def twin(q, k, v, i0: int, inv_freq, scale: float, rules: Rules, block_m: int = 64,
         block_n: int = 64):
    """The fused kernel in torch, tile by tile (module doc): ``(out [b, h,
    rows, d_v], lse [b, h, rows])``."""
    b, h, rows, _ = q.shape
    rep = h // k.shape[1]
    kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    out = torch.empty(q.shape[:3] + (v.shape[-1],), dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    for a in range(0, rows, block_m):
        e = min(rows, a + block_m)
        i = torch.arange(i0 + a, i0 + e, device=q.device)
        acc = torch.zeros(b, h, e - a, v.shape[-1], dtype=torch.float32, device=q.device)
        m_i = torch.full((b, h, e - a), -math.inf, device=q.device)
        l_i = torch.zeros(b, h, e - a, device=q.device)
        for c in range(0, i0 + e, block_n):         # causal: keys up to the block's last row
            j = torch.arange(c, min(i0 + e, c + block_n), device=q.device)
            s_near, s_far = _tile_scores(rules, q[:, :, a:e], kk[:, :, j], i, j, inv_freq)
            t = i[:, None] - j[None, :]
            near = (t >= 0) & (t < rules.near)
            far = (t >= rules.near) & (j[None, :] < rules.far_limit)
            s = torch.where(near, s_near, torch.where(far, s_far, -math.inf)).float() * scale
            m_new = torch.maximum(m_i, s.amax(-1))
            m_safe = torch.where(torch.isfinite(m_new), m_new, 0.0)
            p = torch.exp(s - m_safe[..., None])
            alpha = torch.exp(m_i - m_safe)
            l_i = l_i * alpha + p.sum(-1)
            acc = acc * alpha[..., None] + p @ vv[:, :, j].float()
            m_i = m_new
        out[:, :, a:e] = (acc / l_i[..., None]).to(q.dtype)
        lse[:, :, a:e] = m_i + torch.log(l_i)
    return out, lse
