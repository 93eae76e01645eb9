"""The decode memo: keys rotated at earlier decode steps, kept per layer and rule,
so a step rotates only the keys new to it.

Whether a step may use what it kept without checking is one named contract,
:class:`CacheState`: what the KV cache promises at the start of a forward
(its length, and whether it keeps the keys it holds as written).  The runtime
reads it off the cache (``mesa_viz.runtime.cache.cache_state``) and hands it
to :meth:`DecodeMemo.forward_starts`; nothing else decides it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .rope import Rope, RopeTables, arange, rotate

__all__ = ["CacheState", "DecodeMemo", "GroupedKeys", "memo_keys", "same", "GROUP_SLACK"]

#: Rows a group of :meth:`DecodeMemo.grouped_rotated` keeps free past its keys when it
#: grows.  A step scores every row (the free ones hidden), so free rows are wasted work:
#: a fixed few (one regrowth, a copy of the groups, every ``GROUP_SLACK * groups`` steps)
#: instead of an eighth of the keys (12.5 % more far keys scored right after a prefill).
GROUP_SLACK = 32


@dataclass(frozen=True)
class CacheState:
    """What a KV cache promises the decode memo when a forward starts.

    ``length``: the tokens it holds then (entries past it are dropped: a crop
    lets later tokens be written over them).  ``keeps_keys``: every layer
    keeps the keys it holds as written, never rewriting them in place
    (transformers' ``DynamicLayer`` and ``StaticLayer``, the runtime's
    presized layer), so an entry of a one-row batch need not compare its
    source keys with the probes it kept (each comparison is a device sync,
    one a layer on GPU).  A quantized, offloaded, sliding or unknown layer
    does not promise it: entries are checked against probes.
    """

    length: int
    keeps_keys: bool


class DecodeMemo:
    """Keys rotated during earlier decode steps of one sequence, per layer and
    rotation rule, so a step rotates only the keys new to it (a generated token
    adds one key a step).  Made by the runtime at every prefill; an entry
    whose source keys changed (another cache, a beam reordering, a cropped
    cache) or whose frequencies differ from this step's (Dynamic NTK's change
    with the length) is dropped and rebuilt, so a stale rotation is never
    used.  Holds at
    most one rotated copy of a layer's keys per rule (decode only)."""

    def __init__(self):
        self._entries: dict = {}
        self.cache = CacheState(length=0, keeps_keys=False)

    def forward_starts(self, cache: "CacheState") -> None:
        """Before each forward on this memo's cache (the runtime calls it) with
        what the cache promises then (:class:`CacheState`): entries past its
        ``length`` are dropped (a crop: the keys after it may be written again)."""
        for key in [k for k, e in self._entries.items() if e.hi > cache.length]:
            del self._entries[key]
        self.cache = cache

    def rotated(self, layer: int, rule, k: torch.Tensor, j0: int, j1: int,
                position: Callable[[torch.Tensor], torch.Tensor], rope) -> torch.Tensor:
        """``k[:, :, j0:j1]`` rotated to ``position(j)`` (``rule`` names the
        position function; it must not change within a sequence)."""
        base = rope.rope if isinstance(rope, RopeTables) else rope
        e = self._entries.get((layer, _slot(rule)))
        if e is None or e.rule != rule or not e.serves(k, j0, j1, base, self.cache.keeps_keys):
            e = self._entries[layer, _slot(rule)] = _MemoEntry(j0, k, base, rule)
        e.extend(k, j1, position, rope, rule, keeps_keys=self.cache.keeps_keys)
        return e.buf[:, :, j0 - e.start:j1 - e.start]

    def split_rotated(self, layer: int, rule, k: torch.Tensor, split: int, j1: int,
                      near: Callable[[torch.Tensor], torch.Tensor],
                      far: Callable[[torch.Tensor], torch.Tensor], rope) -> torch.Tensor:
        """``k[:, :, :j1]`` in one buffer: keys before ``split`` rotated to
        ``far(j)``, the others to ``near(j)``.  ``split`` may only grow within a
        sequence (a key leaves the near window for good): each step rotates its
        new keys to ``near`` and the keys that left the window to ``far``."""
        base = rope.rope if isinstance(rope, RopeTables) else rope
        e = self._entries.get((layer, _slot(rule)))
        if e is None or not e.serves(k, 0, j1, base, self.cache.keeps_keys) \
                or split < e.split or e.near is not near:
            e = self._entries[layer, _slot(rule)] = _MemoEntry(0, k, base, rule)
            e.near = near
        elif e.rule != rule:
            e.refar(k, rule, far, rope)
        e.extend(k, j1, near, rope, rule, split, far, keeps_keys=self.cache.keeps_keys)
        return e.buf[:, :, :j1]

    def grouped_rotated(self, layer: int, rule, k: torch.Tensor, v: torch.Tensor, j1: int,
                        groups: int, group_of: Callable[[int], int],
                        position: Callable[[torch.Tensor], torch.Tensor],
                        rope) -> "GroupedKeys":
        """``k[:, :, :j1]`` rotated to ``position(j)``, with ``v[:, :, :j1]``,
        kept in ``groups`` groups (key ``j`` in group ``group_of(j)``, a
        function of ``j mod groups``; each group in key order):
        :class:`GroupedKeys`.  ``j1`` may only grow within a sequence (a key
        leaves a near window for good): each step rotates and copies only its
        new keys.  Holds one more copy of those values than :meth:`rotated`."""
        base = rope.rope if isinstance(rope, RopeTables) else rope
        e = self._entries.get((layer, _slot(rule)))
        if not isinstance(e, _GroupedEntry) or e.rule != rule \
                or not e.serves(k, 0, j1, base, self.cache.keeps_keys) or not e.same_values(v):
            e = self._entries[layer, _slot(rule)] = _GroupedEntry(k, v, base, rule, groups,
                                                                  group_of)
        e.extend_pairs(k, v, j1, position, rope, rule, keeps_keys=self.cache.keeps_keys)
        return GroupedKeys(e.buf, e.values, e.cap, e.hidden)


def _slot(rule):
    """The memo slot of a layer that ``rule`` (a name, or a tuple ``(name,
    parameters...)``) uses: one entry a slot, so a rule whose parameters
    change with the length (Leaky-ReRoPE's leak) replaces its entry instead
    of adding one a step."""
    return rule[0] if isinstance(rule, tuple) else rule


class _MemoEntry:
    """Rotated keys ``start..hi-1`` of one layer and rule in a growing buffer,
    with probes of their source keys (first, last; not kept when the cache
    keeps its keys and the batch has one row: ``unchecked``) and the frequencies they were
    rotated with (the tensor and its version: an in-place update, as
    transformers' LongRoPE makes, counts as a change), to check it still
    applies without a device sync where it can."""

    def __init__(self, start: int, k: torch.Tensor, rope: Rope, rule):
        self.start, self.hi, self.split, self.rule = start, start, start, rule
        self.buf = k.new_empty(k.shape[:2] + (0, k.shape[-1]))
        self.probe = None                      # (first, last) source keys, once rotated
        self.unchecked = False                 # rotated under CacheState.keeps_keys, one row
        self.rope, self.freq_version = rope, rope.inv_freq._version
        self.near = None                       # split_rotated's near positions (a function)

    def _same_frequencies(self, rope: Rope) -> bool:
        mine = self.rope
        if rope.inv_freq is mine.inv_freq:
            return rope.scaling == mine.scaling and rope.inv_freq._version == self.freq_version
        return rope.scaling == mine.scaling and torch.equal(rope.inv_freq, mine.inv_freq)

    def serves(self, k, j0: int, j1: int, rope: Rope, keeps_keys: bool = False) -> bool:
        if j0 < self.start or j1 < self.hi or k.shape[:2] != self.buf.shape[:2]:
            return False
        if not self._same_frequencies(rope):
            return False
        if self.unchecked:
            return keeps_keys and k.shape[0] == 1
        if self.probe is None:
            return True
        first, last = self.probe
        return torch.equal(k[:, :, self.start], first) and torch.equal(k[:, :, self.hi - 1], last)

    def extend(self, k, j1: int, near, rope, rule, split: int | None = None, far=None,
               keeps_keys: bool = False) -> None:
        """Keys up to ``j1``: the new ones rotated to ``near(j)``; with ``split``,
        the keys that left the near window (``self.split..split-1``) to ``far(j)``.
        ``keeps_keys`` (and one batch row): no probes kept."""
        split = self.split if split is None else min(split, j1)
        if j1 <= self.hi and split <= self.split:
            return
        self._room(k, j1)
        parts = []
        if split > self.split:
            parts.append((self.split, split, far, (rule, "far")))
        if j1 > max(self.hi, split):
            parts.append((max(self.hi, split), j1, near, (rule, "near")))
        if len(parts) == 2 and isinstance(rope, RopeTables) and \
                sum(b - a for a, b, _, _ in parts) <= 128:
            self._put_pair(k, parts, rope)        # a decode step: one key leaves, one arrives
        else:
            for a, b, position, name in parts:
                self._put(k, a, b, position, rope, name)
        self.hi, self.split = max(self.hi, j1), split
        self.unchecked = keeps_keys and k.shape[0] == 1
        self.probe = None if self.unchecked else (k[:, :, self.start].clone(),
                                                  k[:, :, self.hi - 1].clone())

    def refar(self, k, rule, far, rope) -> None:
        """The rule's far positions changed (Leaky-ReRoPE's leak moves with
        the length), its near ones did not: the far keys ``start..split-1``
        rotated again to ``far(j)`` in place, the near keys kept."""
        if self.split > self.start:
            self._put(k, self.start, self.split, far, rope, (rule, "far"))
        self.rule = rule

    def _room(self, k, j1: int) -> None:
        need = j1 - self.start
        if need > self.buf.shape[2]:
            grown = k.new_empty(k.shape[:2] + (need + max(256, need // 8), k.shape[-1]))
            grown[:, :, :self.hi - self.start] = self.buf[:, :, :self.hi - self.start]
            self.buf = grown

    def _put_pair(self, k, parts, rope: "RopeTables") -> None:
        """Two short key ranges (``parts``: ``(a, b, position, rule)``, few keys
        each, as a decode step has) rotated in one call and written with one
        indexed copy: fewer launches than two :meth:`_put` s."""
        (a1, b1, f1, r1), (a2, b2, f2, r2) = parts
        dev, name = k.device, ("memo-pair", self.start, r1, a1, b1, r2, a2, b2)
        idx = rope.table(name + ("idx",), lambda: torch.cat((arange(a1, b1, dev),
                                                             arange(a2, b2, dev))))
        pos = rope.table(name + ("pos",), lambda: torch.cat((f1(arange(a1, b1, dev)),
                                                             f2(arange(a2, b2, dev)))))
        at = rope.table(name + ("at",), lambda: idx - self.start)
        self.buf.index_copy_(2, at, rotate(k.index_select(2, idx), rope, pos, name))

    def _put(self, k, a: int, b: int, position, rope, rule) -> None:
        """Keys ``a..b-1`` rotated to ``position(j)`` into the buffer (positions
        and tables shared by a forward's layers)."""
        if isinstance(rope, RopeTables):
            pos = rope.table(("memo-pos", rule, a, b), lambda: position(arange(a, b, k.device)))
            key = ("memo", rule, a, b)
        else:
            pos, key = position(arange(a, b, k.device)), None
        rotate(k[:, :, a:b], rope, pos, key, out=self.buf[:, :, a - self.start:b - self.start])


@dataclass(frozen=True)
class GroupedKeys:
    """Keys and values kept in groups by :meth:`DecodeMemo.grouped_rotated`:
    ``keys [b, kv_h, groups, cap, d]`` and ``values [b, kv_h, groups, cap,
    d_v]`` (group ``g``'s in rows ``0..`` of ``[:, :, g]``, zeros after them),
    ``hidden [groups * cap]`` float32: 0 at a key, ``-inf`` at the rows after
    a group's keys (added to the scores of the flattened groups)."""

    keys: torch.Tensor
    values: torch.Tensor
    cap: int
    hidden: torch.Tensor


class _GroupedEntry(_MemoEntry):
    """Rotated keys ``0..hi-1`` of one layer and rule, and their values, in
    ``groups`` groups (:meth:`DecodeMemo.grouped_rotated`): ``buf`` and
    ``values`` ``[b, kv_h, groups, cap, d]``, each group's keys in key order (a
    key arriving joins its group's end), ``hidden`` the rows past each
    group's end; the probes and frequency checks of :class:`_MemoEntry`, and
    probes of the first and last values."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, rope: Rope, rule, groups: int,
                 group_of: Callable[[int], int]):
        super().__init__(0, k, rope, rule)
        self.groups, self.cap, self.value_probe = groups, 0, None
        self.first = [groups] * groups       # group g's keys: j = first[g] + groups * t
        for j in range(groups):
            g = group_of(j)
            if 0 <= g < groups:
                self.first[g] = min(self.first[g], j)
        if sorted(self.first) != list(range(groups)):
            raise ValueError(f"group_of must map 0..{groups - 1} onto the {groups} groups once "
                             f"each: first keys {self.first}")
        self.buf = k.new_zeros(k.shape[:2] + (groups, 0, k.shape[-1]))
        self.values = v.new_zeros(v.shape[:2] + (groups, 0, v.shape[-1]))
        self.hidden = torch.empty(0, dtype=torch.float32, device=k.device)

    def same_values(self, v) -> bool:
        """The values probed at the last step are still the cache's."""
        if self.value_probe is None:
            return True
        first, last = self.value_probe
        return torch.equal(v[:, :, 0], first) and torch.equal(v[:, :, self.hi - 1], last)

    def extend_pairs(self, k, v, j1: int, position, rope, rule, keeps_keys: bool) -> None:
        """Keys ``hi..j1-1`` rotated to ``position(j)``, and their values,
        into their groups."""
        if j1 <= self.hi:
            return
        self._room_pairs(k, v, j1)
        E = self.groups
        for g, c in enumerate(self.first):
            a = self.hi + (c - self.hi) % E                  # group g's first new key
            if a >= j1:
                continue
            t0, t1 = (a - c) // E, (j1 - 1 - c) // E + 1
            pos = arange(a, j1, k.device)[::E]
            key = ("memo-group", rule, g, a, j1) if isinstance(rope, RopeTables) else None
            rotate(k[:, :, a:j1:E], rope, position(pos), key, out=self.buf[:, :, g, t0:t1])
            self.values[:, :, g, t0:t1] = v[:, :, a:j1:E]
            self.hidden[g * self.cap + t0:g * self.cap + t1] = 0.0
        self.hi = j1
        self.unchecked = keeps_keys and k.shape[0] == 1
        self.probe = None if self.unchecked else (k[:, :, 0].clone(), k[:, :, j1 - 1].clone())
        self.value_probe = None if self.unchecked else (v[:, :, 0].clone(),
                                                        v[:, :, j1 - 1].clone())

    def _room_pairs(self, k, v, j1: int) -> None:
        need = -(-j1 // self.groups)                          # the longest group's keys
        if need <= self.cap:
            return
        cap = need + GROUP_SLACK
        keys = k.new_zeros(k.shape[:2] + (self.groups, cap, k.shape[-1]))
        values = v.new_zeros(v.shape[:2] + (self.groups, cap, v.shape[-1]))
        hidden = torch.full((self.groups, cap), -math.inf, device=k.device)
        keys[:, :, :, :self.cap] = self.buf
        values[:, :, :, :self.cap] = self.values
        hidden[:, :self.cap] = self.hidden.view(self.groups, self.cap)
        self.buf, self.values, self.hidden, self.cap = keys, values, hidden.view(-1), cap


def memo_keys(rope, k, j0: int, j1: int, rule, position) -> torch.Tensor:
    """``k[:, :, j0:j1]`` rotated to ``position(j)``: from the decode memo
    where the runtime keeps one (``rope`` a :class:`RopeTables` with ``memo``
    and ``layer`` set), rotated here otherwise."""
    memo, layer = getattr(rope, "memo", None), getattr(rope, "layer", None)
    if memo is None or layer is None:
        return rotate(k[:, :, j0:j1], rope, position(arange(j0, j1, k.device)))
    return memo.rotated(layer, rule, k, j0, j1, position, rope)


def same(j: torch.Tensor) -> torch.Tensor:
    """Linear key positions: ``j``."""
    return j
