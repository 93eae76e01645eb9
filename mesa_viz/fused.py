"""One fused attention launch for positions that are not ``q - k``: rules and a torch twin.

The kernels of ``mesa_viz.kernels`` score a method's *near* keys (``0 <= i -
j < near``, linear positions) and its *far* keys (the rest) as separate key
sets merged by log-sum-exp, and Mesa's last chunk one residue class at a time.
On a GPU each of those is a small launch.  This module describes the same
attention as one launch per layer: every query block walks every key block
once, rotating the keys of the block in registers to the position its set
needs, scoring, and folding the scores into one online softmax.

:class:`Rules` holds the positions as plain numbers, so the kernel family
serves every method whose position is a function of ``i`` and of ``j`` per
set (the methods of ``mesa_viz.methods`` give theirs in ``kernels``):

* near keys: ``0 <= i - j < near``, query at ``i``, key at ``j``;
* far keys: ``i - j >= near`` and ``j < far_limit`` (sinks), query at
  ``min(qa * floor((i + qo) / qg) + qb, qmax)``, key at ``ka * floor((j + ko)
  / kg) + kb`` (ReRoPE, Leaky-ReRoPE, StreamingLLM, LM-Infinite,
  Self-Extend's grouping); or
* ``stair = (s, N, E)``: per-query Stair PE for queries ``i >= s`` (Mesa's last
  chunk; ``s = 0`` for the ``stair`` method).  With ``s - N - j = E a_j + b_j``
  and query class ``r = (i - s) mod E``, step ``m = floor((i - s) / E)``
  (``kernels.StairGeometry``), the key goes to ``-(N + a_j)`` and the query to
  ``m`` where ``b_j < E - r``, to ``m + 1`` elsewhere: two products per tile,
  one choice per score.

:func:`twin` is the kernel written in torch with exactly the kernel's blocking
and indexing (``block_m`` query rows x ``block_n`` keys, causal key range per
query block, online softmax); the tests compare it, and the Triton source
under ``TRITON_INTERPRET=1``, with the dense complex-RoPE reference.
``mesa_viz.triton_stair`` holds the Triton kernel (imported only where
``triton`` is).  Shapes: ``q [b, h, rows, d]``, ``k, v [b, kv_h, keys, d]``,
queries at ``i0 ..``, keys at ``0 ..``; full rotary (``d = 2 * len(inv_freq)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Rules", "twin", "rotate_halves", "positions", "decode_rows", "DECODE_ROWS"]

#: ``near`` of a method without far keys (origin): every causal key is near.
ALL_NEAR = 2 ** 62


@dataclass(frozen=True)
class Rules:
    """Position rules of one launch (module doc).  ``stair``: ``(s, N, E)``
    or None; the affine-floor far rule is used when ``stair`` is None."""

    near: int
    far_limit: int = ALL_NEAR
    qa: float = 0.0
    qb: float = 0.0
    qo: int = 0
    qg: int = 1
    qmax: float = math.inf
    ka: float = 0.0
    kb: float = 0.0
    ko: int = 0
    kg: int = 1
    stair: tuple[int, int, int] | None = None


#: Most packed rows (query heads of a KV group times query rows) one decode tile holds.
DECODE_ROWS = 64


def decode_rows(q_heads: int, kv_heads: int, rows: int) -> int:
    """The tile rows of the split-key decode launch (``triton_stair.fused_decode``)
    for ``rows`` query rows: the KV group's rows packed, rounded up to a power
    of two of at least 16 (``tl.dot``'s least); 0 where they exceed
    :data:`DECODE_ROWS` (the one-launch kernel over query blocks serves)."""
    need = (q_heads // kv_heads) * rows
    block = max(16, 1 << (need - 1).bit_length())
    return block if block <= DECODE_ROWS else 0


def _floor_div(x: torch.Tensor, g: int) -> torch.Tensor:
    return torch.div(x, g, rounding_mode="floor") if g != 1 else x


def positions(rules: Rules, i: torch.Tensor, j: torch.Tensor):
    """``(q_near, q_far_a, q_far_b, k_far, use_a)``: positions of queries
    ``i [M]`` and keys ``j [N]`` (float32), ``use_a [M, N]`` where the far
    score takes the query at ``q_far_a`` (else ``q_far_b``)."""
    if rules.stair is not None:
        s, N, E = rules.stair
        m = torch.div(i - s, E, rounding_mode="floor")
        r = torch.remainder(i - s, E)
        a = torch.div(s - N - j, E, rounding_mode="floor")
        b = torch.remainder(s - N - j, E)
        use_a = b[None, :] < (E - r)[:, None]
        return i.float(), m.float(), (m + 1).float(), (-(N + a)).float(), use_a
    qf = rules.qa * _floor_div(i + rules.qo, rules.qg).double() + rules.qb
    qf = torch.clamp(qf, max=rules.qmax).float()
    kf = (rules.ka * _floor_div(j + rules.ko, rules.kg).double() + rules.kb).float()
    return i.float(), qf, qf, kf, None


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
        for c in range(0, i0 + e, block_n):                       # causal: keys up to the block's last row
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
