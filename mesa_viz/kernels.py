"""Attention kernels: each method's position math, on keys cached *before* RoPE.

Pure torch (no transformers).  The generic machinery (one softmax over several
key sets, CPU blocks, GPU split-K, block sizing) is ``mesa_viz.attention_sets``;
here each method says which keys it scores at which rotation.

The kernel registry
-------------------
One entry per method class, declared on the kernel with ``@kernel(MethodClass,
...)`` and looked up by :func:`attend` (and by ``apply()``, which refuses a
method that is neither native nor registered before the first forward)::

    @kernel(MyMethod)
    def my_method(method, q, k, v, i0, rope, scale, backend): ...

A kernel receives

* ``method``: the *resolved* method value (``mesa_viz.methods``);
* ``q [batch, head, q_len, head_dim]``: un-rotated queries at absolute
  positions ``i0 .. i0 + q_len - 1``;
* ``k, v [batch, kv_head, kv_len, head_dim | v_dim]``: un-rotated keys and
  values at positions ``0 .. kv_len - 1``, ``kv_len == i0 + q_len`` (GQA:
  ``head`` is a multiple of ``kv_head``);
* ``rope``: the :class:`RopeTables` of this forward (``rotate(x, rope, pos,
  key)`` rotates ``x`` to positions ``pos``; ``key`` names ``pos`` so the
  layers of one forward share the cos/sin tables);
* ``scale``: the softmax scale; ``backend``: ``"sdpa"`` or ``"eager"``;

and returns ``[batch, head, q_len, v_dim]``.  It must hold no ``[n, n]``
matrix: query blocks sized by ``attention_sets.block_size``.  ``blocked_rows(
method, seq_len) -> int`` (default: every row) tells the memory estimate how
many query rows of a prefill the kernel scores in blocks against (up to) all
keys, 0 where SDPA's fused causal kernel serves; ``kv_copies`` how many O(n)
key or value copies of one layer it holds.  ``fused(method, i0) -> Rules |
None`` gives the position rules of the one-launch kernel (``mesa_viz.fused``;
:func:`attend` runs ``mesa_viz.triton_stair`` with them on CUDA where
``triton`` imports, :func:`use_fused`), so a new method whose positions are an
affine-floor rule per key set gets the fused launch by declaring them.

A decode step reuses the keys rotated at the steps before it through the
application's :class:`DecodeMemo` (on the forward's :class:`RopeTables`).

Stair PE (Mesa's last chunk, the ``stair`` method) is one piece of code,
:func:`_stair_rows`, over a :class:`StairGeometry`, whose docstring holds the
residue-class factorisation.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable

import numpy as np
import torch

from . import attention_sets as sets
from .fused import Rules, decode_rows
from .methods import (DualChunk, DynamicNTK, LeakyReRoPE, LMInfinite, Mesa, Method, NTKAware,
                      Origin, PositionInterpolation, ReRoPE, SelfExtend, Stair, StreamingLLM,
                      String, YaRN)

__all__ = ["Rope", "RopeTables", "rotate", "attend", "kernel", "kernel_for", "Kernel",
           "KERNELS", "StairGeometry", "dense_rows", "dense_logits", "DecodeMemo", "use_fused",
           "fused_rules"]

log = logging.getLogger(__name__)


# -- RoPE -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rope:
    """RoPE as the model computes it: ``inv_freq [rot_dim/2]`` and the cos/sin
    ``scaling`` (1 except for YaRN-like types); half-split rotation of the
    first ``rot_dim`` channels (Llama, GPT-NeoX partial rotary, Phi-3).
    Holds no tables: see :class:`RopeTables`."""

    inv_freq: torch.Tensor
    scaling: float = 1.0

    def cos_sin(self, pos: torch.Tensor, dtype: torch.dtype):
        """Rotation tables ``(C, S) [len(pos), 2, rot_dim/2]`` for (possibly
        fractional) positions: ``C = (cos, cos)``, ``S = (-sin, sin)``, so that
        the two halves ``x = (x1, x2)`` rotate as ``x * C + flip(x) * S``."""
        freqs = pos.to(torch.float32)[:, None] * self.inv_freq.to(pos.device, torch.float32)
        cos, sin = freqs.cos() * self.scaling, freqs.sin() * self.scaling
        return (torch.stack((cos, cos), dim=-2).to(dtype),
                torch.stack((-sin, sin), dim=-2).to(dtype))


class RopeTables:
    """The cos/sin tables of one forward pass of one resolved method.

    Made by the application once per forward (its layers share them) or by
    :func:`attend` once per call; never reused across forwards or methods:
    :func:`attend` refuses tables made for another method value, and a kernel's
    ``key`` names positions within one forward of one method (e.g.
    ``("lin", a, b)`` for ``a..b-1``).

    ``memo`` (a :class:`DecodeMemo`, set by the application) and ``layer``
    (the layer being computed) let a decode step reuse the rotated keys of the
    steps before it; None when ``attend`` is called alone.
    """

    __slots__ = ("rope", "method", "_tables", "memo", "layer")

    def __init__(self, rope: Rope, method: Method, memo: "DecodeMemo | None" = None):
        self.rope, self.method, self._tables = rope, method, {}
        self.memo, self.layer = memo, None

    def table(self, key, make: Callable[[], object]):
        """A table of this forward shared by its layers (positions, rules, a
        launch's buffers): ``make()`` once per ``key``."""
        if key not in self._tables:
            self._tables[key] = make()
        return self._tables[key]

    def cos_sin(self, pos: torch.Tensor, dtype: torch.dtype, key=None):
        """:meth:`Rope.cos_sin`, kept under ``(key, dtype)`` when ``key`` is given."""
        if key is None:
            return self.rope.cos_sin(pos, dtype)
        if (key, dtype) not in self._tables:
            self._tables[key, dtype] = self.rope.cos_sin(pos, dtype)
        return self._tables[key, dtype]


#: Up to this many elements :func:`rotate` uses three element-wise ops with temporaries;
#: above it, in-place ops into one output (no temporaries the size of ``x``).
SMALL_ROTATION = 1 << 16


def rotate(x: torch.Tensor, rope: "Rope | RopeTables", pos: torch.Tensor,
           key=None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x [..., len(pos), head_dim]`` rotated to positions ``pos``: channel
    ``c`` pairs with ``c + rot_dim/2`` (half-split RoPE); channels past
    ``rot_dim`` pass through (partial rotary).  ``key``: see :class:`RopeTables`.
    ``out`` (optional, any strides): written there and returned."""
    C, S = rope.cos_sin(pos, x.dtype) if key is None else rope.cos_sin(pos, x.dtype, key)
    half = C.shape[-1]
    xr = x[..., :2 * half].unflatten(-1, (2, half))                 # [..., L, 2, half]
    if (torch.is_grad_enabled() and x.requires_grad) or x.numel() <= SMALL_ROTATION:
        # autograd (no out= ops), or a few rows (a decode step's): fewer, smaller launches
        y = torch.addcmul(xr * C, xr.flip(-2), S).flatten(-2)
        y = torch.cat((y, x[..., 2 * half:]), dim=-1) if 2 * half < x.shape[-1] else y
        return y if out is None else out.copy_(y)
    shape = x.shape[:-2] + (C.shape[0], x.shape[-1])          # x has len(pos) rows, or 1
    if out is None:                                           # written in place: no temporaries
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    o = out[..., :2 * half].unflatten(-1, (2, half))
    torch.mul(xr, C, out=o)
    o[..., 0, :].addcmul_(xr[..., 1, :], S[..., 0, :])
    o[..., 1, :].addcmul_(xr[..., 0, :], S[..., 1, :])
    if 2 * half < x.shape[-1]:
        out[..., 2 * half:] = x[..., 2 * half:]
    return out


class DecodeMemo:
    """Keys rotated during earlier decode steps of one sequence, per layer and
    rotation rule, so a step rotates only the keys new to it (a generated token
    adds one key a step).  Made by the application at every prefill; an entry
    whose source keys changed (another cache, a beam reordering, a cropped
    cache) or whose frequencies differ from this step's (Dynamic NTK's change
    with the length) is dropped and rebuilt, so a stale rotation is never
    used.  Holds at
    most one rotated copy of a layer's keys per rule (decode only)."""

    def __init__(self):
        self._entries: dict = {}
        self.trusted = False

    def forward_starts(self, length: int, trusted: bool) -> None:
        """Before each forward on this memo's cache (the application calls it),
        with the cache's length then: entries past ``length`` are dropped (a
        crop: the keys after it may be written again), and ``trusted`` (a cache
        that never rewrites the keys it keeps in place: transformers'
        ``DynamicLayer`` and ``StaticLayer``, mesa_viz's presized layer) lets an
        entry of a one-row batch skip comparing its source keys with the
        probes it kept: each comparison is a device sync, one a layer on GPU."""
        for key in [k for k, e in self._entries.items() if e.hi > length]:
            del self._entries[key]
        self.trusted = trusted

    def rotated(self, layer: int, rule, k: torch.Tensor, j0: int, j1: int,
                position: Callable[[torch.Tensor], torch.Tensor], rope) -> torch.Tensor:
        """``k[:, :, j0:j1]`` rotated to ``position(j)`` (``rule`` names the
        position function; it must not change within a sequence)."""
        base = rope.rope if isinstance(rope, RopeTables) else rope
        e = self._entries.get((layer, rule))
        if e is None or not e.serves(k, j0, j1, base, self.trusted):
            e = self._entries[layer, rule] = _MemoEntry(j0, k, base)
        e.extend(k, j1, position, rope, rule, trusted=self.trusted)
        return e.buf[:, :, j0 - e.start:j1 - e.start]

    def split_rotated(self, layer: int, rule, k: torch.Tensor, split: int, j1: int,
                      near: Callable[[torch.Tensor], torch.Tensor],
                      far: Callable[[torch.Tensor], torch.Tensor], rope) -> torch.Tensor:
        """``k[:, :, :j1]`` in one buffer: keys before ``split`` rotated to
        ``far(j)``, the others to ``near(j)``.  ``split`` may only grow within a
        sequence (a key leaves the near window for good): each step rotates its
        new keys to ``near`` and the keys that left the window to ``far``."""
        base = rope.rope if isinstance(rope, RopeTables) else rope
        e = self._entries.get((layer, rule))
        if e is None or not e.serves(k, 0, j1, base, self.trusted) or split < e.split:
            e = self._entries[layer, rule] = _MemoEntry(0, k, base)
        e.extend(k, j1, near, rope, rule, split, far, trusted=self.trusted)
        return e.buf[:, :, :j1]


#: ``_MemoEntry.probe`` of keys rotated under a trusted cache (no probes kept).
_TRUSTED = "trusted"


class _MemoEntry:
    """Rotated keys ``start..hi-1`` of one layer and rule in a growing buffer,
    with probes of their source keys (first, last; not kept under a trusted
    cache: :meth:`DecodeMemo.forward_starts`) and the frequencies they were
    rotated with (the tensor and its version: an in-place update, as
    transformers' LongRoPE makes, counts as a change), to check it still
    applies without a device sync where it can."""

    def __init__(self, start: int, k: torch.Tensor, rope: Rope):
        self.start, self.hi, self.split = start, start, start
        self.buf = k.new_empty(k.shape[:2] + (0, k.shape[-1]))
        self.probe = None
        self.rope, self.freq_version = rope, rope.inv_freq._version

    def _same_frequencies(self, rope: Rope) -> bool:
        mine = self.rope
        if rope.inv_freq is mine.inv_freq:
            return rope.scaling == mine.scaling and rope.inv_freq._version == self.freq_version
        return rope.scaling == mine.scaling and torch.equal(rope.inv_freq, mine.inv_freq)

    def serves(self, k, j0: int, j1: int, rope: Rope, trusted: bool = False) -> bool:
        if j0 < self.start or j1 < self.hi or k.shape[:2] != self.buf.shape[:2]:
            return False
        if not self._same_frequencies(rope):
            return False
        if self.probe is None:
            return True
        if self.probe is _TRUSTED:
            return trusted and k.shape[0] == 1
        first, last = self.probe
        return torch.equal(k[:, :, self.start], first) and torch.equal(k[:, :, self.hi - 1], last)

    def extend(self, k, j1: int, near, rope, rule, split: int | None = None, far=None,
               trusted: bool = False) -> None:
        """Keys up to ``j1``: the new ones rotated to ``near(j)``; with ``split``,
        the keys that left the near window (``self.split..split-1``) to ``far(j)``.
        ``trusted`` (and one batch row): no probes kept."""
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
        if trusted and k.shape[0] == 1:
            self.probe = _TRUSTED
        else:
            self.probe = (k[:, :, self.start].clone(), k[:, :, self.hi - 1].clone())

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
        idx = rope.table(name + ("idx",), lambda: torch.cat((_arange(a1, b1, dev),
                                                              _arange(a2, b2, dev))))
        pos = rope.table(name + ("pos",), lambda: torch.cat((f1(_arange(a1, b1, dev)),
                                                              f2(_arange(a2, b2, dev)))))
        at = rope.table(name + ("at",), lambda: idx - self.start)
        self.buf.index_copy_(2, at, rotate(k.index_select(2, idx), rope, pos, name))

    def _put(self, k, a: int, b: int, position, rope, rule) -> None:
        """Keys ``a..b-1`` rotated to ``position(j)`` into the buffer (positions
        and tables shared by a forward's layers)."""
        if isinstance(rope, RopeTables):
            pos = rope.table(("memo-pos", rule, a, b), lambda: position(_arange(a, b, k.device)))
            key = ("memo", rule, a, b)
        else:
            pos, key = position(_arange(a, b, k.device)), None
        self.buf[:, :, a - self.start:b - self.start] = rotate(k[:, :, a:b], rope, pos, key)


def _memo_keys(rope, k, j0: int, j1: int, rule, position) -> torch.Tensor:
    """``k[:, :, j0:j1]`` rotated to ``position(j)``: from the decode memo
    where the application keeps one, rotated here otherwise."""
    memo, layer = getattr(rope, "memo", None), getattr(rope, "layer", None)
    if memo is None or layer is None:
        return rotate(k[:, :, j0:j1], rope, position(_arange(j0, j1, k.device)))
    return memo.rotated(layer, rule, k, j0, j1, position, rope)


def _arange(a, b, device):
    return torch.arange(a, b, device=device)


def _same(j: torch.Tensor) -> torch.Tensor:
    """Linear key positions: ``j``."""
    return j


# -- the registry -----------------------------------------------------------------------

KernelFn = Callable[..., torch.Tensor]


def _every_row(method: Method, seq_len: int) -> int:
    return int(seq_len)


@dataclass(frozen=True)
class Kernel:
    """A registry entry: ``run(method, q, k, v, i0, rope, scale, backend)``
    (module doc), and for memory estimates ``blocked_rows(method, seq_len)``
    and ``kv_copies`` (O(n) copies of one layer's keys and values the kernel
    holds at once, in KV widths; None: ``mesa_viz.memory``'s default), and
    ``fused(method, i0) -> Rules | None``: the position rules of queries from
    ``i0`` for the one-launch kernel (``mesa_viz.fused``; None: not served)."""

    run: KernelFn
    blocked_rows: Callable[[Method, int], int] = _every_row
    kv_copies: float | None = None
    fused: "Callable[[Method, int], Rules | None] | None" = None


#: Method class -> Kernel; written only at import, by :func:`kernel`.
_REGISTRY: dict[type[Method], Kernel] = {}
#: Read-only view of the registry.
KERNELS = MappingProxyType(_REGISTRY)


def kernel(*classes: type[Method], blocked_rows: Callable[[Method, int], int] = _every_row,
           kv_copies: float | None = None, fused=None):
    """Decorator registering a kernel for each of ``classes`` (exact classes:
    a subclass needs its own entry); ``blocked_rows``, ``kv_copies``,
    ``fused``: see :class:`Kernel`."""
    def register(fn: KernelFn) -> KernelFn:
        for cls in classes:
            if cls in _REGISTRY:
                raise ValueError(f"method class {cls.__name__} already has a kernel "
                                 f"({_REGISTRY[cls].run.__name__})")
            _REGISTRY[cls] = Kernel(fn, blocked_rows, kv_copies, fused)
        return fn
    return register


def kernel_for(method: "Method | type[Method]") -> Kernel:
    """The registry entry of a method (value or class); ValueError naming the
    methods that have one if it has none."""
    cls = method if isinstance(method, type) else type(method)
    if cls not in _REGISTRY:
        have = sorted(c.name for c in _REGISTRY)
        raise ValueError(f"method {cls.name!r} has no attention kernel (and is not native): "
                         f"allowed {have}")
    return _REGISTRY[cls]


def attend(method: Method, q, k, v, i0: int, rope: "Rope | RopeTables", scale: float,
           backend="sdpa"):
    """Attention of queries at ``i0..`` under the resolved ``method``.

    ``q [b, h, q_len, d]``, ``k, v [b, kv_h, kv_len, d]`` un-rotated; ``rope``
    a :class:`Rope` (tables made for this call) or this forward's
    :class:`RopeTables`.  Returns ``[b, h, q_len, d_v]``.
    """
    entry = kernel_for(method)
    tables = rope if isinstance(rope, RopeTables) else RopeTables(rope, method)
    if tables.method != method:
        raise ValueError(f"RopeTables made for {tables.method!r} cannot serve {method!r}: "
                         "make one per forward and method")
    rules = tables.table(("fused-rules", i0), lambda: fused_rules(method, i0)) \
        if use_fused(q, tables) else None
    if rules is not None:
        return _fused(q, k, v, i0, tables, scale, rules)
    return entry.run(method, q, k, v, i0, tables, scale, backend)


def _fused(q, k, v, i0: int, tables: RopeTables, scale: float, rules: "Rules"):
    """The Triton launches (``mesa_viz.triton_stair``): a few rows (a decode
    step) split over the keys, with what the launch needs made once a forward
    (its layers share it: ``tables.table``); more rows one launch over query blocks."""
    from .triton_stair import fused_attention, fused_decode
    inv = tables.rope.inv_freq
    if decode_rows(q.shape[1], k.shape[1], q.shape[2]):
        return fused_decode(q, k, v, i0, inv, scale, rules, keep=tables.table)
    return fused_attention(q, k, v, i0, inv, scale, rules)[0]


def fused_rules(method: Method, i0: int) -> "Rules | None":
    """The one-launch kernel's position rules for the method's queries from
    ``i0`` (its registry entry's ``fused``), or None where it does not serve."""
    fn = kernel_for(method).fused
    return None if fn is None else fn(method, i0)


def use_fused(q: torch.Tensor, rope: RopeTables) -> bool:
    """Whether the Triton kernel (``mesa_viz.triton_stair``) serves: CUDA
    tensors, ``triton`` importable, full rotary with a power-of-two head size,
    no cos/sin scaling.  The only decision for it (tests replace it)."""
    half, d = rope.rope.inv_freq.shape[0], q.shape[-1]
    return (q.is_cuda and d == 2 * half and d & (d - 1) == 0 and rope.rope.scaling == 1.0
            and _triton_importable())


@functools.cache
def _triton_importable() -> bool:
    """Whether ``triton`` imports (checked, and said in the log, once)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        log.info("triton is not importable: Mesa's last chunk and the near/far methods run "
                 "their torch kernels (one launch per key set) on CUDA")
        return False
    log.info("triton %s: Mesa's last chunk and the near/far methods run one fused launch "
             "per layer on CUDA (mesa_viz.triton_stair)", triton.__version__)
    return True


# -- origin -----------------------------------------------------------------------------

@kernel(Origin, DynamicNTK, blocked_rows=lambda method, seq_len: 0)
def origin(method, q, k, v, i0, rope, scale, backend):
    """Linear positions: query ``i`` and key ``j`` rotated to ``i`` and ``j``."""
    Lq, Lk, dev = q.shape[2], k.shape[2], q.device
    qr = rotate(q, rope, _arange(i0, i0 + Lq, dev), ("lin", i0, i0 + Lq))
    if Lq == 1:                                           # decode: keys rotated once
        kr = _memo_keys(rope, k, 0, Lk, "lin", _same)
        return _softmax_pv([_row_scores(qr, kr)], v, scale, q, backend)
    kr = rotate(k, rope, _arange(0, Lk, dev), ("lin", 0, Lk))
    if backend in sets.FUSED_BACKENDS and i0 == 0 and Lq == Lk:  # flash/efficient causal kernel
        return sets.causal_sdpa(qr, kr, v, scale)
    out = []
    B = sets.block_size(q, Lk, backend)
    for a in range(0, Lq, B):
        b = min(Lq, a + B)
        kmax = i0 + b
        mask = _arange(0, kmax, dev)[None, :] <= _arange(i0 + a, i0 + b, dev)[:, None]
        out.append(sets.sdpa(qr[:, :, a:b], kr[:, :, :kmax], v[:, :, :kmax], mask, scale,
                             backend))
    return torch.cat(out, dim=2)


# -- near and far keys: ReRoPE, Leaky-ReRoPE, sinks, Mesa's anchored stair ----------------

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
    B = sets.block_size(q, 2 * Lk, backend)
    for a in range(0, Lq, B):
        b = min(Lq, a + B)
        i = _arange(i0 + a, i0 + b, dev)
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


def _beyond_window(q, k, v, i0, rope, scale, backend, window, q_pos, k_pos):
    """ReRoPE's shape: keys ``window`` or more behind the query are far."""
    return _near_far(q, k, v, i0, rope, scale, backend, near=window,
                     far_keys=lambda lo, hi: (0, max(0, hi - window + 1)),
                     far_q_pos=q_pos, far_k_pos=k_pos,
                     far_visible=lambda i, j: i - j >= window)


def _at_window(window):
    """Far positions ``window - 0``: query at ``window``, keys at 0."""
    return (lambda i: torch.full_like(i, window)), (lambda j: torch.zeros_like(j))


def _window_rules(window: int, leak: float = math.inf) -> Rules:
    """Far keys at ``window + (i - j - window) / leak`` (ReRoPE: ``leak = inf``)."""
    if math.isinf(leak):
        return Rules(near=window, qb=float(window))
    return Rules(near=window, qa=1 / leak, qb=window * (1 - 1 / leak), ka=1 / leak)


@kernel(ReRoPE, fused=lambda m, i0: _window_rules(m.window))
def rerope(method, q, k, v, i0, rope, scale, backend):
    """Far keys at ``window``: query rotated to ``window``, keys to 0."""
    w = method.window
    return _beyond_window(q, k, v, i0, rope, scale, backend, w, *_at_window(w))


@kernel(LeakyReRoPE, fused=lambda m, i0: _window_rules(m.window, m.leak))
def leaky_rerope(method, q, k, v, i0, rope, scale, backend):
    """Far keys at ``w + (i - j - w) / leak``: query at ``i / leak + w (1 - 1/leak)``,
    key at ``j / leak`` (an infinite ``leak`` is ReRoPE)."""
    w, leak = method.window, method.leak
    if math.isinf(leak):
        return _beyond_window(q, k, v, i0, rope, scale, backend, w, *_at_window(w))
    return _beyond_window(q, k, v, i0, rope, scale, backend, w,
                          lambda i: i / leak + w * (1 - 1 / leak), lambda j: j / leak)


def _sinks(method, q, k, v, i0, rope, scale, backend, q_pos, k_pos):
    """Sinks and a local window: far keys are the ``sink_tokens`` first keys
    outside the window."""
    S, W = method.sink_tokens, method.window
    return _near_far(q, k, v, i0, rope, scale, backend, near=W,
                     far_keys=lambda lo, hi: (0, min(S, max(0, hi - W + 1))),
                     far_q_pos=q_pos, far_k_pos=k_pos,
                     far_visible=lambda i, j: (i - j >= W) & (j < S))


@kernel(StreamingLLM, fused=lambda m, i0: Rules(
    near=m.window, far_limit=m.sink_tokens, qa=1.0, qmax=float(m.sink_tokens + m.window - 1),
    ka=1.0))
def streaming_llm(method, q, k, v, i0, rope, scale, backend):
    """Sinks at their cache slots: query at ``min(i, sink_tokens + window - 1)``."""
    last_slot = method.sink_tokens + method.window - 1
    return _sinks(method, q, k, v, i0, rope, scale, backend,
                  lambda i: torch.clamp(i, max=last_slot), lambda j: j)


@kernel(LMInfinite, fused=lambda m, i0: Rules(near=m.window, far_limit=m.sink_tokens,
                                             qb=float(m.window)))
def lm_infinite(method, q, k, v, i0, rope, scale, backend):
    """Sinks at distance ``window``."""
    return _sinks(method, q, k, v, i0, rope, scale, backend, *_at_window(method.window))


# -- Self-Extend, STRING, Dual Chunk Attention; frequency rules ----------------------------

def _rows_unless(is_origin: Callable[[Method, int], bool]):
    """``blocked_rows`` of a kernel that hands the layouts where ``is_origin(
    method, kv_len)`` (linear and causal) to :func:`origin`."""
    return lambda method, seq_len: 0 if is_origin(method, seq_len) else int(seq_len)


def _self_extend_is_origin(method: SelfExtend, kv_len: int) -> bool:
    return method.group_size == 1


def _string_is_origin(method: String, kv_len: int) -> bool:
    return kv_len <= method.shifted_offset


def _dual_chunk_is_origin(method: DualChunk, kv_len: int) -> bool:
    return kv_len <= method.chunk_size + method.local_window


@kernel(SelfExtend, blocked_rows=_rows_unless(_self_extend_is_origin))
def self_extend(method, q, k, v, i0, rope, scale, backend):
    """Neighbour keys (``t < W``) at true positions; grouped keys with the
    query at ``i // G + W - W // G`` and the key at ``j // G`` (Self-Extend
    Eq. 3, ``//`` as the authors' fixed code)."""
    if _self_extend_is_origin(method, k.shape[2]):
        return origin(method, q, k, v, i0, rope, scale, backend)
    G, W = method.group_size, method.window
    return _beyond_window(q, k, v, i0, rope, scale, backend, W,
                          lambda i: torch.div(i, G, rounding_mode="floor") + W - W // G,
                          lambda j: torch.div(j, G, rounding_mode="floor"))


@kernel(String, blocked_rows=_rows_unless(_string_is_origin))
def string(method, q, k, v, i0, rope, scale, backend):
    """STRING: keys ``S`` or more behind the query (``S = shifted_offset``) at
    ``t - S + W`` (``W = local_window``): query at ``i - S + W``, key at ``j``."""
    if _string_is_origin(method, k.shape[2]):
        return origin(method, q, k, v, i0, rope, scale, backend)
    S, W = method.shifted_offset, method.local_window
    return _beyond_window(q, k, v, i0, rope, scale, backend, S,
                          lambda i: i - S + W, lambda j: j)


@kernel(DualChunk, blocked_rows=_rows_unless(_dual_chunk_is_origin))
def dual_chunk(method, q, k, v, i0, rope, scale, backend):
    """Dual Chunk Attention in two key sets.  Chunk size ``s``, local window
    ``w``; a query ``i`` in chunk ``c = i // s`` sees keys from ``floor(i) =
    (c - 1) s`` (if ``i mod s < w``: intra- and successive-chunk) or ``c s``
    (intra-chunk) at true positions, and every key before ``floor(i)`` with
    the query at ``s + w - 1`` and the key at ``j mod s`` (the paper's
    inter-chunk ``P_q = c - 1`` and ``P_k = j mod s``).  Query rows go in
    blocks that share ``floor(i)``."""
    Lk = k.shape[2]
    if _dual_chunk_is_origin(method, Lk):
        return origin(method, q, k, v, i0, rope, scale, backend)
    s, w, Lq, dev = method.chunk_size, method.local_window, q.shape[2], q.device
    j = _arange(0, Lk, dev)
    k_lin = rotate(k, rope, j, ("lin", 0, Lk))
    k_far = rotate(k, rope, torch.remainder(j, s), ("chunk-k", Lk))
    q_far = rotate(q, rope, torch.full((Lq,), s + w - 1, device=dev), ("chunk-q", i0, i0 + Lq))
    out = []
    for a, b, floor in _chunk_blocks(i0, Lq, s, w, sets.block_size(q, Lk, backend)):
        i = _arange(i0 + a, i0 + b, dev)
        q_lin = rotate(q[:, :, a:b], rope, i, ("lin", i0 + a, i0 + b))
        mask = j[None, floor:i0 + b] <= i[:, None]
        key_sets = [(q_lin, k_lin[:, :, floor:i0 + b], v[:, :, floor:i0 + b], mask),
                    (q_far[:, :, a:b], k_far[:, :, :floor], v[:, :, :floor], None)]
        out.append(sets.attend_sets(key_sets, scale, backend))
    return torch.cat(out, dim=2)


def _chunk_blocks(i0: int, q_len: int, s: int, w: int, block: int):
    """``(a, b, floor)``: query rows ``i0 + a .. i0 + b - 1`` (at most ``block``)
    sharing the first key they see at a true position, ``floor``."""
    a = 0
    while a < q_len:
        i = i0 + a
        c, r = divmod(i, s)
        edge = c * s + w if r < w else (c + 1) * s           # where floor(i) changes
        b = min(q_len, a + block, edge - i0)
        yield a, b, max(0, (c - 1) * s if r < w else c * s)
        a = b


#: Frequency rules run the model's own attention; this entry serves probes
#: capturing rows (the application swaps in the rule's rotary module).
kernel(PositionInterpolation, NTKAware, YaRN, blocked_rows=lambda method, seq_len: 0)(origin)


# -- Stair PE ---------------------------------------------------------------------------

def _stair_position(t, stair_start, stair_width):
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


def _stair_rows(q, k, v, i0, rope, scale, backend, last_start, stair_start, stair_width):
    """Queries ``i0..`` (all ``>= last_start``) over keys ``0..i`` with per-query
    Stair PE (:class:`StairGeometry`).  ``q [b, h, q_len, d]``, ``k, v [b,
    kv_h, i0 + q_len, d]``; returns ``[b, h, q_len, d_v]``.

    In blocks of rows, one softmax over several key sets
    (:func:`attention_sets.attend_sets`): the near keys (``i - j < N``) at
    their own positions, and the far keys group by group
    (:func:`_far_groups`), each with the queries rotated to its positions."""
    if q.shape[2] == 1:                                   # a generated token
        return _stair_one(q, k, v, i0, rope, scale, backend, last_start, stair_start,
                          stair_width)
    geo = StairGeometry.for_queries(i0, last_start, stair_start, stair_width)
    pos = _arange(i0, k.shape[2], q.device)
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
            rotate(k[:, :, D:], rope, _arange(D, Lk, q.device), ("lin", D, Lk)))


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
    :func:`attention_sets.attend_sets`: ``(q, k, v, mask)`` of the near keys
    they see, then of each far group's keys that the block's last row sees (a
    prefix of the group): those the first row sees too without a mask, the
    rest with ``mask [rows, keys]``."""
    N, E, D, dev = geo.stair_start, geo.stair_width, geo.deep, q.device
    rows, i_last = slice(a, a + len(ib)), int(ib[-1])
    out = []
    if near is not None:
        n0, n1 = max(D, int(ib[0]) - N + 1), i_last + 1
        jn = _arange(n0, n1, dev)
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
    between steps in one buffer (:meth:`DecodeMemo.split_rotated`): far keys
    at ``-(N + a_j)`` (:class:`StairGeometry`), near keys at ``j``; each step
    rotates only its new key and the key that left the near window.  One
    product scores every key against the query at ``i`` (near keys), ``m``
    and ``m + 1`` (far key ``j`` takes ``m`` where ``b_j < E - r``, ``m + 1``
    elsewhere), and a per-key pick keeps the right one: few operations a layer,
    since a decode step is bound by their count and by reading the keys.
    ``q [b, h, 1, d]``, ``k, v [b, kv_h, i+1, d]``; returns ``[b, h, 1, d_v]``."""
    N, E, s = geo.stair_start, geo.stair_width, geo.last_start
    bsz, h, _, d = q.shape
    kvh, L = k.shape[1], i + 1
    rep, n_far = h // kvh, max(0, i - N + 1)
    keys = rope.memo.split_rotated(rope.layer, ("stair", s, N, E), k, n_far, L, _same,
                                   lambda j: geo.key_position(j, 0), rope)
    m = (i - s) // E
    pos = rope.table(("stair-one-q", i), lambda: torch.tensor([i, m, m + 1], device=q.device))
    q3 = rotate(q.expand(bsz, h, 3, d), rope, pos, ("stair-one-q", i))
    scores = torch.bmm(q3.reshape(bsz * kvh, rep * 3, d),             # bmm: fewer launches
                       keys.reshape(bsz * kvh, L, d).transpose(1, 2))
    pick = rope.table(("stair-one-pick", s, N, E, i),
                      lambda: _stair_pick(geo, i, n_far, L, q.device).view(1, 1, 1, 1, L))
    scores = scores.view(bsz, kvh, rep, 3, L).gather(3, pick.expand(bsz, kvh, rep, 1, L))
    p = torch.softmax(scores.view(bsz, kvh, rep, L).float().mul_(scale), dim=-1).to(v.dtype)
    out = sets.pv(p, v, split=not sets.uses_cpu_paths(q, backend))
    return out.reshape(bsz, h, 1, -1)


def _stair_pick(geo: StairGeometry, i: int, n_far: int, L: int, device) -> torch.Tensor:
    """Which of the query's three rotations ``(i, m, m + 1)`` each key
    ``0..L-1`` scores with: 0 near, 1 far at ``m`` (``b_j < E - r``), 2 far at ``m + 1``."""
    N, E, s = geo.stair_start, geo.stair_width, geo.last_start
    pick = torch.zeros(L, dtype=torch.long, device=device)
    at_m = torch.remainder(s - N - _arange(0, n_far, device), E) < E - geo.residue(i)
    pick[:n_far] = torch.where(at_m, 1, 2)
    return pick


def _row_scores(q_rot, k_rot):
    """Scores ``[b, kv_h, rep, L]`` of one rotated query ``[b, h, 1, d]``
    against rotated keys ``[b, kv_h, L, d]`` (GQA folded: no key copies)."""
    b, h, _, d = q_rot.shape
    return torch.matmul(q_rot.reshape(b, k_rot.shape[1], h // k_rot.shape[1], d),
                        k_rot.transpose(-1, -2))


def _softmax_pv(scores, v, scale, q, backend):
    """One query's output ``[b, h, 1, d_v]`` from its scores ``[b, kv_h, rep,
    L_s]`` over consecutive key ranges covering ``v [b, kv_h, sum L_s, d_v]``."""
    logits = torch.cat(scores, dim=-1).float() * scale if len(scores) > 1 else \
        scores[0].float() * scale
    p = torch.softmax(logits, dim=-1).to(v.dtype)
    out = sets.pv(p, v, split=not sets.uses_cpu_paths(q, backend))
    return out.reshape(q.shape[0], q.shape[1], 1, -1)


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
    q_near = rotate(q, rope, _arange(i, i + 1, dev)).reshape(bsz, kvh, rep, d)
    k_near = rotate(k[:, :, n_far:], rope, _arange(n_far, i + 1, dev))
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
    return _softmax_pv(scores, v, scale, q, backend)


@kernel(Stair, fused=lambda m, i0: Rules(near=m.stair_start,
                                         stair=(0, m.stair_start, m.stair_width)))
def stair(method, q, k, v, i0, rope, scale, backend):
    """Stair PE over the whole causal matrix: Mesa's last-chunk rows with the
    last chunk starting at 0."""
    return _stair_rows(q, k, v, i0, rope, scale, backend, 0, method.stair_start,
                       method.stair_width)


# -- Mesa -------------------------------------------------------------------------------

def _mesa_blocked_rows(method: Mesa, seq_len: int) -> int:
    """No rows against masked blocks of every key: the middle chunks see
    ``first + C`` keys, the last chunk's near masks span ``stair_start`` plus a
    block and its deep far keys go unmasked (GPU: matmul scores within
    ``attention_sets.SCORE_BUDGET``, counted by the memory estimate)."""
    return 0


#: The last piece's O(n) copies of one layer: the far keys and their values grouped
#: (:func:`_far_groups`) and transients (the cache is presized by ``apply``).
MESA_KV_COPIES = 3


def _mesa_fused(method: Mesa, i0: int) -> "Rules | None":
    """Rules of a forward of last-chunk rows (a prefill's last piece):
    per-query Stair PE from the last chunk's start (no log scaling)."""
    plan = method.plan()
    if len(plan.chunks) == 1 or i0 < plan.last_start or method.stair != "per-query" \
            or method.log_scaling:
        return None
    return Rules(near=method.stair_start,
                 stair=(plan.last_start, method.stair_start, method.stair_width))


@kernel(Mesa, blocked_rows=_mesa_blocked_rows, kv_copies=MESA_KV_COPIES, fused=_mesa_fused)
def mesa(method, q, k, v, i0, rope, scale, backend):
    """Origin up to ``train_length``; past it, a forward's queries (the whole
    prompt, one piece of :meth:`Mesa.prefill_pieces`, or generated tokens)
    split into the first chunk (causal), whole middle chunks (one batch) and
    last-chunk rows (Stair PE)."""
    plan = method.plan()
    if len(plan.chunks) == 1:
        return origin(method, q, k, v, i0, rope, scale, backend)
    end, s, F = i0 + q.shape[2], plan.last_start, method.first_chunk
    _check_piece(plan, i0, end)
    parts = []
    if i0 == 0:
        parts.append(origin(method, q[:, :, :F], k[:, :, :F], v[:, :, :F], 0, rope, scale,
                            backend))
    middle = [c for c in plan.middle if i0 <= c[0] and c[1] <= end]
    if middle:
        parts.append(_mesa_middle(method, q, k, v, i0, middle, rope, scale, backend))
    if end > s:
        a = max(i0, s)
        parts.append(_mesa_last(method, q[:, :, a - i0:], k, v, a, rope, scale, backend))
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
    the queries from ``i0``, as one batch ``[b * chunks, h, C, d]``: each
    chunk's queries see the first chunk at ``0..first-1`` and themselves
    causally at ``first..first+C-1``.  Every chunk's keys are put behind the
    first chunk's (``[b * chunks, kv_h, first + C, d]``), so each chunk is one
    causal attention aligned at the bottom right: CPU in 256-row sub-blocks
    (:func:`attention_sets.causal_rows_cpu`), GPU SDPA with a lower-right
    causal bias, eager a ``[C, first + C]`` mask.  No query of the first chunk
    is recomputed.  Returns ``[b, h, chunks * C, d_v]``."""
    F, C, nc = method.first_chunk, method.chunk_size, len(middle)
    a, b = middle[0][0], middle[-1][1]
    bs, dev = q.shape[0], q.device

    def chunks(x, lo):  # rows a..b of x (which starts at position lo) -> [bs*nc, H, C, d]
        x = x[:, :, a - lo:b - lo]
        return x.reshape(bs, x.shape[1], nc, C, x.shape[-1]).transpose(1, 2) \
            .reshape(bs * nc, x.shape[1], C, x.shape[-1])

    def behind_first(head, x):  # [bs, H, F, d], [bs*nc, H, C, d] -> [bs*nc, H, F+C, d]
        return torch.cat((head.repeat_interleave(nc, dim=0), x), dim=2)

    own = ("lin", F, F + C)
    qc = rotate(chunks(q, i0), rope, _arange(F, F + C, dev), own)
    kk = behind_first(rotate(k[:, :, :F], rope, _arange(0, F, dev), ("lin", 0, F)),
                      rotate(chunks(k, 0), rope, _arange(F, F + C, dev), own))
    vv = behind_first(v[:, :, :F], chunks(v, 0))
    if backend in sets.FUSED_BACKENDS and sets.uses_cpu_paths(q, backend):
        o = sets.causal_rows_cpu(qc, kk, vv, F, scale)
    elif backend in sets.FUSED_BACKENDS:
        o = sets.causal_lower_right_sdpa(qc, kk, vv, scale, backend)
    else:
        mask = torch.ones(F + C, F + C, dtype=torch.bool, device=dev).tril()[F:]
        g = max(1, sets.block_size(q, F + C, backend) // C)
        o = torch.cat([sets.sdpa(qc[c:c + g], kk[c:c + g], vv[c:c + g], mask, scale, backend)
                       for c in range(0, bs * nc, g)], dim=0)
    o = o.reshape(bs, nc, o.shape[1], C, -1).transpose(1, 2)
    return o.reshape(bs, o.shape[1], nc * C, -1)


def _mesa_last(method: Mesa, q, k, v, i0, rope, scale, backend):
    """Last-chunk (and generated) queries ``i0..`` over all keys with Stair PE:
    per query (:func:`_stair_rows`) or anchored at the chunk start (keys before
    it at ``P(s - j)``, plus the query's offset)."""
    s, N, E = method.plan().last_start, method.stair_start, method.stair_width
    q = _log_scale(q, method, _arange(i0, i0 + q.shape[2], q.device))
    if method.stair == "anchored":
        return _near_far(
            q, k, v, i0, rope, scale, backend, near=k.shape[2], near_floor=s,
            far_keys=lambda lo, hi: (0, s),
            far_q_pos=lambda i: i - s,
            far_k_pos=lambda j: -_stair_position(s - j, N, E),
            far_visible=lambda i, j: j < s)
    return _stair_rows(q, k, v, i0, rope, scale, backend, s, N, E)


# -- exact rows for probes ----------------------------------------------------------------

def dense_logits(method: Method, q_rows, k, rows, rope: Rope, scale: float):
    """Exact pre-softmax attention logits for a few query ``rows`` straight
    from the layout: ``logits[r, j] = scale * (R(rel[r, j]) q_r) . k_j``, ``-inf``
    where the layout hides key ``j`` from row ``r``.

    ``q_rows [b, h, R, d]`` un-rotated queries of absolute positions ``rows``
    (the method's ``query_scale`` applied here); ``k [b, kv_h, kv_len, d]``.
    Returns ``[b, h, R, kv_len]`` (float32).
    """
    Lk, dev = k.shape[2], k.device
    rel, vis = method.relative(np.asarray(rows)[:, None], np.arange(Lk)[None, :])
    rel = torch.as_tensor(np.where(vis, rel, 0), dtype=torch.float32, device=dev)
    vis = torch.as_tensor(vis, device=dev)
    rep = q_rows.shape[1] // k.shape[1]
    kk = k.repeat_interleave(rep, 1).to(torch.float32)
    sq = Rope(rope.inv_freq, rope.scaling ** 2)
    factor = torch.as_tensor(method.query_scale(rows), dtype=torch.float32, device=dev)
    logits = []
    for r in range(len(rows)):
        qr = q_rows[:, :, r:r + 1].to(torch.float32) * factor[r]   # [b,h,1,d]
        qrot = rotate(qr.expand(-1, -1, Lk, -1), sq, rel[r])      # [b,h,Lk,d]
        sc = (qrot * kk).sum(-1) * scale
        logits.append(sc.masked_fill(~vis[r], float("-inf")))
    return torch.stack(logits, dim=2)


def dense_rows(method: Method, q_rows, k, rows, rope: Rope, scale: float):
    """Exact attention probabilities for a few query ``rows``: the softmax of
    :func:`dense_logits` (same arguments), ``[b, h, R, kv_len]`` (float32)."""
    return torch.softmax(dense_logits(method, q_rows, k, rows, rope, scale), dim=-1)
