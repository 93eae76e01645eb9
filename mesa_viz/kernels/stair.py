"""Stair PE (``methods/stair.py``): the ``stair`` method and the rows of Mesa's last
chunk, one piece of code, :func:`stair_rows`, over a :class:`StairGeometry`,
whose docstring holds the residue-class factorisation.  Its rules
(``Rules.stair``) serve the Triton launch on CUDA."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..methods.stair import Stair
from . import sets
from .decode_memo import same
from .flash_decoding import flash_decode, uses_flash_decoding
from .origin import softmax_pv
from .registry import kernel
from .rope import arange, rotate
from .rules import Rules

__all__ = ["StairGeometry", "stair_rows", "stair_position", "stair_rules", "stair"]


def stair_rules(method: Stair, last_start: int = 0) -> Rules:
    """Per-query Stair PE from ``last_start`` (0 for the ``stair`` method)."""
    return Rules(near=method.stair_start,
                 stair=(last_start, method.stair_start, method.stair_width))


def stair_position(t, stair_start, stair_width):
    """``methods.stair_position`` on integer tensors."""
    return torch.where(t < stair_start, t,
                       stair_start + torch.div(t - stair_start, stair_width,
                                               rounding_mode="floor"))


@dataclass(frozen=True)
class StairGeometry:
    """Per-query Stair PE for the queries from ``last_start`` on, over every key.

    Symbols of METHOD-NOTES.md: ``s = last_start`` (Mesa's last-chunk start; 0
    for the ``stair`` method), ``N = stair_start``, ``E = stair_width``, and
    ``P(t) = t`` for ``t < N``, ``N + floor((t - N) / E)`` beyond.

    Residue classes.  Write a query ``i = s + r + E*m`` (``0 <= r < E``: the
    class of its offset ``i - s``; ``m``: its stair step) and a far key ``j``
    (``i - j >= N``) as ``s - N - j = E*a_j + b_j`` (``0 <= b_j < E``).  Then::

        P(i - j) = N + floor((i - j - N) / E) = N + m + a_j + [b_j >= E - r]

    so within class ``r`` the stair position is the difference of one query
    position, ``m``, and one key position, ``-(N + a_j + [b_j >= E - r])``
    (:meth:`key_position`): RoPE of the query at ``m`` and of the key there
    scores exactly ``P(i - j)``, for ``E`` rotations of the far keys instead of
    one per query.  Near keys (``i - j < N``) keep their linear positions.

    Key groups.  Read the same identity by the key: within group ``b`` (the
    far keys with ``b_j = b``, every ``E``-th key) the stair position is the
    difference of the key position ``-(N + a_j)`` and the query position ``m +
    [r >= E - b]``.  So the far keys are rotated once, grouped by ``b_j``
    (:func:`_far_groups`), and each group is scored for all the rows of a block
    at once, with the queries rotated to that group's positions (two values per
    query, ``m`` or ``m + 1``): ``E`` calls of every row against a ``1/E`` of the
    keys, instead of ``E`` classes of ``1/E`` of the rows against all keys (which
    the CPU's flash kernel runs at half the rate: few rows over many keys).
    Near keys (``i - j < N``) keep their linear positions.

    ``deep = D``: keys ``0..D-1`` are far for every query of a call from
    ``i0`` (``D = max(0, i0 - N + 1)``), never near.  A single query (a decode
    step) needs no groups: far keys with the same step form runs of ``E``, and
    the query is rotated to each step instead (:func:`_stair_one`).
    """

    last_start: int
    stair_start: int
    stair_width: int
    deep: int = 0

    @classmethod
    def for_queries(cls, i0: int, last_start: int, stair_start: int, stair_width: int):
        """The geometry of a call whose queries start at ``i0 >= last_start``."""
        return cls(last_start, stair_start, stair_width, max(0, i0 - stair_start + 1))

    def step(self, i: torch.Tensor) -> torch.Tensor:
        """``m`` of queries ``i``."""
        return torch.div(i - self.last_start, self.stair_width, rounding_mode="floor")

    def residue(self, i: int) -> int:
        """``r`` of query ``i``."""
        return (i - self.last_start) % self.stair_width

    def key_position(self, j: torch.Tensor, r: int) -> torch.Tensor:
        """``-(N + a_j + [b_j >= E - r])`` of far keys ``j`` for class ``r``."""
        N = self.stair_start
        return -(N + torch.div(self.last_start + r - j - N, self.stair_width,
                               rounding_mode="floor"))


def stair_rows(q, k, v, i0, rope, scale, backend, last_start, stair_start, stair_width):
    """Queries ``i0..`` (all ``>= last_start``) over keys ``0..i`` with per-query
    Stair PE (:class:`StairGeometry`).  ``q [b, h, q_len, d]``, ``k, v [b,
    kv_h, i0 + q_len, d]``; returns ``[b, h, q_len, d_v]``.

    In blocks of rows, one softmax over several key sets
    (:func:`.sets.attend_sets`): the near keys (``i - j < N``) at
    their own positions, and the far keys group by group
    (:func:`_far_groups`), each with the queries rotated to its positions."""
    if q.shape[2] == 1:                                   # a generated token
        return _stair_one(q, k, v, i0, rope, scale, backend, last_start, stair_start,
                          stair_width)
    geo = StairGeometry.for_queries(i0, last_start, stair_start, stair_width)
    pos = arange(i0, k.shape[2], q.device)
    n_far = k.shape[2] - stair_start                      # far keys of the last query
    near = _near_keys(q, k, pos, rope, geo) if stair_start else None
    far = _far_groups(k, v, rope, geo, n_far) if n_far > 0 else None
    B = sets.block_size(q, k.shape[2], backend)
    out = [sets.attend_sets(_block_sets(q, v, pos[a:a + B], a, rope, geo, near, far),
                            scale, backend)
           for a in range(0, len(pos), B)]
    return torch.cat(out, dim=2) if len(out) > 1 else out[0]


def _near_keys(q, k, pos, rope, geo: StairGeometry):
    """``(q, k)`` at linear positions: the queries at ``pos`` and the keys
    from ``deep`` on (the only ones any of them sees as near)."""
    D, Lk, i0 = geo.deep, k.shape[2], int(pos[0])
    return (rotate(q, rope, pos, ("lin", i0, Lk)),
            rotate(k[:, :, D:], rope, arange(D, Lk, q.device), ("lin", D, Lk)))


def _far_groups(k, v, rope, geo: StairGeometry, n_far: int):
    """The far keys ``0..n_far-1`` of a call grouped by ``b_j``
    (:class:`StairGeometry`), each group in key order and rotated once to
    ``-(N + a_j)``: ``(keys, values, groups)``, ``groups[b] = (lo, j)`` the
    group's first row in ``keys`` and its key positions ``j``.  Group ``b``
    holds ``j = c, c + E, ...`` with ``c = (s - N - b) mod E``: one strided
    slice each, copied (and rotated) straight into its place."""
    E = geo.stair_width
    keys = k.new_empty(k.shape[:2] + (n_far, k.shape[-1]))
    values = v.new_empty(v.shape[:2] + (n_far, v.shape[-1]))
    groups, lo = [], 0
    for b in range(E):
        c = (geo.last_start - geo.stair_start - b) % E
        j = torch.arange(c, max(c, n_far), E, device=k.device)
        hi = lo + len(j)
        rotate(k[:, :, c:n_far:E], rope, geo.key_position(j, 0),
               ("far", n_far, geo.last_start, geo.stair_start, E, b), out=keys[:, :, lo:hi])
        values[:, :, lo:hi] = v[:, :, c:n_far:E]
        groups.append((lo, j))
        lo = hi
    return keys, values, groups


def _block_sets(q, v, ib, a, rope, geo: StairGeometry, near, far):
    """The key sets of the query rows ``a..`` at positions ``ib`` for
    :func:`.sets.attend_sets`: ``(q, k, v, mask)`` of the near keys
    they see, then of each far group's keys that the block's last row sees (a
    prefix of the group): those the first row sees too without a mask, the
    rest with ``mask [rows, keys]``."""
    N, E, D, dev = geo.stair_start, geo.stair_width, geo.deep, q.device
    rows, i_last = slice(a, a + len(ib)), int(ib[-1])
    out = []
    if near is not None:
        n0, n1 = max(D, int(ib[0]) - N + 1), i_last + 1
        jn = arange(n0, n1, dev)
        mask = (jn[None, :] <= ib[:, None]) & (ib[:, None] - jn[None, :] < N)
        out.append((near[0][:, :, rows], near[1][:, :, n0 - D:n1 - D], v[:, :, n0:n1], mask))
    if far is None:
        return out
    keys, values, groups = far
    m, r = geo.step(ib), torch.remainder(ib - geo.last_start, E)
    for b, (lo, j) in enumerate(groups):
        n0, n = (int(x) for x in torch.searchsorted(j, ib[[0, -1]] - N, right=True))
        if n == 0:                                        # j <= i - N: none for the last row
            continue
        qb = rotate(q[:, :, rows], rope, m + (r >= E - b).to(m.dtype),
                    ("stair-q", int(ib[0]), len(ib), b))
        if n0:
            out.append((qb, keys[:, :, lo:lo + n0], values[:, :, lo:lo + n0], None))
        if n > n0:
            out.append((qb, keys[:, :, lo + n0:lo + n], values[:, :, lo + n0:lo + n],
                        j[None, n0:n] <= ib[:, None] - N))
    return out


def _stair_one(q, k, v, i, rope, scale, backend, last_start, stair_start, stair_width):
    """One query at ``i`` over keys ``0..i`` with per-query Stair PE: with the
    application's decode memo, :func:`_stair_one_memo`; alone, without
    rotating the far keys (:func:`_stair_runs`)."""
    if getattr(rope, "memo", None) is not None and getattr(rope, "layer", None) is not None:
        return _stair_one_memo(q, k, v, i, rope, scale, backend,
                               StairGeometry(last_start, stair_start, stair_width))
    return _stair_runs(q, k, v, i, rope, scale, backend, stair_start, stair_width)


def _stair_one_memo(q, k, v, i, rope, scale, backend, geo: StairGeometry):
    """One query at ``i`` (class ``r``, step ``m``) over keys kept rotated
    between steps (each step rotates only its new key and the key that left
    the near window): far keys at ``-(N + a_j)``, with their values, in groups
    by ``b_j`` (:meth:`DecodeMemo.grouped_rotated`, :class:`StairGeometry`),
    near keys at ``j``.  Groups ``b < E - r`` are scored against the query at
    ``m``, the others at ``m + 1``, near keys at ``i``: one product over the
    keys and one over the values, as Origin's step, and one softmax (on the
    CPU the three sets through :func:`.flash_decoding.flash_decode`).
    ``q [b, h, 1, d]``, ``k, v [b, kv_h, i+1, d]``; returns ``[b, h, 1, d_v]``."""
    N, E, s = geo.stair_start, geo.stair_width, geo.last_start
    bsz, h, _, d = q.shape
    kvh, L = k.shape[1], i + 1
    rep, n_far, bk = h // kvh, max(0, i - N + 1), bsz * kvh
    m, split = (i - s) // E, E - geo.residue(i)
    pos = rope.table(("stair-one-q", i), lambda: torch.tensor([i, m, m + 1], device=q.device))
    q3 = rotate(q.expand(bsz, h, 3, d), rope, pos, ("stair-one-q", i))     # [b, h, 3, d]
    near = rope.memo.rotated(rope.layer, ("stair-near", s, N, E), k, n_far, L, same, rope)
    far = rope.memo.grouped_rotated(rope.layer, ("stair-far", s, N, E), k, v, n_far, E,
                                    lambda j: (s - N - j) % E,
                                    lambda j: geo.key_position(j, 0), rope) if n_far else None
    if uses_flash_decoding(q, v, backend):
        return flash_decode(_step_sets(q3, near, v[:, :, n_far:L], far, split), scale)
    q3, scores = q3.reshape(bk, rep, 3, d), []
    if n_far:
        groups = far.keys.reshape(bk, E, far.cap, d)
        for qi, g in ((1, groups[:, :split]), (2, groups[:, split:])):
            if g.shape[1]:
                scores.append(torch.bmm(q3[:, :, qi], g.reshape(bk, -1, d).transpose(1, 2)))
    scores.append(torch.bmm(q3[:, :, 0], near.reshape(bk, L - n_far, d).transpose(1, 2)))
    logits = sets.capped((torch.cat(scores, dim=-1) if len(scores) > 1 else scores[0])
                         .view(bsz, kvh, rep, -1).float().mul_(scale), backend)
    if not n_far:
        return softmax_pv([logits], v, 1.0, q, backend)
    G = E * far.cap                                       # rows past a group's keys hidden
    logits[..., :G] += far.hidden
    p = torch.softmax(logits, dim=-1).to(v.dtype)
    split_k = not sets.uses_cpu_paths(q, backend)
    out = sets.pv(p[..., :G], far.values.view(bsz, kvh, G, -1), split=split_k) \
        + sets.pv(p[..., G:], v[:, :, n_far:L], split=split_k)
    return out.reshape(bsz, h, 1, -1)


def _step_sets(q3, near, near_values, far, split: int) -> list:
    """The key sets of :func:`_stair_one_memo` for :func:`.flash_decoding.flash_decode`:
    the far groups ``b < split`` with the query at ``m`` (``q3[:, :, 1]``), the
    others at ``m + 1`` (``q3[:, :, 2]``), each flattened with its hidden rows,
    and the near keys with the query at ``i`` (``q3[:, :, 0]``)."""
    out = []
    if far is not None:
        cap, E = far.cap, far.keys.shape[2]
        for qi, a, b in ((1, 0, split), (2, split, E)):
            if b > a:
                out.append((q3[:, :, qi:qi + 1], far.keys[:, :, a:b].flatten(2, 3),
                            far.values[:, :, a:b].flatten(2, 3), far.hidden[a * cap:b * cap]))
    return out + [(q3[:, :, :1], near, near_values, None)]


def _stair_runs(q, k, v, i, rope, scale, backend, stair_start, stair_width):
    """One query at ``i`` over keys ``0..i`` with per-query Stair PE, without
    rotating the far keys.  Far keys with the same step ``P(i - j) = N + g``
    form runs of ``E`` (a shorter run first), so the query is rotated to each
    step instead (``[b, h, G, d]``) and every run is scored against its own
    copy; only the ``N`` near keys are rotated.  A decode step thus reads the
    cache once, in place.

    ``q [b, h, 1, d]``, ``k, v [b, kv_h, i+1, d]``; returns ``[b, h, 1, d_v]``.
    """
    N, E = stair_start, stair_width
    bsz, h, _, d = q.shape
    kvh, dev = k.shape[1], q.device
    rep, n_far = h // kvh, max(0, i - N + 1)              # far keys 0..i-N
    runs, short = divmod(n_far, E)                        # full runs after a short one
    q_near = rotate(q, rope, arange(i, i + 1, dev)).reshape(bsz, kvh, rep, d)
    k_near = rotate(k[:, :, n_far:], rope, arange(n_far, i + 1, dev))
    scores = [torch.matmul(q_near, k_near.transpose(-1, -2))]          # [b, kvh, rep, i+1-f]
    if n_far:
        steps = N + torch.arange(runs, -1, -1, device=dev)  # the short run's step, then run by run
        qs = rotate(q.expand(bsz, h, runs + 1, d), rope, steps).reshape(bsz, kvh, rep, runs + 1, d)
        if runs:
            k_runs = k[:, :, short:n_far].reshape(bsz, kvh, runs, E, d)
            s_runs = torch.matmul(qs[:, :, :, 1:].transpose(2, 3), k_runs.transpose(-1, -2))
            scores.insert(0, s_runs.transpose(2, 3).reshape(bsz, kvh, rep, runs * E))
        if short:
            scores.insert(0, torch.matmul(qs[:, :, :, 0], k[:, :, :short].transpose(-1, -2)))
    return softmax_pv(scores, v, scale, q, backend)


@kernel(Stair, rules=lambda m, i0: stair_rules(m),
        linear=lambda m, kv_len: kv_len <= m.stair_start)
def stair(method, q, k, v, i0, rope, scale, backend):
    """Stair PE over the whole causal matrix: Mesa's last-chunk rows with the
    last chunk starting at 0."""
    return stair_rows(q, k, v, i0, rope, scale, backend, 0, method.stair_start,
                      method.stair_width)
