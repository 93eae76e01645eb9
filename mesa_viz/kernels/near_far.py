"""Near and far key sets: the torch path of every method with near/far rules.

A query's keys split into a near set (``0 <= i - j < near``, true positions)
and a far set (the method's rule); both are scored in blocks of query rows and
merged into one softmax (:func:`.sets.attend_sets`).  :func:`by_rules` runs it
from the method's declared :class:`~.rules.Rules`, the same ones the Triton
launch reads; Mesa's anchored stair (a rule that is not affine-floor) calls
:func:`near_far` with its own positions.
"""

from __future__ import annotations

from typing import Callable

import torch

from . import sets
from .registry import kernel_for
from .decode_memo import same
from .flash_decoding import flash_decode, uses_flash_decoding
from .rope import arange, rotate
from .rules import Rules, far_key_position, far_keys, far_query_position, far_visible

__all__ = ["near_far", "by_rules", "rules_kernel", "step_with_memo", "has_memo"]


def near_far(q, k, v, i0, rope, scale, backend, *, near: int,
             far_keys: Callable[[int, int], tuple[int, int]],
             far_q_pos: Callable[[torch.Tensor], torch.Tensor],
             far_k_pos: Callable[[torch.Tensor], torch.Tensor],
             far_visible: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             near_floor: int = 0, rule=None):
    """Near keys ``0 <= i - j < near``, ``j >= near_floor``, at true positions;
    far keys ``j`` in ``far_keys(i_lo, i_hi) -> (j0, j1)`` rotated to
    ``far_k_pos(j)``, queries to ``far_q_pos(i)``, visible where
    ``far_visible(i, j)``.  ``q [b, h, q_len, d]`` at ``i0..``, ``k, v [b,
    kv_h, kv_len, d]``; returns ``[b, h, q_len, d_v]``.

    ``rule`` (hashable, naming these positions within a sequence) lets a
    decode step keep its rotated keys in the application's decode memo
    (:func:`step_with_memo`); it promises that one query's far keys are
    ``0..j1-1`` of ``far_keys(i, i)``, all visible."""
    Lq, Lk, dev = q.shape[2], k.shape[2], q.device
    if Lq == 1 and rule is not None and has_memo(rope):
        return step_with_memo(q, k, v, i0, rope, scale, backend, rule, far_q_pos, far_k_pos,
                              far_keys(i0, i0)[1], max(near_floor, i0 - near + 1))
    j_all = arange(0, Lk, dev)
    k_near = rotate(k, rope, j_all, ("lin", 0, Lk))
    f_max = far_keys(i0, i0 + Lq - 1)[1]                   # far keys start at 0: rotate once
    k_far = rotate(k[:, :, :f_max], rope, far_k_pos(j_all[:f_max]), ("far-k", f_max))
    out = []
    B = sets.block_size(q, 2 * Lk, backend)
    for a in range(0, Lq, B):
        b = min(Lq, a + B)
        i = arange(i0 + a, i0 + b, dev)
        qa = rotate(q[:, :, a:b], rope, i, ("lin", i0 + a, i0 + b))
        n0, n1 = max(near_floor, i0 + a - near + 1), i0 + b
        jn = j_all[n0:n1]
        ma = (jn[None, :] <= i[:, None]) & (i[:, None] - jn[None, :] < near)
        key_sets = [(qa, k_near[:, :, n0:n1], v[:, :, n0:n1], ma)]
        f0, f1 = far_keys(i0 + a, i0 + b - 1)
        if f1 > f0:
            jf = j_all[f0:f1]
            qb = rotate(q[:, :, a:b], rope, far_q_pos(i), ("far-q", i0 + a, i0 + b))
            mb = far_visible(i[:, None], jf[None, :]).expand(len(i), len(jf))
            key_sets.append((qb, k_far[:, :, f0:f1], v[:, :, f0:f1], mb))
        out.append(sets.attend_sets(key_sets, scale, backend))
    return torch.cat(out, dim=2)


def has_memo(rope) -> bool:
    """Whether ``rope`` carries the application's decode memo and the layer."""
    return getattr(rope, "memo", None) is not None and getattr(rope, "layer", None) is not None


def step_with_memo(q, k, v, i, rope, scale, backend, rule, far_q_pos, far_k_pos, f1: int,
                   n0: int):
    """One query at ``i`` (a decode step) over keys kept rotated between steps
    (:meth:`DecodeMemo.split_rotated`: keys before ``f1`` at ``far_k_pos(j)``,
    the others at ``j``; each step rotates its new key and the key that
    became far): far keys ``0..f1-1`` against the query at ``far_q_pos(i)``,
    near keys ``n0..i`` against it at ``i``, one softmax.  One product over
    the keys, as Origin's step (on the CPU the two sets through
    :func:`.flash_decoding.flash_decode`).  ``q [b, h, 1, d]``, ``k, v [b, kv_h, i+1,
    d]``; returns ``[b, h, 1, d_v]``."""
    bsz, h, _, d = q.shape
    kvh, L = k.shape[1], i + 1
    rep, bk = h // kvh, bsz * kvh
    keys = rope.memo.split_rotated(rope.layer, rule, k, f1, L, same, far_k_pos, rope)
    pos = rope.table(("near-far-one-q", rule, i), lambda: torch.cat((
        arange(i, i + 1, q.device).float(), far_q_pos(arange(i, i + 1, q.device)).float())))
    q2 = rotate(q.expand(bsz, h, 2, d), rope, pos, ("near-far-one-q", rule, i))
    if uses_flash_decoding(q, v, backend):
        far = [(q2[:, :, 1:], keys[:, :, :f1], v[:, :, :f1], None)] if f1 else []
        return flash_decode(far + [(q2[:, :, :1], keys[:, :, n0:L], v[:, :, n0:L], None)],
                            scale)
    q2 = q2.reshape(bk, rep, 2, d)
    scores = [torch.bmm(q2[:, :, 1], keys[:, :, :f1].reshape(bk, f1, d).transpose(1, 2))] \
        if f1 else []
    scores.append(torch.bmm(q2[:, :, 0], keys[:, :, n0:L].reshape(bk, L - n0, d).transpose(1, 2)))
    logits = sets.capped((torch.cat(scores, dim=-1) if len(scores) > 1 else scores[0])
                         .view(bsz, kvh, rep, -1).float().mul_(scale), backend)
    p = torch.softmax(logits, dim=-1).to(v.dtype)
    split_k = not sets.uses_cpu_paths(q, backend)
    if f1 == n0 or not f1:                                # consecutive keys 0..i (or n0..i)
        out = sets.pv(p, v[:, :, n0 - f1:L], split=split_k)
    else:                                                 # keys f1..n0-1 hidden (sinks)
        out = sets.pv(p[..., :f1], v[:, :, :f1], split=split_k) \
            + sets.pv(p[..., f1:], v[:, :, n0:L], split=split_k)
    return out.reshape(bsz, h, 1, -1)


def by_rules(rules: Rules, q, k, v, i0, rope, scale, backend):
    """:func:`near_far` with the positions of the affine-floor ``rules``."""
    return near_far(q, k, v, i0, rope, scale, backend, near=rules.near,
                    far_keys=lambda lo, hi: far_keys(rules, lo, hi),
                    far_q_pos=lambda i: far_query_position(rules, i),
                    far_k_pos=lambda j: far_key_position(rules, j),
                    far_visible=lambda i, j: far_visible(rules, i, j), rule=("rules", rules))


def rules_kernel(method, q, k, v, i0, rope, scale, backend):
    """The torch kernel of a method whose registry entry declares affine-floor
    ``rules``: :func:`by_rules` with them (register it with ``@kernel(cls,
    rules=...)``)."""
    return by_rules(kernel_for(method).rules(method, i0), q, k, v, i0, rope, scale, backend)
