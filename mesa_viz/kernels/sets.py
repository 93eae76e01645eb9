"""Attention over several key sets: one softmax, each set scored its own way.

Pure torch, no positions (those are ``mesa_viz.kernels``' business).  A method
whose relative position is not the difference of one query and one key
position splits the keys into disjoint *sets* (near and far keys, deep keys,
...), rotates the queries once per set, and needs the softmax over their union:

* :func:`attn_lse` scores one set and returns its output and log-sum-exp
  ``[b, h, q_len]``; :func:`merge` combines the sets' ``(out, lse)`` into one
  softmax (a set a row cannot see has ``lse = -inf`` and weight 0);
* :func:`lse_parts` cuts a masked set into the keys every row of a block sees
  (no mask: the CPU flash kernel's fast path) and two block-wide masked edges;
* :func:`attend_sets` picks the path: on CPU every set through
  :func:`lse_parts` and :func:`merge`; on GPU two sets and many rows
  concatenated along the head dimension (``[q_a, q_b] . [k_a, 0]`` and
  ``[q_a, q_b] . [0, k_b]``) for one fused SDPA call, few rows or more sets
  by matmul scores within ``SCORE_BUDGET`` and a split-K ``p @ v`` (:func:`pv`);
* :func:`block_size` sizes query blocks so nothing holds an ``[n, n]`` matrix.

Shapes: ``q [b, h, rows, d]``, ``k, v [b, kv_h, keys, d | d_v]`` (GQA: ``h`` a
multiple of ``kv_h``), masks ``[rows, keys]`` bool (True = visible) or None.
:func:`uses_cpu_paths` and :func:`few_rows` are the only device decisions
(tests force the GPU branches on CPU by replacing them).
"""

from __future__ import annotations

import functools
import logging

import torch
from torch.nn.functional import pad, scaled_dot_product_attention

__all__ = ["SCORE_BUDGET", "CPU_BLOCK", "sdpa", "causal_sdpa", "attn_lse", "lse_parts",
           "merge", "merge_lse", "attend_lse", "causal_lower_right_sdpa", "attend_sets", "pv",
           "block_size", "uses_cpu_paths",
           "few_rows", "causal_rows_cpu", "flash_attn_module", "FUSED_BACKENDS",
           "SoftcapEager", "with_softcap", "softcap_of", "capped"]

log = logging.getLogger(__name__)

#: Backends whose attention is a fused kernel (SDPA's; flash-attn's for
#: ``flash_attention_2`` models, through :func:`flash_attn_module`).
FUSED_BACKENDS = ("sdpa", "flash_attention_2")
#: Bytes of fp32 scores one SDPA call may hold (blocks are sized to fit it).
SCORE_BUDGET = 256 * 2**20
#: Query rows per block on CPU: only a block-wide edge of each key set needs a mask
#: (:func:`lse_parts`), so short blocks keep the masked work small.
CPU_BLOCK = 256


class SoftcapEager(str):
    """The ``"eager"`` backend with attention logit softcapping (Gemma 2):
    every scaled score ``s`` becomes ``cap * tanh(s / cap)`` before the
    softmax (and before a log-sum-exp merge of key sets, which holds on the
    capped logits).  It compares equal to ``"eager"``, so every kernel takes
    its explicit-score path: SDPA's fused kernels take no softcap, and the
    Triton launch is not used (:func:`mesa_viz.kernels.dispatch.attend`)."""

    softcap: float

    def __new__(cls, softcap: float):
        obj = super().__new__(cls, "eager")
        obj.softcap = float(softcap)
        return obj


def with_softcap(backend: str, softcap: "float | None") -> str:
    """``backend``, or :class:`SoftcapEager` where ``softcap`` is set."""
    if softcap is None:
        return backend
    if not softcap > 0:
        raise ValueError(f"attention logit softcap {softcap!r}: allowed a positive number or None")
    return SoftcapEager(softcap)


def softcap_of(backend: str) -> "float | None":
    """The softcap a backend carries (:class:`SoftcapEager`), else None."""
    return getattr(backend, "softcap", None)


def capped(w: torch.Tensor, backend: str) -> torch.Tensor:
    """Scaled scores ``w`` with the backend's softcap applied (``cap *
    tanh(w / cap)``), unchanged without one."""
    cap = softcap_of(backend)
    return w if cap is None else torch.tanh(w / cap) * cap


def uses_cpu_paths(q: torch.Tensor, backend: str) -> bool:
    """True where the CPU code paths serve: tensors on CPU, or the eager backend."""
    return backend == "eager" or q.device.type == "cpu"


def flash_attn_module(backend: str):
    """The ``flash_attn`` package serving a ``flash_attention_2`` model's
    kernels (its ``flash_attn_func`` returns the log-sum-exp the merges
    need), or None: another backend, or flash-attn not importable (then SDPA
    serves, said once in the log).  The only decision for flash-attn (tests
    replace it)."""
    return _flash_attn() if backend == "flash_attention_2" else None


@functools.cache
def _flash_attn():
    try:
        import flash_attn
    except ImportError:
        log.info("flash-attn is not importable: mesa_viz kernels of flash_attention_2 models "
                 "use SDPA's fused kernels")
        return None
    log.info("flash-attn %s: mesa_viz kernels use flash_attn_func (with its log-sum-exp)",
             getattr(flash_attn, "__version__", "?"))
    return flash_attn


def _flash(fa, q, k, v, scale, causal=False):
    """``(out, lse)`` of flash-attn's ``flash_attn_func`` on ``[b, h, L, d]``
    tensors (GQA and, for ``causal``, bottom-right alignment built in)."""
    out, lse, _ = fa.flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                     softmax_scale=scale, causal=causal, return_attn_probs=True)
    return out.transpose(1, 2), lse


def few_rows(q: torch.Tensor, n_keys: int) -> bool:
    """On GPU, a call with few query rows (Mesa's residue classes: about
    ``last_chunk / stair_width`` rows each) parallelises badly in the fused SDPA
    kernels (one block per head); scores by matmul when they fit the budget."""
    return q.shape[2] <= 64 and 4 * q.shape[0] * q.shape[1] * q.shape[2] * n_keys <= SCORE_BUDGET


def block_size(q: torch.Tensor, n_keys: int, backend: str) -> int:
    """Query rows per call so the scores (eager: every head) or the mask
    (SDPA's fused kernels: one additive mask shared by the heads) stay within
    ``SCORE_BUDGET`` bytes."""
    b, h = q.shape[0], q.shape[1]
    per_row = 4 * n_keys * b * (h if backend == "eager" else 1)
    cap = CPU_BLOCK if backend in FUSED_BACKENDS and uses_cpu_paths(q, backend) else 8192
    return max(1, min(cap, SCORE_BUDGET // max(1, per_row)))


# -- one key set ------------------------------------------------------------------

def sdpa(q, k, v, mask, scale, backend="sdpa"):
    """Softmax attention, GQA-aware.  ``q [b,h,Lq,d]``, ``k, v [b,kvh,Lk,d|dv]``,
    ``mask [Lq, Lk]`` bool (True = visible) or None for full visibility."""
    if backend == "eager":
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        w = capped(torch.matmul(q, k.transpose(-1, -2)) * scale, backend)
        if mask is not None:
            w = w.masked_fill(~mask, float("-inf"))
        w = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(w, v)
    fa = None if mask is not None or uses_cpu_paths(q, backend) else flash_attn_module(backend)
    if fa is not None:
        return _flash(fa, q, k, v, scale)[0]
    return scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                        enable_gqa=q.shape[1] != k.shape[1])


def causal_sdpa(q, k, v, scale):
    """Causal attention with query ``x`` aligned to key ``x`` through SDPA's
    fused kernels (flash on CPU and CUDA), no mask tensor."""
    return scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                        enable_gqa=q.shape[1] != k.shape[1])


def causal_lower_right_sdpa(q, k, v, scale, backend="sdpa"):
    """Causal attention aligned at the bottom right through a fused kernel
    (GPU): query ``x`` of ``q [b, h, R, d]`` sees keys ``0..L-R+x`` of ``k, v
    [b, kv_h, L, d]``.  flash-attn's causal where it serves; else the queries
    are put behind ``L - R`` zero rows, so that the call is square and SDPA's
    plain ``is_causal`` (flash, GQA without key copies) serves it, and those
    rows' outputs are dropped: at most ``(L - R) / R`` more scores than the
    rows need (a half for Mesa's middle chunks at their default sizes), where
    torch's ``causal_lower_right`` bias failed on CUDA under GQA (torch 2.11,
    bfloat16: a mask of the wrong shape)."""
    fa = flash_attn_module(backend)
    if fa is not None:
        return _flash(fa, q, k, v, scale, causal=True)[0]
    R, L = q.shape[2], k.shape[2]
    if L > R:
        q = torch.cat((q.new_zeros(q.shape[:2] + (L - R, q.shape[3])), q), dim=2)
    return causal_sdpa(q, k, v, scale)[:, :, L - R:]


def attn_lse(q, k, v, mask, scale, backend, causal=False):
    """Attention and its log-sum-exp ``[b, h, Lq]`` (for merging key sets).

    ``mask [Lq, Lk]`` bool or None; ``causal`` aligns query ``x`` with key ``x``.
    """
    b, h, L, _ = q.shape
    rep = h // k.shape[1]
    cpu_flash = backend in FUSED_BACKENDS and uses_cpu_paths(q, backend)
    fa = None if cpu_flash or mask is not None else flash_attn_module(backend)
    if fa is not None:
        return _flash(fa, q, k, v, scale, causal)
    if causal and not cpu_flash:
        mask = torch.ones(L, k.shape[2], dtype=torch.bool, device=q.device).tril()
    if cpu_flash:
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
        return (out, lse) if mask is None else _unseen_rows(out, lse, mask.any(-1))
    # scores by matmul, GQA folded (the query heads of one KV head are rows)
    qf = q.reshape(b, k.shape[1], rep * L, q.shape[-1])
    w = capped(torch.matmul(qf, k.transpose(-1, -2)).float() * scale, backend)  # [b,kvh,rep*L,Lk]
    if mask is not None:
        w = w.view(b, k.shape[1], rep, L, -1).masked_fill(~mask, float("-inf")).view(w.shape)
    lse = torch.logsumexp(w, dim=-1)
    safe = torch.where(torch.isfinite(lse), lse, 0.0)           # rows that see no key: p = 0
    out = pv(torch.exp(w - safe[..., None]).to(v.dtype), v, split=q.device.type != "cpu")
    return out.reshape(b, h, L, -1), lse.reshape(b, h, L)


def _unseen_rows(out, lse, seen):
    """Rows that see no key (``seen [L]`` False): ``lse = -inf``, output 0."""
    if bool(seen.all()):
        return out, lse
    return out.masked_fill(~seen[:, None], 0.0), lse.masked_fill(~seen, float("-inf"))


def pv(p, v, split: bool, block: int = 4096):
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


def lse_parts(q, k, v, mask, scale, backend):
    """:func:`attn_lse` as a list of parts to merge, for a mask each of whose
    rows sees one interval of keys whose two ends never move left from row to
    row (every mask the kernels build).  The keys every row sees go through
    the kernel without a mask; only the two edges, at most a block wide, carry
    one."""
    first = last = None
    if mask is not None and mask.shape[0] > 1:
        first, last = _interval(mask[0]), _interval(mask[-1])
    if first is None or last is None or last[0] >= first[1]:
        return [attn_lse(q, k, v, mask, scale, backend)]
    (lo_f, hi_f), (lo_l, hi_l) = first, last
    return [attn_lse(q, k[:, :, a:b], v[:, :, a:b], mask[:, a:b] if masked else None,
                     scale, backend)
            for a, b, masked in ((lo_f, lo_l, True), (lo_l, hi_f, False), (hi_f, hi_l, True))
            if b > a]


def merge_lse(parts):
    """Combine ``(out, lse)`` of disjoint key sets into one softmax: its
    ``(out, lse)``.  A set a row cannot see has ``lse = -inf`` and weight 0
    (its ``out`` rows must be finite: :func:`attn_lse` gives zeros); a row that
    sees no set gets ``lse = -inf`` and zeros."""
    if len(parts) == 1:
        return parts[0]
    lse = torch.stack([p[1] for p in parts]).float()
    top = lse.max(0).values
    top = torch.where(torch.isfinite(top), top, 0.0)
    w = torch.exp(lse - top)                                # [parts, b, h, Lq]
    total = w.sum(0)
    w = (w / torch.where(total > 0, total, 1.0))[..., None]
    out = parts[0][0].float() * w[0]
    for (o, _), wi in zip(parts[1:], w[1:]):
        out.addcmul_(o.float(), wi)
    return out.to(parts[0][0].dtype), top + torch.log(total)


def merge(parts):
    """:func:`merge_lse`'s output alone."""
    return merge_lse(parts)[0]


def attend_lse(q, k, v, mask, scale, backend):
    """One key set's ``(out [b, h, R, d_v], lse [b, h, R])``: on CPU through
    :func:`lse_parts` (the CPU flash kernel, unmasked where every row of the
    block sees the keys); elsewhere scores by matmul in row chunks within
    ``SCORE_BUDGET``.  ``mask [R, L]`` as for :func:`lse_parts` (or None)."""
    if backend in FUSED_BACKENDS and uses_cpu_paths(q, backend):
        return merge_lse(lse_parts(q, k, v, mask, scale, backend))
    step = max(1, SCORE_BUDGET // (4 * q.shape[0] * q.shape[1] * max(1, k.shape[2])))
    parts = [attn_lse(q[:, :, a:a + step], k, v, None if mask is None else mask[a:a + step],
                      scale, backend) for a in range(0, q.shape[2], step)]
    return tuple(torch.cat(x, dim=2) for x in zip(*parts)) if len(parts) > 1 else parts[0]


# -- several key sets -----------------------------------------------------------------

def attend_sets(sets, scale, backend):
    """One softmax over disjoint key sets, each scored with its own rotation:
    ``sets`` of ``(q [b, h, R, d], k, v [b, kvh, L_s, d], mask [R, L_s] | None)``.

    CPU: each set scored separately (:func:`lse_parts`) and merged by
    log-sum-exp.  GPU: two sets and many query rows are concatenated along the
    head dimension (``[q_a, q_b] . [k_a, 0]`` and ``[q_a, q_b] . [0, k_b]``) for
    one fused SDPA call; otherwise (few rows, or more sets, whose concatenation
    would outgrow the fused kernels' head size) scores by matmul, in row chunks
    within ``SCORE_BUDGET``, merged by log-sum-exp.
    """
    sets = [x for x in sets if x[1] is not None and x[1].shape[2]]
    q0 = sets[0][0]
    if backend in FUSED_BACKENDS and uses_cpu_paths(q0, backend):
        return merge([p for x in sets for p in lse_parts(*x, scale, backend)])
    if len(sets) == 1:
        return sdpa(*sets[0], scale, backend)
    n_keys = sum(x[1].shape[2] for x in sets)
    if uses_cpu_paths(q0, backend) or len(sets) > 2 or few_rows(q0, n_keys):
        step = max(1, SCORE_BUDGET // (4 * q0.shape[0] * q0.shape[1] * n_keys))
        return torch.cat([merge([attn_lse(qx[:, :, a:a + step], kx, vx,
                                          None if mx is None else mx[a:a + step],
                                          scale, backend) for qx, kx, vx, mx in sets])
                          for a in range(0, q0.shape[2], step)], dim=2)
    n, d = len(sets), q0.shape[-1]
    q = torch.cat([x[0] for x in sets], dim=-1)
    k = torch.cat([pad(x[1], (d * t, d * (n - 1 - t))) for t, x in enumerate(sets)], dim=2)
    mask = torch.cat([x[3] if x[3] is not None else torch.ones(
        q0.shape[2], x[1].shape[2], dtype=torch.bool, device=q0.device) for x in sets], dim=1)
    return sdpa(q, k, torch.cat([x[2] for x in sets], dim=2), mask, scale, backend)


def causal_rows_cpu(q, k, v, start, scale, sub=256):
    """Causal attention of the queries ``q [B, h, R, d]`` at key rows
    ``start..start+R-1`` of ``k, v [B, kv_h, start + R, d]`` (query ``x`` sees
    keys ``0..start+x``) in sub-blocks of ``sub`` rows: all earlier keys without
    a mask, the diagonal block causally, merged by log-sum-exp.  The CPU flash
    kernel works in 512-key blocks, so one causal call over ``R`` keys would
    compute about a third more than needed; this computes at most ``sub / 2``
    extra keys per row.  Returns ``[B, h, R, d_v]``."""
    out = []
    for a in range(0, q.shape[2], sub):
        e = min(q.shape[2], a + sub)
        qa = q[:, :, a:e].contiguous()
        ka, ke = start + a, start + e
        parts = [attn_lse(qa, k[:, :, ka:ke], v[:, :, ka:ke], None, scale, "sdpa", causal=True)]
        if ka:
            parts.insert(0, attn_lse(qa, k[:, :, :ka], v[:, :, :ka], None, scale, "sdpa"))
        out.append(merge(parts))
    return torch.cat(out, dim=2)
