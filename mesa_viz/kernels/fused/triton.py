"""The fused attention of :mod:`.twin` as Triton kernels (one launch per layer).

Imported only where ``triton`` is (``kernels.dispatch`` sends CUDA calls here;
the tests run it on CPU tensors under ``TRITON_INTERPRET=1``).

:func:`fused_attention` (a prefill's rows): each program holds ``BLOCK_M``
query rows of one (batch, head) and walks the key blocks up to its last row:
loads the keys, rotates them in registers to their near (``j``) and far
positions (:class:`mesa_viz.kernels.rules.Rules`), scores both sets against the query
rotated for each (a tile wholly outside a set's distances skips that set's
rotation and product), picks per score by visibility (and, for Stair PE, by
``b_j < E - r``), and folds the tile into an online softmax.  Same blocking
and indexing as :func:`.twin.twin`.

:func:`fused_decode` (a generated token, or a few rows): the same tiles split
over the keys instead (flash-decoding), since one program per head walking
every key would leave most of the GPU idle and read each key once per query
head.  Each program holds every row of one KV head's query group (packed
into the tile's rows) and one slice of the keys, and writes unnormalised
partial sums; a second launch folds the slices.  No rotated copy of the keys
is kept between steps: each step rotates the keys it reads, in registers.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..rules import Rules, positions
from .twin import DECODE_ROWS, decode_rows, rotate_halves

__all__ = ["fused_attention", "fused_decode", "decode_splits"]


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
def _stair_key(j, s0, sn, se):
    """Keys ``j``'s ``(a_j, b_j)``: ``s - N - j = E a_j + b_j``, ``0 <= b_j < E``
    (``rules.positions``); the far position is ``-(N + a_j)``."""
    a_j = _floor_div(s0 - sn - j, se)
    return a_j, (s0 - sn - j) - a_j * se


@triton.jit
def _query_rotations(q1, q2, i, inv, qa, qb, qo, qg, qmax, s0, se, STAIR: tl.constexpr):
    """Queries (halves ``q1, q2``, rows at positions ``i``) rotated for the
    near set and for the far set's two choices, and the rows' stair class ``r``."""
    qn1, qn2 = _rot(q1, q2, i.to(tl.float32), inv)
    if STAIR:
        m = _floor_div(i - s0, se)
        r = (i - s0) - m * se
        qa1, qa2 = _rot(q1, q2, m.to(tl.float32), inv)
        qb1, qb2 = _rot(q1, q2, (m + 1).to(tl.float32), inv)
    else:
        r = i * 0
        qpos = tl.minimum(qa * _floor_div(i + qo, qg).to(tl.float32) + qb, qmax)
        qa1, qa2 = _rot(q1, q2, qpos, inv)
        qb1, qb2 = qa1, qa2
    return qn1, qn2, qa1, qa2, qb1, qb2, r


@triton.jit
def _tile(K, V, skn, svn, start, hi, acc, m_i, l_i, i, i_lo, i_hi, r, inv,
          qn1, qn2, qa1, qa2, qb1, qb2, scale, near, far_limit, ka, kb, ko, kg, s0, sn, se,
          STAIR: tl.constexpr, HALF: tl.constexpr, DV: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    """Keys ``start .. start + BLOCK_N - 1`` (those ``< hi``) of one KV head
    (``K``, ``V`` point at its key 0) folded into the online softmax ``(acc,
    m_i, l_i)`` of rows at positions ``i`` (``i_lo .. i_hi``, classes ``r``)."""
    c = tl.arange(0, HALF)
    j = start + tl.arange(0, BLOCK_N)
    key_ok = j < hi
    k_ptr = K + j[:, None] * skn
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
            a_j, b_j = _stair_key(j, s0, sn, se)
            kf1, kf2 = _rot(k1, k2, (-(sn + a_j)).to(tl.float32), inv)
            s_far = tl.where(b_j[None, :] < (se - r)[:, None],
                             _dot2(qa1, qa2, kf1, kf2, IEEE),
                             _dot2(qb1, qb2, kf1, kf2, IEEE))
        else:
            kpos = ka * _floor_div(j + ko, kg).to(tl.float32) + kb
            kf1, kf2 = _rot(k1, k2, kpos, inv)
            s_far = _dot2(qa1, qa2, kf1, kf2, IEEE)
    return _fold(V, svn, j, key_ok, i, s_near, s_far, acc, m_i, l_i, scale, near, far_limit,
                 DV, IEEE)


@triton.jit
def _fold(V, svn, j, key_ok, i, s_near, s_far, acc, m_i, l_i, scale, near, far_limit,
          DV: tl.constexpr, IEEE: tl.constexpr):
    """A tile's near and far scores, each kept where its set holds the key,
    folded with the tile's values into the online softmax ``(acc, m_i, l_i)``."""
    dv = tl.arange(0, DV)
    t = i[:, None] - j[None, :]
    vis_near = (t >= 0) & (t < near) & key_ok[None, :]
    vis_far = (t >= near) & (j[None, :] < far_limit) & key_ok[None, :]
    s = tl.where(vis_near, s_near, tl.where(vis_far, s_far, -float("inf"))) * scale
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
    p = tl.exp(s - m_safe[:, None])
    alpha = tl.exp(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(V + j[:, None] * svn + dv[None, :], mask=key_ok[:, None], other=0.0)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(V.dtype.element_ty), v)
    return acc, m_new, l_i


@triton.jit
def _tile_rotated(KN, KF, skn, V, svn, start, hi, near_lo, far_hi, acc, m_i, l_i, i, i_lo,
                  i_hi, r, qn1, qn2, qa1, qa2, qb1, qb2, scale, near, far_limit, s0, sn, se,
                  STAIR: tl.constexpr, HALF: tl.constexpr, DV: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    """:func:`_tile` over keys rotated before the launch: ``KN`` holds keys
    ``near_lo ..`` at their own positions, ``KF`` keys ``0 .. far_hi - 1`` at
    their far positions (one KV head each, at its first key)."""
    c = tl.arange(0, HALF)
    j = start + tl.arange(0, BLOCK_N)
    key_ok = j < hi
    s_near = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if i_lo - (start + BLOCK_N - 1) < near:
        ok = key_ok & (j >= near_lo)
        k_ptr = KN + (j - near_lo)[:, None] * skn
        kn1 = tl.load(k_ptr + c[None, :], mask=ok[:, None], other=0.0)
        kn2 = tl.load(k_ptr + HALF + c[None, :], mask=ok[:, None], other=0.0)
        s_near = _dot2(qn1, qn2, kn1, kn2, IEEE)
    s_far = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if (i_hi - start >= near) & (start < far_limit):
        ok = key_ok & (j < far_hi)
        k_ptr = KF + j[:, None] * skn
        kf1 = tl.load(k_ptr + c[None, :], mask=ok[:, None], other=0.0)
        kf2 = tl.load(k_ptr + HALF + c[None, :], mask=ok[:, None], other=0.0)
        s_far = _dot2(qa1, qa2, kf1, kf2, IEEE)
        if STAIR:
            a_j, b_j = _stair_key(j, s0, sn, se)
            s_far = tl.where(b_j[None, :] < (se - r)[:, None], s_far,
                             _dot2(qb1, qb2, kf1, kf2, IEEE))
    return _fold(V, svn, j, key_ok, i, s_near, s_far, acc, m_i, l_i, scale, near, far_limit,
                 DV, IEEE)


#: Sizes and positions that change from call to call (prompt lengths, decode steps):
#: not specialised on (``== 1``, ``% 16``), or a new value would compile the kernel
#: again mid-run (seconds: measured as 2.8-3.5 s stalls of a decode step on an H200).
#: Pointer offsets stay aligned through the specialised strides.
_MOVING = ("H", "REP", "KVH", "rows", "i0", "split", "splits", "near_lo", "far_hi", "near",
           "far_limit", "qo", "qg", "ko", "kg", "s0", "sn", "se")


def _jit(fn):
    """``triton.jit`` without specialising on the :data:`_MOVING` arguments."""
    names = [n for n in fn.__code__.co_varnames[:fn.__code__.co_argcount] if n in _MOVING]
    return triton.jit(do_not_specialize=names)(fn)


@_jit
def _fused_fwd(Q, KN, KF, V, O, LSE, INV,
               sqb, sqh, sqm, sknb, sknh, skfb, skfh, skn, svb, svh, svn, sob, soh, som,
               H, REP, rows, i0, scale, near_lo, far_hi,
               near, far_limit, qa, qb, qo, qg, qmax, s0, sn, se,
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
    qn1, qn2, qa1, qa2, qb1, qb2, r = _query_rotations(q1, q2, i, inv, qa, qb, qo, qg, qmax,
                                                       s0, se, STAIR)
    if not IEEE:                         # the keys' dtype: half the registers, tensor cores
        dt = KF.dtype.element_ty
        qn1, qn2, qa1, qa2 = qn1.to(dt), qn2.to(dt), qa1.to(dt), qa2.to(dt)
        qb1, qb2 = qb1.to(dt), qb2.to(dt)
    acc = tl.zeros([BLOCK_M, DV], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    hi = tl.minimum(i0 + (pid_m + 1) * BLOCK_M, i0 + rows)
    i_lo = i0 + pid_m * BLOCK_M                  # the block's first and last rows
    i_hi = hi - 1
    for start in range(0, hi, BLOCK_N):
        acc, m_i, l_i = _tile_rotated(KN + b * sknb + kvh * sknh, KF + b * skfb + kvh * skfh,
                                      skn, V + b * svb + kvh * svh, svn, start, hi, near_lo,
                                      far_hi, acc, m_i, l_i, i, i_lo, i_hi, r,
                                      qn1, qn2, qa1, qa2, qb1, qb2, scale, near, far_limit,
                                      s0, sn, se, STAIR, HALF, DV, BLOCK_M, BLOCK_N, IEEE)
    out = acc / l_i[:, None]
    o_ptr = O + b * sob + h * soh + r_idx[:, None] * som + dv[None, :]
    tl.store(o_ptr, out.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + pid_bh * rows + r_idx, m_i + tl.log(l_i), mask=row_ok)


@triton.jit
def _tile_far(K, V, skn, svn, start, acc, m_i, l_i, r, inv, qa1, qa2, qb1, qb2, scale,
              ka, kb, ko, kg, s0, sn, se, STAIR: tl.constexpr, HALF: tl.constexpr,
              DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              IEEE: tl.constexpr, ONE_ROW: tl.constexpr):
    """:func:`_tile` for a whole tile of keys every row sees as far keys
    (``ONE_ROW``: the rows are one query position's heads)."""
    c = tl.arange(0, HALF)
    dv = tl.arange(0, DV)
    j = start + tl.arange(0, BLOCK_N)
    k_ptr = K + j[:, None] * skn
    k1 = tl.load(k_ptr + c[None, :]).to(tl.float32)
    k2 = tl.load(k_ptr + HALF + c[None, :]).to(tl.float32)
    if STAIR and ONE_ROW:
        # one query position: its class r is every row's, so the key turns one
        # step further where the query would take m + 1 (R(m+1)^T R(p) = R(m)^T R(p-1)):
        # one product
        a_j, b_j = _stair_key(j, s0, sn, se)
        shift = (b_j >= se - tl.max(r, 0)).to(tl.int32)
        kf1, kf2 = _rot(k1, k2, (-(sn + a_j) - shift).to(tl.float32), inv)
        s = _dot2(qa1, qa2, kf1, kf2, IEEE) * scale
    elif STAIR:
        a_j, b_j = _stair_key(j, s0, sn, se)
        kf1, kf2 = _rot(k1, k2, (-(sn + a_j)).to(tl.float32), inv)
        s = tl.where(b_j[None, :] < (se - r)[:, None], _dot2(qa1, qa2, kf1, kf2, IEEE),
                     _dot2(qb1, qb2, kf1, kf2, IEEE)) * scale
    else:
        kf1, kf2 = _rot(k1, k2, ka * _floor_div(j + ko, kg).to(tl.float32) + kb, inv)
        s = _dot2(qa1, qa2, kf1, kf2, IEEE) * scale
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp(s - m_new[:, None])
    alpha = tl.exp(m_i - m_new)
    v = tl.load(V + j[:, None] * svn + dv[None, :])
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(V.dtype.element_ty), v)
    return acc, m_new, l_i * alpha + tl.sum(p, 1)


@_jit
def _decode_fwd(Q, K, V, PO, PML, INV,
                sqb, sqh, sqm, skb, skh, skn, svb, svh, svn,
                KVH, REP, rows, i0, split, scale,
                near, far_limit, qa, qb, qo, qg, qmax, ka, kb, ko, kg, s0, sn, se,
                STAIR: tl.constexpr, HALF: tl.constexpr, DV: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
                ONE_ROW: tl.constexpr):
    """Program ``(s, b * KVH + g)``: keys ``s * split ..`` of KV head ``g``
    for the tile rows ``t = head_in_group * rows + row``; writes the slice's
    ``acc`` to ``PO [splits, b * KVH, BLOCK_M, DV]`` and ``(m, l)`` to ``PML
    [splits, b * KVH, 2, BLOCK_M]``."""
    pid_s, pid_bg = tl.program_id(0), tl.program_id(1)
    b, g = pid_bg // KVH, pid_bg % KVH
    t = tl.arange(0, BLOCK_M)
    row_ok = t < REP * rows
    h = g * REP + t // rows
    qi = t % rows
    i = i0 + qi
    c = tl.arange(0, HALF)
    dv = tl.arange(0, DV)
    inv = tl.load(INV + c)
    q_ptr = Q + b * sqb + h[:, None] * sqh + qi[:, None] * sqm
    q1 = tl.load(q_ptr + c[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    q2 = tl.load(q_ptr + HALF + c[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    qn1, qn2, qa1, qa2, qb1, qb2, r = _query_rotations(q1, q2, i, inv, qa, qb, qo, qg, qmax,
                                                       s0, se, STAIR)
    acc = tl.zeros([BLOCK_M, DV], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    lo = pid_s * split
    hi = tl.minimum(lo + split, i0 + rows)
    # whole tiles every row sees as far keys (nearly all of a long prompt's):
    # no near scores, no masks; then the rest (the near window, sinks' ends)
    far_end = tl.minimum(tl.minimum(hi, far_limit), i0 - near + 1)
    far_stop = lo + tl.maximum(far_end - lo, 0) // BLOCK_N * BLOCK_N
    for start in range(lo, far_stop, BLOCK_N):
        acc, m_i, l_i = _tile_far(K + b * skb + g * skh, V + b * svb + g * svh, skn, svn,
                                  start, acc, m_i, l_i, r, inv, qa1, qa2, qb1, qb2, scale,
                                  ka, kb, ko, kg, s0, sn, se, STAIR, HALF, DV, BLOCK_M,
                                  BLOCK_N, IEEE, ONE_ROW)
    for start in range(far_stop, hi, BLOCK_N):
        acc, m_i, l_i = _tile(K + b * skb + g * skh, V + b * svb + g * svh, skn, svn,
                              start, hi, acc, m_i, l_i, i, i0, i0 + rows - 1, r, inv,
                              qn1, qn2, qa1, qa2, qb1, qb2, scale, near, far_limit,
                              ka, kb, ko, kg, s0, sn, se, STAIR, HALF, DV, BLOCK_M, BLOCK_N, IEEE)
    base = pid_s * tl.num_programs(1) + pid_bg
    tl.store(PO + (base * BLOCK_M + t[:, None]) * DV + dv[None, :], acc)
    tl.store(PML + base * 2 * BLOCK_M + t, m_i)
    tl.store(PML + base * 2 * BLOCK_M + BLOCK_M + t, l_i)


@_jit
def _decode_fold(PO, PML, O, sob, soh, som, splits, KVH, REP, rows,
                 DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr):
    """Program ``(b * KVH + g, t)``: tile row ``t``'s partial sums over the
    slices (``BLOCK_S`` at a time) folded into its output row of ``O``."""
    pid_bg, t = tl.program_id(0), tl.program_id(1)
    b, g = pid_bg // KVH, pid_bg % KVH
    n_bg = tl.num_programs(0)
    dv = tl.arange(0, DV)
    acc = tl.zeros([DV], dtype=tl.float32)
    m_i = tl.max(tl.full([BLOCK_S], -float("inf"), dtype=tl.float32), 0)   # fp32 scalars
    l_i = tl.sum(tl.zeros([BLOCK_S], dtype=tl.float32), 0)
    for s0 in range(0, splits, BLOCK_S):
        sx = s0 + tl.arange(0, BLOCK_S)
        ok = sx < splits
        base = sx * n_bg + pid_bg
        m_s = tl.load(PML + base * 2 * BLOCK_M + t, mask=ok, other=-float("inf"))
        l_s = tl.load(PML + base * 2 * BLOCK_M + BLOCK_M + t, mask=ok, other=0.0)
        a_s = tl.load(PO + (base * BLOCK_M + t)[:, None] * DV + dv[None, :], mask=ok[:, None],
                      other=0.0)
        m_new = tl.maximum(m_i, tl.max(m_s, 0))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
        w = tl.exp(m_s - m_safe)
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(l_s * w, 0)
        acc = acc * alpha + tl.sum(a_s * w[:, None], 0)
        m_i = m_new
    h = g * REP + t // rows
    o_ptr = O + b * sob + h * soh + (t % rows) * som + dv
    tl.store(o_ptr, (acc / l_i).to(O.dtype.element_ty))


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else 3.0e38


def _rule_args(rules: Rules) -> tuple:
    s0, sn, se = rules.stair if rules.stair is not None else (0, 0, 1)
    return (min(rules.near, 2 ** 31 - 1), min(rules.far_limit, 2 ** 31 - 1), rules.qa,
            rules.qb, rules.qo, rules.qg, _finite(rules.qmax), rules.ka, rules.kb, rules.ko,
            rules.kg, s0, sn, se)


def _check_rotary(d: int, half: int) -> None:
    if d != 2 * half:
        raise ValueError(f"fused attention needs full rotary: head_dim {d} != 2 * {half}")


def _rotated_keys(k, inv_freq, rules: Rules, i0: int, rows: int):
    """``(kn, near_lo, kf, far_hi)``: the keys some row sees as near (``near_lo
    ..``) rotated to their own positions, and those some row sees as far
    (``.. far_hi - 1``) to their far positions (:func:`mesa_viz.kernels.rules.positions`):
    once per launch instead of once per query block and head."""
    n, dev = k.shape[2], k.device
    near_lo = max(0, i0 - rules.near + 1)
    far_hi = max(0, min(rules.far_limit, i0 + rows - rules.near, n))
    j_near = torch.arange(near_lo, n, device=dev)
    kn = rotate_halves(k[:, :, near_lo:], j_near.float(), inv_freq)
    j_far = torch.arange(far_hi, device=dev)
    k_far = positions(rules, torch.arange(i0, i0 + 1, device=dev), j_far)[3]
    kf = rotate_halves(k[:, :, :far_hi], k_far, inv_freq) if far_hi else kn[:, :, :0]
    return kn, near_lo, kf, far_hi


#: Launch settings by head size: ``(block_m, block_n, num_warps)`` of the rows launch,
#: ``(block_n, num_warps)`` of the decode launch.  Head size 64: the fastest of those timed
#: on an H200 (benchmarks/gpu/h200-run6, ``gpu_bench --kernel-times``); 128: the largest tiles
#: Triton (3.6 and 3.9) compiles for sm_90 without spilling registers (64 x 64 with 4 warps
#: spills 504 bytes a thread there), not yet timed.  Other sizes take the next larger entry.
ROWS_LAUNCH = {64: (64, 64, 4), 128: (64, 32, 8)}
DECODE_LAUNCH = {64: (32, 4), 128: (32, 8)}


def launch_settings(table: dict, head_dim: int) -> tuple:
    """The entry of ``table`` for ``head_dim``: the smallest size at least it, else the largest."""
    fits = [d for d in sorted(table) if d >= head_dim]
    return table[fits[0] if fits else max(table)]


def fused_attention(q, k, v, i0: int, inv_freq, scale: float, rules: Rules,
                    block_m: int | None = None, block_n: int | None = None,
                    num_warps: int | None = None):
    """``(out [b, h, rows, d_v], lse [b, h, rows])`` in one launch (module
    doc) over keys rotated once before it (:func:`_rotated_keys`).  ``q [b, h,
    rows, d]`` at ``i0..``; ``k, v [b, kv_h, i0 + rows, d]``; full rotary
    (``d == 2 * len(inv_freq)``, a power of two); tiles and warps by head size
    (:data:`ROWS_LAUNCH`) unless given."""
    b, h, rows, d = q.shape
    half = inv_freq.shape[0]
    _check_rotary(d, half)
    default = launch_settings(ROWS_LAUNCH, d)
    block_m, block_n, num_warps = (x if x is not None else y for x, y in
                                   zip((block_m, block_n, num_warps), default))
    inv = inv_freq.to(device=q.device, dtype=torch.float32).contiguous()
    kn, near_lo, kf, far_hi = _rotated_keys(k, inv, rules, i0, rows)
    out = torch.empty(q.shape[:3] + (v.shape[-1],), dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(rows, block_m), b * h)
    near, far_limit, qa, qb, qo, qg, qmax, *_, s0, sn, se = _rule_args(rules)
    _fused_fwd[grid](
        q, kn, kf, v, out, lse, inv,
        q.stride(0), q.stride(1), q.stride(2), kn.stride(0), kn.stride(1), kf.stride(0),
        kf.stride(1), kn.stride(2), v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        h, h // k.shape[1], rows, i0, scale, near_lo, far_hi,
        near, far_limit, qa, qb, qo, qg, qmax, s0, sn, se,
        STAIR=rules.stair is not None, HALF=half, DV=v.shape[-1], BLOCK_M=block_m,
        BLOCK_N=block_n, IEEE=q.dtype == torch.float32, num_warps=num_warps)
    return out, lse


#: Slices one step of the fold reads (``_decode_fold``).
FOLD_SLICES = 32


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def decode_splits(keys: int, groups: int, programs: int, block_n: int) -> tuple[int, int]:
    """``(splits, split)``: slices of ``split`` keys (a multiple of
    ``block_n``) so that ``splits * groups`` programs reach about ``programs``."""
    tiles = _cdiv(keys, block_n)
    want = max(1, min(tiles, _cdiv(programs, groups)))
    split = _cdiv(tiles, want) * block_n
    return _cdiv(keys, split), split


def _decode_launch(q, k, v, i0: int, inv_freq, rules: Rules, programs: int, block_n: int):
    """What every layer's decode launch of one forward shares: ``(grid,
    block_m, splits, split, po, pml, inv, rule arguments)``, with the partial
    sums' buffer (layers run one after another on one stream, so one buffer
    serves them all)."""
    b, h, rows, d = q.shape
    kvh, half, dv = k.shape[1], inv_freq.shape[0], v.shape[-1]
    _check_rotary(d, half)
    block_m = decode_rows(h, kvh, rows)
    if not block_m:
        raise ValueError(f"fused_decode holds at most {DECODE_ROWS} rows of a KV group: "
                         f"{h // kvh} heads x {rows} rows")
    splits, split = decode_splits(i0 + rows, b * kvh, programs, block_n)
    size = splits * b * kvh * block_m
    buf = torch.empty(size * (dv + 2), dtype=torch.float32, device=q.device)
    inv = inv_freq.to(device=q.device, dtype=torch.float32).contiguous()
    return ((splits, b * kvh), block_m, splits, split, buf[:size * dv], buf[size * dv:], inv,
            _rule_args(rules))


def fused_decode(q, k, v, i0: int, inv_freq, scale: float, rules: Rules, keep=None,
                 programs: int = 512, block_n: int | None = None,
                 num_warps: int | None = None):
    """``out [b, h, rows, d_v]`` of a few query rows (module doc) in two
    launches; ``rows * h / kv_h <= DECODE_ROWS`` (:func:`.twin.decode_rows`).
    ``q [b, h, rows, d]`` at ``i0..``; ``k, v [b, kv_h, i0 + rows, d]``;
    about ``programs`` programs share the keys; tiles and warps by head size
    (:data:`DECODE_LAUNCH`) unless given.  ``keep(key, make)``: where
    the forward keeps what its layers share (``kernels.RopeTables.table``:
    the launch's sizes and its buffer of partial sums), else made here."""
    b, h, rows, d = q.shape
    kvh, dv = k.shape[1], v.shape[-1]
    default = launch_settings(DECODE_LAUNCH, d)
    block_n = block_n if block_n is not None else default[0]
    num_warps = num_warps if num_warps is not None else default[1]
    key = ("decode-launch", i0, tuple(q.shape), kvh, dv, q.dtype, rules, programs, block_n)
    def make():
        return _decode_launch(q, k, v, i0, inv_freq, rules, programs, block_n)
    grid, block_m, splits, split, po, pml, inv, rule_args = \
        keep(key, make) if keep is not None else make()
    # [b, rows, h, d_v] in memory: the attention interface's transpose is free
    out = torch.empty((b, rows, h, dv), dtype=q.dtype, device=q.device).transpose(1, 2)
    _decode_fwd[grid](
        q, k, v, po, pml, inv,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        kvh, h // kvh, rows, i0, split, scale, *rule_args,
        STAIR=rules.stair is not None, HALF=inv.shape[0], DV=dv, BLOCK_M=block_m,
        BLOCK_N=block_n, IEEE=q.dtype == torch.float32, ONE_ROW=rows == 1,
        num_warps=num_warps)
    _decode_fold[(b * kvh, h // kvh * rows)](
        po, pml, out, out.stride(0), out.stride(1), out.stride(2), splits, kvh, h // kvh, rows,
        DV=dv, BLOCK_M=block_m, BLOCK_S=FOLD_SLICES)
    return out
