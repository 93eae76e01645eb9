"""Attention kernels for every method, on keys cached *before* RoPE.

Pure torch (no transformers).  Each kernel receives un-rotated queries
``q [batch, head, q_len, head_dim]`` at absolute positions ``i0 .. i0+q_len-1``
and un-rotated keys/values ``k, v [batch, kv_head, kv_len, head_dim]`` at
positions ``0 .. kv_len-1``, applies RoPE at the positions its layout
prescribes and returns ``[batch, head, q_len, head_dim]``.

Methods whose relative position is not a difference of one query and one key
position (ReRoPE, Stair PE, sinks) split keys into a *near* and a *far* set,
each with its own rotation.  Both sets are scored in one softmax by
concatenating along the head dimension: ``[q_near, q_far] . [k_near, 0]`` and
``[q_near, q_far] . [0, k_far]``.  Queries are processed in blocks so nothing
holds an ``[n, n]`` matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .methods import LeakyReRoPE, LMInfinite, Mesa, Method, ReRoPE, StreamingLLM

__all__ = ["Rope", "attend", "rotate", "dense_rows", "SCORE_BUDGET"]

#: Bytes of fp32 scores one SDPA call may hold (blocks are sized to fit it).
SCORE_BUDGET = 256 * 2**20
#: Query rows per block on CPU: only a block-wide edge of each key set needs a mask
#: (:func:`_lse_parts`), so short blocks keep the masked work small.
CPU_BLOCK = 256


@dataclass(frozen=True)
class Rope:
    """RoPE as the model computes it: ``inv_freq [rot_dim/2]`` and the cos/sin
    ``scaling`` (1 except for YaRN-like types); half-split rotation of the
    first ``rot_dim`` channels (Llama, GPT-NeoX partial rotary, Phi-3)."""

    inv_freq: torch.Tensor
    scaling: float = 1.0
    #: cos/sin tables by caller-given key: one Rope serves every layer of a forward
    cache: dict = field(default_factory=dict, compare=False, repr=False)

    def cos_sin(self, pos: torch.Tensor, dtype: torch.dtype, key=None):
        """Rotation tables ``(C, S) [len(pos), 2, rot_dim/2]`` for (possibly
        fractional) positions: ``C = (cos, cos)``, ``S = (-sin, sin)``, so that
        the two halves ``x = (x1, x2)`` rotate as ``x * C + flip(x) * S``;
        ``key`` names ``pos`` to reuse the tables."""
        if key is not None and (key, dtype) in self.cache:
            return self.cache[key, dtype]
        freqs = pos.to(torch.float32)[:, None] * self.inv_freq.to(pos.device, torch.float32)
        cos, sin = freqs.cos() * self.scaling, freqs.sin() * self.scaling
        cs = (torch.stack((cos, cos), dim=-2).to(dtype), torch.stack((-sin, sin), dim=-2).to(dtype))
        if key is not None:
            self.cache[key, dtype] = cs
        return cs


def rotate(x: torch.Tensor, rope: Rope, pos: torch.Tensor, key=None) -> torch.Tensor:
    """``x [..., len(pos), head_dim]`` rotated to positions ``pos``: channel
    ``c`` pairs with ``c + rot_dim/2`` (half-split RoPE); channels past
    ``rot_dim`` pass through (partial rotary)."""
    C, S = rope.cos_sin(pos, x.dtype, key)
    half = C.shape[-1]
    xr = x[..., :2 * half].unflatten(-1, (2, half))                 # [..., L, 2, half]
    out = torch.addcmul(xr * C, xr.flip(-2), S).flatten(-2)
    if 2 * half < x.shape[-1]:
        out = torch.cat((out, x[..., 2 * half:]), dim=-1)
    return out


def _arange(a, b, device):
    return torch.arange(a, b, device=device)


# -- the inner attention call -------------------------------------------------

def sdpa(q, k, v, mask, scale, backend="sdpa"):
    """Softmax attention, GQA-aware.  ``q [b,h,Lq,d]``, ``k, v [b,kvh,Lk,d|dv]``,
    ``mask [Lq, Lk]`` bool (True = visible) or None for full visibility."""
    if backend == "eager":
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        w = torch.matmul(q, k.transpose(-1, -2)) * scale
        if mask is not None:
            w = w.masked_fill(~mask, float("-inf"))
        w = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(w, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])


def _attn_lse(q, k, v, mask, scale, backend, causal=False):
    """Attention and its log-sum-exp ``[b, h, Lq]`` (for merging key sets).

    ``mask [Lq, Lk]`` bool or None; ``causal`` aligns query ``x`` with key ``x``.
    """
    b, h, L, _ = q.shape
    rep = h // k.shape[1]
    if causal:
        mask = torch.ones(L, k.shape[2], dtype=torch.bool, device=q.device).tril()
    if backend == "sdpa" and q.device.type == "cpu":
        if causal:
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, 0.0, True, scale=scale)
            return out, lse
        # GQA without copying keys: the query heads of one KV head become rows
        qf = q.reshape(b, k.shape[1], rep * L, q.shape[-1])
        bias = None if mask is None else torch.zeros(
            mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            qf, k, v, 0.0, False, attn_mask=None if bias is None else bias.repeat(rep, 1),
            scale=scale)
        out, lse = out.reshape(b, h, L, -1), lse.reshape(b, h, L)
        return out, lse if mask is None else lse.masked_fill(~mask.any(-1), float("-inf"))
    # scores by matmul, GQA folded (the query heads of one KV head are rows)
    qf = q.reshape(b, k.shape[1], rep * L, q.shape[-1])
    w = torch.matmul(qf, k.transpose(-1, -2)).float() * scale          # [b, kvh, rep*L, Lk]
    if mask is not None:
        w = w.view(b, k.shape[1], rep, L, -1).masked_fill(~mask, float("-inf")).view(w.shape)
    lse = torch.logsumexp(w, dim=-1)
    out = _pv(torch.exp(w - lse[..., None]).to(v.dtype), v, split=q.device.type != "cpu")
    return out.reshape(b, h, L, -1), lse.reshape(b, h, L)


def _pv(p, v, split: bool, block: int = 4096):
    """``p [b, kvh, R, Lk] @ v [b, kvh, Lk, d_v]``.  With ``split`` (GPU) and many
    keys, the sum runs over key blocks as a batch of products added up (split-K):
    a single ``[R, Lk] x [Lk, d_v]`` product with few rows runs on few GPU blocks."""
    Lk = v.shape[2]
    nb = Lk // block
    if not split or nb < 2:
        return torch.matmul(p, v)
    b, kvh, R, _ = p.shape
    cut = nb * block
    pb = p[..., :cut].reshape(b, kvh, R, nb, block).transpose(2, 3)    # [b, kvh, nb, R, block]
    out = torch.matmul(pb, v[:, :, :cut].reshape(b, kvh, nb, block, -1)).sum(2)
    if cut < Lk:
        out = out + torch.matmul(p[..., cut:], v[:, :, cut:])
    return out


def _interval(row):
    """``(lo, hi)`` of the one run of True in a bool row ``[L]``, None if empty."""
    idx = row.nonzero()
    return None if idx.numel() == 0 else (int(idx[0]), int(idx[-1]) + 1)


def _lse_parts(q, k, v, mask, scale, backend):
    """:func:`_attn_lse` as a list of parts to merge, for a mask each of whose
    rows sees one interval of keys whose two ends never move left from row to
    row (every mask these kernels build).  The keys every row sees go through
    the kernel without a mask; only the two edges, at most a block wide, carry
    one."""
    first = last = None
    if mask is not None and mask.shape[0] > 1:
        first, last = _interval(mask[0]), _interval(mask[-1])
    if first is None or last is None or last[0] >= first[1]:
        return [_attn_lse(q, k, v, mask, scale, backend)]
    (lo_f, hi_f), (lo_l, hi_l) = first, last
    return [_attn_lse(q, k[:, :, a:b], v[:, :, a:b], mask[:, a:b] if masked else None,
                      scale, backend)
            for a, b, masked in ((lo_f, lo_l, True), (lo_l, hi_f, False), (hi_f, hi_l, True))
            if b > a]


def _merge(parts):
    """Combine ``(out, lse)`` of disjoint key sets into one softmax; a set a
    row cannot see has ``lse = -inf`` and weight 0."""
    lse = torch.stack([p[1] for p in parts]).float()
    w = torch.exp(lse - lse.max(0).values)                  # [parts, b, h, Lq]
    out = 0
    for (o, _), wi in zip(parts, w):
        out = out + torch.where(wi[..., None] > 0, o.float() * wi[..., None], 0.0)
    return (out / w.sum(0)[..., None]).to(parts[0][0].dtype)


def _attend_sets(sets, scale, backend):
    """One softmax over disjoint key sets, each scored with its own rotation:
    ``sets`` of ``(q [b, h, R, d], k, v [b, kvh, L_s, d], mask [R, L_s] | None)``.

    CPU: each set scored separately (:func:`_lse_parts`) and merged by
    log-sum-exp.  GPU: two sets and many query rows are concatenated along the
    head dimension (``[q_a, q_b] . [k_a, 0]`` and ``[q_a, q_b] . [0, k_b]``) for
    one fused SDPA call; otherwise (few rows, or more sets, whose concatenation
    would outgrow the fused kernels' head size) scores by matmul, in row chunks
    within ``SCORE_BUDGET``, merged by log-sum-exp.
    """
    sets = [x for x in sets if x[1] is not None and x[1].shape[2]]
    q0 = sets[0][0]
    if backend == "sdpa" and q_is_cpu_or_eager(q0, backend):
        return _merge([p for x in sets for p in _lse_parts(*x, scale, backend)])
    if len(sets) == 1:
        return sdpa(*sets[0], scale, backend)
    n_keys = sum(x[1].shape[2] for x in sets)
    if q_is_cpu_or_eager(q0, backend) or len(sets) > 2 or _few_rows(q0, n_keys):
        step = max(1, SCORE_BUDGET // (4 * q0.shape[0] * q0.shape[1] * n_keys))
        return torch.cat([_merge([_attn_lse(qx[:, :, a:a + step], kx, vx,
                                            None if mx is None else mx[a:a + step],
                                            scale, backend) for qx, kx, vx, mx in sets])
                          for a in range(0, q0.shape[2], step)], dim=2)
    n, d = len(sets), q0.shape[-1]
    q = torch.cat([x[0] for x in sets], dim=-1)
    k = torch.cat([F.pad(x[1], (d * t, d * (n - 1 - t))) for t, x in enumerate(sets)], dim=2)
    mask = torch.cat([x[3] if x[3] is not None else torch.ones(
        q0.shape[2], x[1].shape[2], dtype=torch.bool, device=q0.device) for x in sets], dim=1)
    return sdpa(q, k, torch.cat([x[2] for x in sets], dim=2), mask, scale, backend)


def q_is_cpu_or_eager(q, backend):
    return backend == "eager" or q.device.type == "cpu"


def _few_rows(q, n_keys):
    """On GPU, a call with few query rows (Mesa's residue classes: about
    ``last_chunk / stair_width`` rows each) parallelises badly in the fused SDPA
    kernels (one block per head); scores by matmul when they fit the budget."""
    return q.shape[2] <= 64 and 4 * q.shape[0] * q.shape[1] * q.shape[2] * n_keys <= SCORE_BUDGET


def _block_size(q, n_keys, backend):
    """Query rows per call so the scores (eager: every head) or the mask
    (SDPA's fused kernels: one additive mask shared by the heads) stay within
    ``SCORE_BUDGET`` bytes."""
    b, h = q.shape[0], q.shape[1]
    per_row = 4 * n_keys * b * (h if backend == "eager" else 1)
    cap = CPU_BLOCK if backend == "sdpa" and q_is_cpu_or_eager(q, backend) else 8192
    return max(1, min(cap, SCORE_BUDGET // max(1, per_row)))


# -- origin ---------------------------------------------------------------------

def _origin(q, k, v, i0, rope, scale, backend):
    Lq, Lk, dev = q.shape[2], k.shape[2], q.device
    qr = rotate(q, rope, _arange(i0, i0 + Lq, dev), ("lin", i0, i0 + Lq))
    kr = rotate(k, rope, _arange(0, Lk, dev), ("lin", 0, Lk))
    if Lq == 1:
        return sdpa(qr, kr, v, None, scale, backend)
    if backend == "sdpa" and i0 == 0 and Lq == Lk:        # flash/efficient causal kernel
        return F.scaled_dot_product_attention(qr, kr, v, is_causal=True, scale=scale,
                                              enable_gqa=q.shape[1] != k.shape[1])
    out = []
    B = _block_size(q, Lk, backend)
    for a in range(0, Lq, B):
        b = min(Lq, a + B)
        kmax = i0 + b
        mask = _arange(0, kmax, dev)[None, :] <= _arange(i0 + a, i0 + b, dev)[:, None]
        out.append(sdpa(qr[:, :, a:b], kr[:, :, :kmax], v[:, :, :kmax], mask, scale, backend))
    return torch.cat(out, dim=2)


# -- two-region methods ---------------------------------------------------------

def _near_far(q, k, v, i0, rope, scale, backend, *, near, far_keys, far_q_pos,
              far_k_pos, far_visible, near_floor=0):
    """Near keys ``0 <= i - j < near``, ``j >= near_floor``, at true positions; far keys ``j`` in
    ``far_keys(i_lo, i_hi) -> (j0, j1)`` rotated to ``far_k_pos(j)``, queries to
    ``far_q_pos(i)``, visible where ``far_visible(i, j)``."""
    Lq, Lk, dev = q.shape[2], k.shape[2], q.device
    j_all = _arange(0, Lk, dev)
    k_near = rotate(k, rope, j_all, ("lin", 0, Lk))
    f_max = far_keys(i0, i0 + Lq - 1)[1]                   # far keys start at 0: rotate once
    k_far = rotate(k[:, :, :f_max], rope, far_k_pos(j_all[:f_max]), ("far-k", f_max))
    out = []
    B = _block_size(q, 2 * Lk, backend)
    for a in range(0, Lq, B):
        b = min(Lq, a + B)
        i = _arange(i0 + a, i0 + b, dev)
        qa = rotate(q[:, :, a:b], rope, i, ("lin", i0 + a, i0 + b))
        n0, n1 = max(near_floor, i0 + a - near + 1), i0 + b
        jn = j_all[n0:n1]
        ma = (jn[None, :] <= i[:, None]) & (i[:, None] - jn[None, :] < near)
        sets = [(qa, k_near[:, :, n0:n1], v[:, :, n0:n1], ma)]
        f0, f1 = far_keys(i0 + a, i0 + b - 1)
        if f1 > f0:
            jf = j_all[f0:f1]
            qb = rotate(q[:, :, a:b], rope, far_q_pos(i), ("far-q", i0 + a, i0 + b))
            mb = far_visible(i[:, None], jf[None, :]).expand(len(i), len(jf))
            sets.append((qb, k_far[:, :, f0:f1], v[:, :, f0:f1], mb))
        out.append(_attend_sets(sets, scale, backend))
    return torch.cat(out, dim=2)


def _rerope(q, k, v, i0, rope, scale, backend, m: ReRoPE | LeakyReRoPE):
    w = m.window
    leak = getattr(m, "leak", None)
    if leak is None or math.isinf(leak):
        q_pos, k_pos = (lambda i: torch.full_like(i, w)), (lambda j: torch.zeros_like(j))
    else:
        q_pos = lambda i: i / leak + w * (1 - 1 / leak)      # noqa: E731
        k_pos = lambda j: j / leak                             # noqa: E731
    return _near_far(q, k, v, i0, rope, scale, backend, near=w,
                     far_keys=lambda lo, hi: (0, max(0, hi - w + 1)),
                     far_q_pos=q_pos, far_k_pos=k_pos,
                     far_visible=lambda i, j: i - j >= w)


def _sink_window(q, k, v, i0, rope, scale, backend, m: StreamingLLM | LMInfinite):
    S, W = m.sink_tokens, m.window
    if isinstance(m, StreamingLLM):
        q_pos = lambda i: torch.clamp(i, max=S + W - 1)       # noqa: E731
        k_pos = lambda j: j                                    # noqa: E731
    else:
        q_pos, k_pos = (lambda i: torch.full_like(i, W)), (lambda j: torch.zeros_like(j))
    return _near_far(q, k, v, i0, rope, scale, backend, near=W,
                     far_keys=lambda lo, hi: (0, min(S, max(0, hi - W + 1))),
                     far_q_pos=q_pos, far_k_pos=k_pos,
                     far_visible=lambda i, j: (i - j >= W) & (j < S))


# -- Mesa -----------------------------------------------------------------------

def _log_scale(q, m: Mesa, i):
    if not m.log_scaling:
        return q
    f = torch.clamp(torch.log(i.to(torch.float32) + 1) / math.log(m.train_length), min=1)
    return q * f.to(q.dtype)[:, None]


def _mesa_middle(q, k, v, rope, scale, backend, m: Mesa):
    """All middle chunks as one batch: chunk queries see the first chunk at
    ``0..F-1`` and themselves causally at ``F..F+C-1``.

    Each chunk is put behind a copy of the first chunk, so the whole batch is
    one plain causal attention over ``F + C`` tokens (SDPA's fused causal
    kernel, no mask); the first chunk's own rows are recomputed and dropped
    (``F^2/2`` extra pairs per chunk).
    """
    plan = m.plan()
    F_, C = m.first_chunk, m.chunk_size
    nc, (a, b) = len(plan.middle), (plan.middle[0][0], plan.middle[-1][1])
    bs, h, _, d = q.shape
    dev = q.device

    def chunks(x):  # [b, H, nc*C, d] -> [b*nc, H, C, d]
        return x[:, :, a:b].reshape(bs, x.shape[1], nc, C, x.shape[-1]).transpose(1, 2) \
            .reshape(bs * nc, x.shape[1], C, x.shape[-1])

    def behind_first(first, x, key):  # [b, H, F, d], [b, H, L, d] -> [b*nc, H, F + C, d]
        first = first if key is None else rotate(first, rope, _arange(0, F_, dev), key)
        x = chunks(x) if key is None else rotate(chunks(x), rope, _arange(F_, F_ + C, dev),
                                                 ("lin", F_, F_ + C))
        return torch.cat((first.repeat_interleave(nc, dim=0), x), dim=2)

    key = ("lin", 0, F_)
    qq, kk, vv = (behind_first(q[:, :, :F_], q, key), behind_first(k[:, :, :F_], k, key),
                  behind_first(v[:, :, :F_], v, None))
    if backend == "sdpa" and q_is_cpu_or_eager(q, backend):
        o = _behind_first_cpu(qq, kk, vv, F_, scale)
    elif backend == "sdpa":
        o = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, scale=scale,
                                           enable_gqa=h != k.shape[1])[:, :, F_:]
    else:
        mask = torch.ones(F_ + C, F_ + C, dtype=torch.bool, device=dev).tril()[F_:]
        g = max(1, _block_size(q, F_ + C, backend) // C)
        o = torch.cat([sdpa(qq[i:i + g, :, F_:], kk[i:i + g], vv[i:i + g], mask, scale, backend)
                       for i in range(0, bs * nc, g)], dim=0)
    o = o.reshape(bs, nc, h, C, -1).transpose(1, 2)
    return o.reshape(bs, h, nc * C, -1)


def _behind_first_cpu(qq, kk, vv, F_, scale, sub=256):
    """Causal attention of rows ``F_..`` of ``qq [B, h, F+C, d]`` over ``kk, vv``
    in sub-blocks of ``sub`` rows: all earlier keys without a mask, the
    diagonal block causally, merged by log-sum-exp.  The CPU flash kernel works
    in 512-key blocks, so one causal call over ``F + C`` keys would compute
    about a third more than needed; this computes at most ``sub / 2`` extra
    keys per row."""
    out = []
    for a in range(F_, qq.shape[2], sub):
        e = min(qq.shape[2], a + sub)
        qa = qq[:, :, a:e].contiguous()
        out.append(_merge([_attn_lse(qa, kk[:, :, :a], vv[:, :, :a], None, scale, "sdpa"),
                           _attn_lse(qa, kk[:, :, a:e], vv[:, :, a:e], None, scale, "sdpa",
                                     causal=True)]))
    return torch.cat(out, dim=2)


def _stair_rows(q, k, v, i0, rope, scale, backend, m: Mesa):
    """Last-chunk (and generated) queries ``i0..`` over all keys with Stair PE."""
    s, N, E = m.plan().last_start, m.stair_start, m.stair_width
    i_all = _arange(i0, i0 + q.shape[2], q.device)
    q = _log_scale(q, m, i_all)
    if m.stair == "anchored":
        return _near_far(
            q, k, v, i0, rope, scale, backend, near=k.shape[2], near_floor=s,
            far_keys=lambda lo, hi: (0, s),
            far_q_pos=lambda i: i - s,
            far_k_pos=lambda j: -_stair(s - j, N, E),
            far_visible=lambda i, j: j < s)
    if q.shape[2] == 1:                                   # a generated token
        return _stair_one(q, k, v, int(i_all[0]), rope, scale, backend, N, E)
    out = torch.empty(q.shape[:3] + (v.shape[-1],), dtype=q.dtype, device=q.device)
    Lk, Lq = k.shape[2], q.shape[2]
    D = max(0, i0 - N + 1)            # keys 0..D-1 are far for every row; near windows start at D
    k_near = rotate(k[:, :, D:], rope, _arange(D, Lk, q.device), ("lin", D, Lk))
    q_near = rotate(q, rope, i_all, ("lin", i0, i0 + Lq))
    m_all = torch.div(i_all - s, E, rounding_mode="floor")   # m of i = s + r + E*m
    q_far = rotate(q, rope, m_all, ("stair-q", i0, i0 + Lq))
    deep = None
    if D:
        deep = (*_deep_keys(k, v, rope, D, s, N, E),
                rotate(q, rope, m_all + 1, ("stair-q1", i0, i0 + Lq)))
    for x in range(min(E, q.shape[2])):                   # one residue class each
        idx = torch.arange(x, q.shape[2], E, device=q.device)
        out[:, :, idx] = _stair_class(q_near[:, :, idx], q_far[:, :, idx], idx, deep, k,
                                      k_near, v, i_all[idx], (i0 + x - s) % E, D, rope,
                                      scale, backend, s, N, E)
    return out


def _deep_keys(k, v, rope, D, s, N, E):
    """Far keys ``0..D-1``, seen by every query of the block, prepared once for
    all residue classes.  With ``s - N - j = E*a_j + b_j`` (``0 <= b_j < E``),
    query ``i = s + r + E*m`` sees key ``j`` at ``P(i - j) = N + m + a_j +
    [b_j >= E - r]``: keys rotated to ``-(N + a_j)`` and sorted by ``b_j``, class
    ``r`` scores groups ``b < E - r`` with its query at ``m`` and the rest at
    ``m + 1``, two contiguous ranges.  Returns ``(k_deep, v_deep, bounds)``,
    ``bounds[b]`` the start of group ``b`` (``bounds[E] = D``)."""
    j = _arange(0, D, k.device)
    t = s - N - j
    b = torch.remainder(t, E)
    order = torch.argsort(b * D + j)                      # by group, then by position
    kd = rotate(k.index_select(2, order), rope,
                -(N + torch.div(t[order], E, rounding_mode="floor")), ("deep", D, s, N, E))
    bounds = [0] + torch.cumsum(torch.bincount(b, minlength=E), 0).tolist()
    return kd, v.index_select(2, order), bounds


def _stair_one(q, k, v, i, rope, scale, backend, N, E):
    """One query at ``i`` over keys ``0..i`` with per-query Stair PE, without
    rotating the far keys.  Far keys with the same step ``P(i - j) = N + g``
    form runs of ``E`` (a shorter run first), so the query is rotated to each
    step instead (``[b, h, G, d]``) and every run is scored against its own
    copy; only the ``N`` near keys are rotated.  A decode step thus reads the
    cache once, in place.

    ``q [b, h, 1, d]``, ``k, v [b, kv_h, i+1, d]``; returns ``[b, h, 1, d_v]``.
    """
    b, h, _, d = q.shape
    kvh, dev = k.shape[1], q.device
    rep, f = h // kvh, max(0, i - N + 1)                  # far keys 0..i-N
    G, r0 = divmod(f, E)                                  # G full runs after r0 keys
    q_near = rotate(q, rope, _arange(i, i + 1, dev)).reshape(b, kvh, rep, d)
    k_near = rotate(k[:, :, f:], rope, _arange(f, i + 1, dev))
    scores = [torch.matmul(q_near, k_near.transpose(-1, -2))]          # [b, kvh, rep, i+1-f]
    if f:
        steps = N + torch.arange(G, -1, -1, device=dev)  # the r0-run's step, then run by run
        qs = rotate(q.expand(b, h, G + 1, d), rope, steps).reshape(b, kvh, rep, G + 1, d)
        if G:
            runs = k[:, :, r0:f].reshape(b, kvh, G, E, d)
            s_runs = torch.matmul(qs[:, :, :, 1:].transpose(2, 3), runs.transpose(-1, -2))
            scores.insert(0, s_runs.transpose(2, 3).reshape(b, kvh, rep, G * E))
        if r0:
            scores.insert(0, torch.matmul(qs[:, :, :, 0], k[:, :, :r0].transpose(-1, -2)))
    s = torch.cat(scores, dim=-1).float() * scale                      # [b, kvh, rep, i+1]
    p = torch.softmax(s, dim=-1).to(v.dtype)
    return _pv(p, v, split=not q_is_cpu_or_eager(q, backend)).reshape(b, h, 1, -1)


def _stair(t, N, E):
    return torch.where(t < N, t, N + torch.div(t - N, E, rounding_mode="floor"))


def _stair_class(q_near, q_far, idx, deep, k, k_near, v, i, r, D, rope, scale, backend,
                 s, N, E):
    """Queries ``i = s + r + E*m`` (one residue class ``idx`` of the block,
    already rotated: near at ``i``, far at ``m``).  Near keys: ``k_near`` holds
    keys ``D..`` at their own positions.  Far keys past the ``D`` deep ones
    (:func:`_deep_keys`): rotated here to ``-g_r(j)``, so ``m + g_r(j) = P(i - j)``."""
    dev = q_near.device
    f_all = max(D, int(i[-1]) - N + 1)                    # far keys of the last query
    je = _arange(D, f_all, dev)
    k_edge = rotate(k[:, :, D:f_all], rope,
                    -(N + torch.div(s + r - je - N, E, rounding_mode="floor")),
                    ("stair-k", r, D, f_all))
    deep_sets = []
    if deep is not None:
        kd, vd, bounds, q_far1 = deep
        cut, qf1 = bounds[E - r], q_far1[:, :, idx]
        deep_sets = [(kd[:, :, :cut], vd[:, :, :cut], None), (kd[:, :, cut:], vd[:, :, cut:], qf1)]
    out = []
    B = _block_size(q_near, k.shape[2] + N, backend)
    for a in range(0, q_near.shape[2], B):
        ib = i[a:a + B]
        lo, hi = int(ib[0]), int(ib[-1])
        n0, f1 = max(0, lo - N + 1), max(D, hi - N + 1)
        jn = _arange(n0, hi + 1, dev)
        ma = (jn[None, :] <= ib[:, None]) & (ib[:, None] - jn[None, :] < N)
        mb = ib[:, None] - je[None, :f1 - D] >= N
        qf = q_far[:, :, a:a + B]
        sets = [(q_near[:, :, a:a + B], k_near[:, :, n0 - D:hi + 1 - D], v[:, :, n0:hi + 1], ma),
                (qf, k_edge[:, :, :f1 - D], v[:, :, D:f1], mb)]
        sets += [(qf if qx is None else qx[:, :, a:a + B], kx, vx, None)
                 for kx, vx, qx in deep_sets]
        out.append(_attend_sets(sets, scale, backend))
    return torch.cat(out, dim=2)


def _mesa(q, k, v, i0, rope, scale, backend, m: Mesa):
    plan = m.plan()
    if len(plan.chunks) == 1:
        return _origin(q, k, v, i0, rope, scale, backend)
    if i0 >= m.prefill_length:                                # generated tokens
        return _stair_rows(q, k, v, i0, rope, scale, backend, m)
    if i0 != 0 or q.shape[2] != m.prefill_length:
        raise ValueError(
            f"Mesa prefill must be one forward of the whole prompt "
            f"({m.prefill_length} tokens) from position 0, got {q.shape[2]} "
            f"tokens from position {i0}")
    F_, s = m.first_chunk, plan.last_start
    parts = [_origin(q[:, :, :F_], k[:, :, :F_], v[:, :, :F_], 0, rope, scale, backend)]
    if plan.middle:
        parts.append(_mesa_middle(q, k, v, rope, scale, backend, m))
    parts.append(_stair_rows(q[:, :, s:], k, v, s, rope, scale, backend, m))
    return torch.cat(parts, dim=2)


def attend(m: Method, q, k, v, i0: int, rope: Rope, scale: float, backend="sdpa"):
    """Attention of queries at ``i0..`` under resolved method ``m``.

    ``q [b, h, q_len, d]``, ``k, v [b, kv_h, kv_len, d]`` un-rotated; returns
    ``[b, h, q_len, d_v]``.
    """
    if isinstance(m, Mesa):
        return _mesa(q, k, v, i0, rope, scale, backend, m)
    if isinstance(m, (ReRoPE, LeakyReRoPE)):
        return _rerope(q, k, v, i0, rope, scale, backend, m)
    if isinstance(m, (StreamingLLM, LMInfinite)):
        return _sink_window(q, k, v, i0, rope, scale, backend, m)
    if m.name in ("origin", "dynamic-ntk"):
        return _origin(q, k, v, i0, rope, scale, backend)
    raise ValueError(f"method {m.name!r} has no attention kernel: allowed "
                     "origin, mesa, rerope, leaky-rerope, dynamic-ntk, streaming-llm, lm-infinite")


def dense_rows(m: Method, q_rows, k, rows, rope: Rope, scale: float):
    """Exact attention probabilities for a few query ``rows`` straight from the
    layout: ``scores[r, j] = (R(rel[r, j]) q_r) . k_j``.

    ``q_rows [b, h, R, d]`` un-rotated queries of absolute positions ``rows``;
    ``k [b, kv_h, kv_len, d]``.  Returns probabilities ``[b, h, R, kv_len]``
    (float32).
    """
    Lk, dev = k.shape[2], k.device
    rel, vis = m.relative(np.asarray(rows)[:, None], np.arange(Lk)[None, :])
    rel = torch.as_tensor(np.where(vis, rel, 0), dtype=torch.float32, device=dev)
    vis = torch.as_tensor(vis, device=dev)
    rep = q_rows.shape[1] // k.shape[1]
    kk = k.repeat_interleave(rep, 1).to(torch.float32)
    sq = Rope(rope.inv_freq, rope.scaling ** 2)
    factor = torch.as_tensor(query_scale(m, rows), dtype=torch.float32, device=dev)
    probs = []
    for r in range(len(rows)):
        qr = q_rows[:, :, r:r + 1].to(torch.float32) * factor[r]   # [b,h,1,d]
        qrot = rotate(qr.expand(-1, -1, Lk, -1), sq, rel[r])      # [b,h,Lk,d]
        sc = (qrot * kk).sum(-1) * scale
        sc = sc.masked_fill(~vis[r], float("-inf"))
        probs.append(torch.softmax(sc, dim=-1))
    return torch.stack(probs, dim=2)


def query_scale(m: Method, rows):
    """Per-query multiplier on q (Mesa's optional log-n scaling), ``[len(rows)]``."""
    rows = np.asarray(rows, dtype=np.float64)
    if not (isinstance(m, Mesa) and m.log_scaling):
        return np.ones_like(rows)
    plan = m.plan()
    if len(plan.chunks) == 1:
        return np.ones_like(rows)
    f = np.maximum(1.0, np.log(rows + 1) / math.log(m.train_length))
    return np.where(rows >= plan.last_start, f, 1.0)
