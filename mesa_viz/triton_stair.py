"""The fused attention of ``mesa_viz.fused`` as a Triton kernel (one launch per layer).

Imported only where ``triton`` is (``kernels`` dispatches to it on CUDA;
the tests run it on CPU tensors under ``TRITON_INTERPRET=1``).  Each program
holds ``BLOCK_M`` query rows of one (batch, head) and walks the key blocks up
to its last row: loads the keys, rotates them in registers to their near
(``j``) and far positions (:class:`mesa_viz.fused.Rules`), scores both sets
against the query rotated for each (a tile wholly outside a set's distances
skips that set's rotation and product), picks per score by visibility (and, for
Stair PE, by ``b_j < E - r``), and folds the tile into an online softmax.
Same blocking and indexing as :func:`mesa_viz.fused.twin`.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .fused import Rules

__all__ = ["fused_attention"]


@triton.jit
def _rot(x1, x2, pos, inv):
    ang = pos[:, None] * inv[None, :]
    c, s = tl.cos(ang), tl.sin(ang)
    return x1 * c - x2 * s, x2 * c + x1 * s


@triton.jit
def _dot2(a1, a2, b1, b2, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a1, tl.trans(b1), input_precision="ieee") + \
            tl.dot(a2, tl.trans(b2), input_precision="ieee")
    return tl.dot(a1, tl.trans(b1)) + tl.dot(a2, tl.trans(b2))


@triton.jit
def _floor_div(x, g):
    return tl.where(x >= 0, x // g, -((-x + g - 1) // g))


@triton.jit
def _fused_fwd(Q, K, V, O, LSE, INV,
               sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som,
               H, REP, rows, i0, scale,
               near, far_limit, qa, qb, qo, qg, qmax, ka, kb, ko, kg, s0, sn, se,
               STAIR: tl.constexpr, HALF: tl.constexpr, DV: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    kvh = h // REP
    r_idx = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = r_idx < rows
    i = i0 + r_idx
    c = tl.arange(0, HALF)
    dv = tl.arange(0, DV)
    inv = tl.load(INV + c)
    q_ptr = Q + b * sqb + h * sqh + r_idx[:, None] * sqm
    q1 = tl.load(q_ptr + c[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    q2 = tl.load(q_ptr + HALF + c[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    qn1, qn2 = _rot(q1, q2, i.to(tl.float32), inv)
    if STAIR:
        m = _floor_div(i - s0, se)
        r = (i - s0) - m * se
        qa1, qa2 = _rot(q1, q2, m.to(tl.float32), inv)
        qb1, qb2 = _rot(q1, q2, (m + 1).to(tl.float32), inv)
    else:
        qpos = tl.minimum(qa * _floor_div(i + qo, qg).to(tl.float32) + qb, qmax)
        qa1, qa2 = _rot(q1, q2, qpos, inv)
        qb1, qb2 = qa1, qa2
    acc = tl.zeros([BLOCK_M, DV], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    hi = tl.minimum(i0 + (pid_m + 1) * BLOCK_M, i0 + rows)
    i_lo = i0 + pid_m * BLOCK_M                  # the block's first and last rows
    i_hi = hi - 1
    for start in range(0, hi, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        key_ok = j < hi
        k_ptr = K + b * skb + kvh * skh + j[:, None] * skn
        k1 = tl.load(k_ptr + c[None, :], mask=key_ok[:, None], other=0.0).to(tl.float32)
        k2 = tl.load(k_ptr + HALF + c[None, :], mask=key_ok[:, None], other=0.0).to(tl.float32)
        # a tile scores only the sets it holds: far from the rows (most of a long
        # prompt's tiles) no near rotation and product, inside the window no far ones
        s_near = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        if i_lo - (start + BLOCK_N - 1) < near:
            kn1, kn2 = _rot(k1, k2, j.to(tl.float32), inv)
            s_near = _dot2(qn1, qn2, kn1, kn2, IEEE)
        s_far = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        if (i_hi - start >= near) & (start < far_limit):
            if STAIR:
                a_j = _floor_div(s0 - sn - j, se)
                b_j = (s0 - sn - j) - a_j * se
                kf1, kf2 = _rot(k1, k2, (-(sn + a_j)).to(tl.float32), inv)
                s_far = tl.where(b_j[None, :] < (se - r)[:, None],
                                 _dot2(qa1, qa2, kf1, kf2, IEEE),
                                 _dot2(qb1, qb2, kf1, kf2, IEEE))
            else:
                kpos = ka * _floor_div(j + ko, kg).to(tl.float32) + kb
                kf1, kf2 = _rot(k1, k2, kpos, inv)
                s_far = _dot2(qa1, qa2, kf1, kf2, IEEE)
        t = i[:, None] - j[None, :]
        vis_near = (t >= 0) & (t < near) & key_ok[None, :]
        vis_far = (t >= near) & (j[None, :] < far_limit) & key_ok[None, :]
        s = tl.where(vis_near, s_near, tl.where(vis_far, s_far, -float("inf"))) * scale
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + b * svb + kvh * svh + j[:, None] * svn + dv[None, :],
                    mask=key_ok[:, None], other=0.0).to(tl.float32)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(V.dtype.element_ty), v.to(V.dtype.element_ty))
        m_i = m_new
    out = acc / l_i[:, None]
    o_ptr = O + b * sob + h * soh + r_idx[:, None] * som + dv[None, :]
    tl.store(o_ptr, out.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + pid_bh * rows + r_idx, m_i + tl.log(l_i), mask=row_ok)


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else 3.0e38


def fused_attention(q, k, v, i0: int, inv_freq, scale: float, rules: Rules,
                    block_m: int = 64, block_n: int = 64):
    """``(out [b, h, rows, d_v], lse [b, h, rows])`` in one launch (module
    doc).  ``q [b, h, rows, d]`` at ``i0..``; ``k, v [b, kv_h, i0 + rows, d]``;
    full rotary (``d == 2 * len(inv_freq)``, a power of two)."""
    b, h, rows, d = q.shape
    half = inv_freq.shape[0]
    if d != 2 * half:
        raise ValueError(f"fused attention needs full rotary: head_dim {d} != 2 * {half}")
    out = torch.empty(q.shape[:3] + (v.shape[-1],), dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    s0, sn, se = rules.stair if rules.stair is not None else (0, 0, 1)
    grid = (triton.cdiv(rows, block_m), b * h)
    _fused_fwd[grid](
        q, k, v, out, lse, inv_freq.to(device=q.device, dtype=torch.float32).contiguous(),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        h, h // k.shape[1], rows, i0, scale,
        min(rules.near, 2 ** 31 - 1), min(rules.far_limit, 2 ** 31 - 1), rules.qa, rules.qb,
        rules.qo, rules.qg, _finite(rules.qmax), rules.ka, rules.kb, rules.ko, rules.kg,
        s0, sn, se,
        STAIR=rules.stair is not None, HALF=half, DV=v.shape[-1], BLOCK_M=block_m,
        BLOCK_N=block_n, IEEE=q.dtype == torch.float32)
    return out, lse
