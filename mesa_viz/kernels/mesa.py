"""Mesa's kernel (``methods/mesa.py``): a forward's queries split into the first
chunk (causal), whole middle chunks (one batch, each behind the first chunk and
the ``chunk_overlap`` tokens before it) and last-chunk rows (Stair PE, per query
through :mod:`.stair`, or anchored at the chunk start)."""

from __future__ import annotations

import itertools
import math

import torch

from ..methods.mesa import Mesa
from . import sets
from .near_far import near_far
from .origin import origin
from .registry import kernel
from .rope import arange, rotate
from .rules import Rules
from .stair import stair_position, stair_rows

__all__ = ["mesa", "mesa_rules", "mesa_is_origin", "MESA_KV_COPIES"]


def _mesa_blocked_rows(method: Mesa, seq_len: int) -> int:
    """No rows against masked blocks of every key: the middle chunks see
    ``first + chunk_overlap + C`` keys through the fused causal kernel, the
    last chunk's near masks span ``stair_start`` plus a block and its deep far
    keys go unmasked (GPU: matmul scores within
    ``sets.SCORE_BUDGET``, counted by the memory estimate)."""
    return 0


#: The last piece's O(n) copies of one layer: the far keys and their values grouped
#: (:func:`_far_groups`) and transients (the cache is presized by ``apply``).  A piece of
#: ``p <= T / 2`` middle-chunk tokens (the default pieces) holds its keys and values ``(F +
#: chunk_overlap + C) / C`` times (each chunk's window behind the first chunk): ``T (F + k +
#: C) / C`` KV widths, within ``3 n`` (``n > T``) while ``F + chunk_overlap <= 2 C`` (the
#: defaults: ``F = C / 2``).
MESA_KV_COPIES = 3


def mesa_rules(method: Mesa, i0: int) -> "Rules | None":
    """Rules of a forward of last-chunk rows (a prefill's last piece, or a
    generated token): per-query Stair PE from the last chunk's start (no log
    scaling); None for other forwards (first and middle chunks) and the
    anchored stair, which run the torch code below.  ``chunk_overlap`` changes
    only the middle chunks, so the rules hold with it."""
    plan = method.plan()
    if len(plan.chunks) == 1 or i0 < plan.last_start or method.stair != "per-query" \
            or method.log_scaling or method.stair_from() != plan.last_start:
        return None
    return Rules(near=method.stair_start,
                 stair=(plan.last_start, method.stair_start, method.stair_width))


def mesa_is_origin(method: Mesa, kv_len: int) -> bool:
    """A prompt shorter than ``split_from`` is one chunk: Origin's layout, up to
    the stair rows of ``decode_stair`` (:meth:`Mesa.stair_from`)."""
    r0 = method.stair_from()
    return len(method.plan().chunks) == 1 and (r0 is None or kv_len <= r0)


@kernel(Mesa, rules=mesa_rules, linear=mesa_is_origin, blocked_rows=_mesa_blocked_rows,
        kv_copies=MESA_KV_COPIES)
def mesa(method, q, k, v, i0, rope, scale, backend):
    """Origin up to ``train_length``; past it, a forward's queries (the whole
    prompt, one piece of :meth:`Mesa.prefill_pieces`, or generated tokens)
    split into the first chunk (causal), whole middle chunks (one batch) and
    last-chunk rows (Stair PE)."""
    plan = method.plan()
    end, s, F = i0 + q.shape[2], plan.last_start, method.first_chunk
    _check_piece(plan, i0, end)
    parts = []
    if i0 == 0 and len(plan.chunks) > 1:
        parts.append(origin(method, q[:, :, :F], k[:, :, :F], v[:, :, :F], 0, rope, scale,
                            backend))
    middle = [c for c in plan.middle if i0 <= c[0] and c[1] <= end]
    if middle:
        parts.append(_mesa_middle(method, q, k, v, i0, middle, rope, scale, backend))
    r0 = method.stair_from()
    a, b = max(i0, s), end if r0 is None else min(end, max(i0, s, r0))
    if b > a:                # last-chunk rows whose cache stays within train_length
        parts.append(origin(method, q[:, :, a - i0:b - i0], k[:, :, :b], v[:, :, :b], a, rope,
                            scale, backend))
    if end > b:
        parts.append(_mesa_last(method, q[:, :, b - i0:], k, v, b, rope, scale, backend))
    return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


def _check_piece(plan, i0: int, end: int) -> None:
    """A forward of tokens ``i0..end-1`` must start and end at chunk boundaries
    of the plan (anywhere from the last chunk on): the chunks' layout is fixed
    by the whole prompt (``decode == "prefill-plan"``)."""
    s = plan.last_start
    starts = {a for a, _ in plan.chunks}
    if (i0 in starts or i0 > s) and (end in starts or end > s):
        return
    raise ValueError(
        f"a Mesa forward of tokens {i0}..{end - 1} does not start and end at chunk "
        f"boundaries of its prefill plan {[list(c) for c in plan.chunks]}: run the prompt in "
        "one forward from position 0 (or in the pieces of Mesa.prefill_pieces)")


def _log_scale(q, method: Mesa, i):
    if not method.log_scaling:
        return q
    f = torch.clamp(torch.log(i.to(torch.float32) + 1) / math.log(method.train_length), min=1)
    return q * f.to(q.dtype)[:, None]


def _mesa_middle(method: Mesa, q, k, v, i0, middle, rope, scale, backend):
    """Whole middle chunks ``middle`` (consecutive ``(start, stop)`` pairs) of
    the queries from ``i0``, in runs of chunks with the same number of overlap
    tokens ``k' = min(chunk_overlap, start - first)`` (:class:`Mesa`: all of
    them without an overlap; else the first chunks alone, then the rest), each
    run one batch (:func:`_middle_batch`).  Returns ``[b, h, chunks * C, d_v]``."""
    F, K = method.first_chunk, method.chunk_overlap
    runs = itertools.groupby(middle, key=lambda c: min(K, c[0] - F))
    parts = [_middle_batch(method, q, k, v, i0, list(run), back, rope, scale, backend)
             for back, run in runs]
    return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


def _windows(x, lo, a, nc, C, back):
    """Rows ``a - back..a + nc*C - 1`` of ``x [bs, H, L, d]`` (which starts at
    position ``lo``) as ``nc`` windows of ``back + C`` rows stepping by ``C``:
    ``[bs * nc, H, back + C, d]``."""
    x = x[:, :, a - back - lo:a + nc * C - lo].unfold(2, back + C, C)  # [bs, H, nc, d, back+C]
    return x.permute(0, 2, 1, 4, 3).reshape(-1, x.shape[1], back + C, x.shape[3])


def _middle_batch(method: Mesa, q, k, v, i0, middle, back, rope, scale, backend):
    """Middle chunks ``middle`` of ``back`` overlap tokens each, as one batch
    ``[b * chunks, h, C, d]``: each chunk's queries see the first chunk at
    ``0..F-1``, the ``back`` tokens before the chunk at ``F..F+back-1`` and
    themselves causally from ``F + back``.  Every chunk's keys (with the
    ``back`` before it) are put behind the first chunk's (``[b * chunks, kv_h,
    F + back + C, d]``), so each chunk is one causal attention aligned at the
    bottom right: CPU in 256-row sub-blocks (:func:`.sets.causal_rows_cpu`),
    GPU SDPA with a lower-right causal bias, eager a ``[C, F + back + C]``
    mask.  No query of the first chunk is recomputed.  Returns ``[b, h,
    chunks * C, d_v]``."""
    F, C, nc = method.first_chunk, method.chunk_size, len(middle)
    a, bs, dev = middle[0][0], q.shape[0], q.device
    S, W = F + back, back + C                      # keys before the chunk's queries; window

    def behind_first(head, x):  # [bs, H, F, d], [bs*nc, H, W, d] -> [bs*nc, H, F+W, d]
        return torch.cat((head.repeat_interleave(nc, dim=0), x), dim=2)

    qc = rotate(_windows(q, i0, a, nc, C, 0), rope, arange(S, S + C, dev), ("lin", S, S + C))
    kk = behind_first(rotate(k[:, :, :F], rope, arange(0, F, dev), ("lin", 0, F)),
                      rotate(_windows(k, 0, a, nc, C, back), rope, arange(F, F + W, dev),
                             ("lin", F, F + W)))
    vv = behind_first(v[:, :, :F], _windows(v, 0, a, nc, C, back))
    if backend in sets.FUSED_BACKENDS and sets.uses_cpu_paths(q, backend):
        o = sets.causal_rows_cpu(qc, kk, vv, S, scale)
    elif backend in sets.FUSED_BACKENDS:
        o = sets.causal_lower_right_sdpa(qc, kk, vv, scale, backend)
    else:
        mask = torch.ones(F + W, F + W, dtype=torch.bool, device=dev).tril()[S:]
        g = max(1, sets.block_size(q, F + W, backend) // C)
        o = torch.cat([sets.sdpa(qc[c:c + g], kk[c:c + g], vv[c:c + g], mask, scale, backend)
                       for c in range(0, bs * nc, g)], dim=0)
    o = o.reshape(bs, nc, o.shape[1], C, -1).transpose(1, 2)
    return o.reshape(bs, o.shape[1], nc * C, -1)


def _mesa_last(method: Mesa, q, k, v, i0, rope, scale, backend):
    """Last-chunk (and generated) queries ``i0..`` over all keys with Stair PE:
    per query (:func:`.stair.stair_rows`) or anchored at the chunk start (keys before
    it at ``P(s - j)``, plus the query's offset)."""
    s, N, E = method.plan().last_start, method.stair_start, method.stair_width
    q = _log_scale(q, method, arange(i0, i0 + q.shape[2], q.device))
    if method.stair == "anchored":       # token x at s - P(s - x); true from max(s, anchor)
        b = min(k.shape[2], max(s, s - N + 1))
        return near_far(
            q, k, v, i0, rope, scale, backend, near=k.shape[2], near_floor=b,
            far_keys=lambda lo, hi: (0, b),
            far_q_pos=lambda i: -stair_position(s - i, N, E),
            far_k_pos=lambda j: -stair_position(s - j, N, E),
            far_visible=lambda i, j: (j < b) & (j <= i), rule=("anchored", s, N, E, b))
    return stair_rows(q, k, v, i0, rope, scale, backend, s, N, E)
