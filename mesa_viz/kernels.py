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
keys, 0 where SDPA's fused causal kernel serves.  GPU-only variants (Triton,
...) dispatch inside an entry on ``q.device``, beside the CPU path.

Stair PE (Mesa's last chunk, the ``stair`` method) is one piece of code,
:func:`_stair_rows`, over a :class:`StairGeometry`, whose docstring holds the
residue-class factorisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, NamedTuple

import numpy as np
import torch

from . import attention_sets as sets
from .methods import (DualChunk, DynamicNTK, LeakyReRoPE, LMInfinite, Mesa, Method, NTKAware,
                      Origin, PositionInterpolation, ReRoPE, SelfExtend, Stair, StreamingLLM,
                      String, YaRN)

__all__ = ["Rope", "RopeTables", "rotate", "attend", "kernel", "kernel_for", "Kernel",
           "KERNELS", "StairGeometry", "dense_rows"]


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
    """

    __slots__ = ("rope", "method", "_tables")

    def __init__(self, rope: Rope, method: Method):
        self.rope, self.method, self._tables = rope, method, {}

    def cos_sin(self, pos: torch.Tensor, dtype: torch.dtype, key=None):
        """:meth:`Rope.cos_sin`, kept under ``(key, dtype)`` when ``key`` is given."""
        if key is None:
            return self.rope.cos_sin(pos, dtype)
        if (key, dtype) not in self._tables:
            self._tables[key, dtype] = self.rope.cos_sin(pos, dtype)
        return self._tables[key, dtype]


def rotate(x: torch.Tensor, rope: "Rope | RopeTables", pos: torch.Tensor,
           key=None) -> torch.Tensor:
    """``x [..., len(pos), head_dim]`` rotated to positions ``pos``: channel
    ``c`` pairs with ``c + rot_dim/2`` (half-split RoPE); channels past
    ``rot_dim`` pass through (partial rotary).  ``key``: see :class:`RopeTables`."""
    C, S = rope.cos_sin(pos, x.dtype) if key is None else rope.cos_sin(pos, x.dtype, key)
    half = C.shape[-1]
    xr = x[..., :2 * half].unflatten(-1, (2, half))                 # [..., L, 2, half]
    out = torch.addcmul(xr * C, xr.flip(-2), S).flatten(-2)
    if 2 * half < x.shape[-1]:
        out = torch.cat((out, x[..., 2 * half:]), dim=-1)
    return out


def _arange(a, b, device):
    return torch.arange(a, b, device=device)


# -- the registry -----------------------------------------------------------------------

KernelFn = Callable[..., torch.Tensor]


def _every_row(method: Method, seq_len: int) -> int:
    return int(seq_len)


@dataclass(frozen=True)
class Kernel:
    """A registry entry: ``run(method, q, k, v, i0, rope, scale, backend)``
    (module doc) and ``blocked_rows(method, seq_len)`` for memory estimates."""

    run: KernelFn
    blocked_rows: Callable[[Method, int], int] = _every_row


#: Method class -> Kernel; written only at import, by :func:`kernel`.
_REGISTRY: dict[type[Method], Kernel] = {}
#: Read-only view of the registry.
KERNELS = MappingProxyType(_REGISTRY)


def kernel(*classes: type[Method], blocked_rows: Callable[[Method, int], int] = _every_row):
    """Decorator registering a kernel for each of ``classes`` (exact classes:
    a subclass needs its own entry)."""
    def register(fn: KernelFn) -> KernelFn:
        for cls in classes:
            if cls in _REGISTRY:
                raise ValueError(f"method class {cls.__name__} already has a kernel "
                                 f"({_REGISTRY[cls].run.__name__})")
            _REGISTRY[cls] = Kernel(fn, blocked_rows)
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
    run = kernel_for(method).run
    tables = rope if isinstance(rope, RopeTables) else RopeTables(rope, method)
    if tables.method != method:
        raise ValueError(f"RopeTables made for {tables.method!r} cannot serve {method!r}: "
                         "make one per forward and method")
    return run(method, q, k, v, i0, tables, scale, backend)


# -- origin -----------------------------------------------------------------------------

@kernel(Origin, DynamicNTK, blocked_rows=lambda method, seq_len: 0)
def origin(method, q, k, v, i0, rope, scale, backend):
    """Linear positions: query ``i`` and key ``j`` rotated to ``i`` and ``j``."""
    Lq, Lk, dev = q.shape[2], k.shape[2], q.device
    qr = rotate(q, rope, _arange(i0, i0 + Lq, dev), ("lin", i0, i0 + Lq))
    kr = rotate(k, rope, _arange(0, Lk, dev), ("lin", 0, Lk))
    if Lq == 1:
        return sets.sdpa(qr, kr, v, None, scale, backend)
    if backend == "sdpa" and i0 == 0 and Lq == Lk:        # flash/efficient causal kernel
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


@kernel(ReRoPE)
def rerope(method, q, k, v, i0, rope, scale, backend):
    """Far keys at ``window``: query rotated to ``window``, keys to 0."""
    w = method.window
    return _beyond_window(q, k, v, i0, rope, scale, backend, w, *_at_window(w))


@kernel(LeakyReRoPE)
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


@kernel(StreamingLLM)
def streaming_llm(method, q, k, v, i0, rope, scale, backend):
    """Sinks at their cache slots: query at ``min(i, sink_tokens + window - 1)``."""
    last_slot = method.sink_tokens + method.window - 1
    return _sinks(method, q, k, v, i0, rope, scale, backend,
                  lambda i: torch.clamp(i, max=last_slot), lambda j: j)


@kernel(LMInfinite)
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

    ``deep = D``: keys ``0..D-1`` are far for every query of a call from
    ``i0`` (``D = max(0, i0 - N + 1)``).  They are rotated once, to ``-(N +
    a_j)``, and sorted by ``b_j``; class ``r`` scores those with ``b_j < E - r``
    with its query at ``m`` and the rest at ``m + 1`` (two contiguous ranges).
    Far keys past ``D`` are rotated per class.  A single query (a decode step)
    needs no classes: far keys with the same step form runs of ``E``, and the
    query is rotated to each step instead (:func:`_stair_one`).
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


class _StairKeys(NamedTuple):
    """The keys of one :func:`_stair_rows` call, prepared once for every class."""

    k: torch.Tensor                  # [b, kv_h, kv_len, d] un-rotated
    v: torch.Tensor
    near: torch.Tensor               # keys D.. at their own positions
    deep: tuple | None               # (k_deep, v_deep, bounds) of _deep_keys, or None


class _ClassRows(NamedTuple):
    """The queries of one residue class ``r``, rotated for each key set."""

    r: int
    pos: torch.Tensor                # [R] absolute positions i
    near: torch.Tensor               # [b, h, R, d] at i
    step: torch.Tensor               # at m
    step1: torch.Tensor | None       # at m + 1 (for the deep keys), or None


def _stair_rows(q, k, v, i0, rope, scale, backend, last_start, stair_start, stair_width):
    """Queries ``i0..`` (all ``>= last_start``) over keys ``0..i`` with per-query
    Stair PE (:class:`StairGeometry`).  ``q [b, h, q_len, d]``, ``k, v [b,
    kv_h, i0 + q_len, d]``; returns ``[b, h, q_len, d_v]``."""
    if q.shape[2] == 1:                                   # a generated token
        return _stair_one(q, k, v, i0, rope, scale, backend, stair_start, stair_width)
    geo = StairGeometry.for_queries(i0, last_start, stair_start, stair_width)
    D, E, dev = geo.deep, stair_width, q.device
    Lk, Lq = k.shape[2], q.shape[2]
    k_near = rotate(k[:, :, D:], rope, _arange(D, Lk, dev), ("lin", D, Lk))
    keys = _StairKeys(k, v, k_near, _deep_keys(k, v, rope, geo) if D else None)
    out = torch.empty(q.shape[:3] + (v.shape[-1],), dtype=q.dtype, device=dev)
    for x in range(min(E, Lq)):                           # one residue class each
        idx = torch.arange(x, Lq, E, device=dev)
        rows = _class_rows(geo, q[:, :, idx], i0 + idx, rope, (i0, Lq, x))
        out[:, :, idx] = _stair_class(geo, rows, keys, rope, scale, backend)
    return out


def _class_rows(geo: StairGeometry, q, i, rope, name) -> _ClassRows:
    """The queries ``q [b, h, R, d]`` at positions ``i`` of one residue class,
    rotated at ``i``, at their step ``m`` and (with deep keys) at ``m + 1``;
    ``name`` keys their tables."""
    step = geo.step(i)
    return _ClassRows(geo.residue(int(i[0])), i, rotate(q, rope, i, ("lin-class", *name)),
                      rotate(q, rope, step, ("stair-q", *name)),
                      rotate(q, rope, step + 1, ("stair-q1", *name)) if geo.deep else None)


def _deep_keys(k, v, rope, geo: StairGeometry):
    """Far keys ``0..D-1``, seen by every query of the call, rotated once to
    ``-(N + a_j)`` and sorted by ``b_j`` (:class:`StairGeometry`).  Returns
    ``(k_deep, v_deep, bounds)``, ``bounds[b]`` the start of group ``b``
    (``bounds[E] = D``)."""
    D, E = geo.deep, geo.stair_width
    j = _arange(0, D, k.device)
    b = torch.remainder(geo.last_start - geo.stair_start - j, E)
    order = torch.argsort(b * D + j)                      # by group, then by position
    kd = rotate(k.index_select(2, order), rope, geo.key_position(j[order], 0),
                ("deep", D, geo.last_start, geo.stair_start, E))
    bounds = [0] + torch.cumsum(torch.bincount(b, minlength=E), 0).tolist()
    return kd, v.index_select(2, order), bounds


def _stair_class(geo: StairGeometry, rows: _ClassRows, keys: _StairKeys, rope, scale, backend):
    """The queries of one residue class over near keys, far keys past the deep
    ones (rotated here to :meth:`StairGeometry.key_position`) and the deep keys
    (:func:`_deep_keys`), in query blocks."""
    N, E, D, r = geo.stair_start, geo.stair_width, geo.deep, rows.r
    dev = rows.near.device
    f_all = max(D, int(rows.pos[-1]) - N + 1)             # far keys of the last query
    je = _arange(D, f_all, dev)
    k_edge = rotate(keys.k[:, :, D:f_all], rope, geo.key_position(je, r), ("stair-k", r, D, f_all))
    deep_sets = []
    if keys.deep is not None:
        kd, vd, bounds = keys.deep
        cut = bounds[E - r]
        deep_sets = [(kd[:, :, :cut], vd[:, :, :cut], None),
                     (kd[:, :, cut:], vd[:, :, cut:], rows.step1)]
    out = []
    B = sets.block_size(rows.near, keys.k.shape[2] + N, backend)
    for a in range(0, rows.near.shape[2], B):
        ib = rows.pos[a:a + B]
        lo, hi = int(ib[0]), int(ib[-1])
        n0, f1 = max(0, lo - N + 1), max(D, hi - N + 1)
        jn = _arange(n0, hi + 1, dev)
        near_mask = (jn[None, :] <= ib[:, None]) & (ib[:, None] - jn[None, :] < N)
        far_mask = ib[:, None] - je[None, :f1 - D] >= N
        q_step = rows.step[:, :, a:a + B]
        key_sets = [(rows.near[:, :, a:a + B], keys.near[:, :, n0 - D:hi + 1 - D],
                     keys.v[:, :, n0:hi + 1], near_mask),
                    (q_step, k_edge[:, :, :f1 - D], keys.v[:, :, D:f1], far_mask)]
        key_sets += [(q_step if q_deep is None else q_deep[:, :, a:a + B], kx, vx, None)
                     for kx, vx, q_deep in deep_sets]
        out.append(sets.attend_sets(key_sets, scale, backend))
    return torch.cat(out, dim=2)


def _stair_one(q, k, v, i, rope, scale, backend, stair_start, stair_width):
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
    logits = torch.cat(scores, dim=-1).float() * scale                  # [b, kvh, rep, i+1]
    p = torch.softmax(logits, dim=-1).to(v.dtype)
    return sets.pv(p, v, split=not sets.uses_cpu_paths(q, backend)).reshape(bsz, h, 1, -1)


@kernel(Stair)
def stair(method, q, k, v, i0, rope, scale, backend):
    """Stair PE over the whole causal matrix: Mesa's last-chunk rows with the
    last chunk starting at 0."""
    return _stair_rows(q, k, v, i0, rope, scale, backend, 0, method.stair_start,
                       method.stair_width)


# -- Mesa -------------------------------------------------------------------------------

def _mesa_blocked_rows(method: Mesa, seq_len: int) -> int:
    plan = method.plan()
    return 0 if len(plan.chunks) == 1 else int(seq_len) - plan.last_start


@kernel(Mesa, blocked_rows=_mesa_blocked_rows)
def mesa(method, q, k, v, i0, rope, scale, backend):
    """Origin up to ``train_length``; past it the first chunk causally, the
    middle chunks as one batch, the last chunk (and every generated token) with
    Stair PE."""
    plan = method.plan()
    if len(plan.chunks) == 1:
        return origin(method, q, k, v, i0, rope, scale, backend)
    if i0 >= method.prefill_length:                           # generated tokens
        return _mesa_last(method, q, k, v, i0, rope, scale, backend)
    if i0 != 0 or q.shape[2] != method.prefill_length:
        raise ValueError(
            f"Mesa prefill must be one forward of the whole prompt "
            f"({method.prefill_length} tokens) from position 0, got {q.shape[2]} "
            f"tokens from position {i0}")
    first, s = method.first_chunk, plan.last_start
    parts = [origin(method, q[:, :, :first], k[:, :, :first], v[:, :, :first], 0, rope,
                    scale, backend)]
    if plan.middle:
        parts.append(_mesa_middle(method, q, k, v, rope, scale, backend))
    parts.append(_mesa_last(method, q[:, :, s:], k, v, s, rope, scale, backend))
    return torch.cat(parts, dim=2)


def _log_scale(q, method: Mesa, i):
    if not method.log_scaling:
        return q
    f = torch.clamp(torch.log(i.to(torch.float32) + 1) / math.log(method.train_length), min=1)
    return q * f.to(q.dtype)[:, None]


def _mesa_middle(method: Mesa, q, k, v, rope, scale, backend):
    """All middle chunks as one batch: chunk queries see the first chunk at
    ``0..first-1`` and themselves causally at ``first..first+C-1``.

    Each chunk is put behind a copy of the first chunk, so the whole batch is
    one plain causal attention over ``first + C`` tokens (SDPA's fused causal
    kernel, no mask); the first chunk's own rows are recomputed and dropped
    (``first^2/2`` extra pairs per chunk).
    """
    plan = method.plan()
    first, C = method.first_chunk, method.chunk_size
    nc, (a, b) = len(plan.middle), (plan.middle[0][0], plan.middle[-1][1])
    bs, h, _, d = q.shape
    dev = q.device

    def chunks(x):  # [b, H, nc*C, d] -> [b*nc, H, C, d]
        return x[:, :, a:b].reshape(bs, x.shape[1], nc, C, x.shape[-1]).transpose(1, 2) \
            .reshape(bs * nc, x.shape[1], C, x.shape[-1])

    def behind_first(head, x, key):  # [b, H, first, d], [b, H, L, d] -> [b*nc, H, first+C, d]
        head = head if key is None else rotate(head, rope, _arange(0, first, dev), key)
        x = chunks(x) if key is None else rotate(chunks(x), rope, _arange(first, first + C, dev),
                                                 ("lin", first, first + C))
        return torch.cat((head.repeat_interleave(nc, dim=0), x), dim=2)

    key = ("lin", 0, first)
    qq, kk, vv = (behind_first(q[:, :, :first], q, key), behind_first(k[:, :, :first], k, key),
                  behind_first(v[:, :, :first], v, None))
    if backend == "sdpa" and sets.uses_cpu_paths(q, backend):
        o = sets.causal_rows_cpu(qq, kk, vv, first, scale)
    elif backend == "sdpa":
        o = sets.causal_sdpa(qq, kk, vv, scale)[:, :, first:]
    else:
        mask = torch.ones(first + C, first + C, dtype=torch.bool, device=dev).tril()[first:]
        g = max(1, sets.block_size(q, first + C, backend) // C)
        o = torch.cat([sets.sdpa(qq[c:c + g, :, first:], kk[c:c + g], vv[c:c + g], mask, scale,
                                 backend) for c in range(0, bs * nc, g)], dim=0)
    o = o.reshape(bs, nc, h, C, -1).transpose(1, 2)
    return o.reshape(bs, h, nc * C, -1)


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

def dense_rows(method: Method, q_rows, k, rows, rope: Rope, scale: float):
    """Exact attention probabilities for a few query ``rows`` straight from the
    layout: ``scores[r, j] = (R(rel[r, j]) q_r) . k_j``.

    ``q_rows [b, h, R, d]`` un-rotated queries of absolute positions ``rows``;
    ``k [b, kv_h, kv_len, d]``.  Returns probabilities ``[b, h, R, kv_len]``
    (float32).
    """
    Lk, dev = k.shape[2], k.device
    rel, vis = method.relative(np.asarray(rows)[:, None], np.arange(Lk)[None, :])
    rel = torch.as_tensor(np.where(vis, rel, 0), dtype=torch.float32, device=dev)
    vis = torch.as_tensor(vis, device=dev)
    rep = q_rows.shape[1] // k.shape[1]
    kk = k.repeat_interleave(rep, 1).to(torch.float32)
    sq = Rope(rope.inv_freq, rope.scaling ** 2)
    factor = torch.as_tensor(method.query_scale(rows), dtype=torch.float32, device=dev)
    probs = []
    for r in range(len(rows)):
        qr = q_rows[:, :, r:r + 1].to(torch.float32) * factor[r]   # [b,h,1,d]
        qrot = rotate(qr.expand(-1, -1, Lk, -1), sq, rel[r])      # [b,h,Lk,d]
        sc = (qrot * kk).sum(-1) * scale
        sc = sc.masked_fill(~vis[r], float("-inf"))
        probs.append(torch.softmax(sc, dim=-1))
    return torch.stack(probs, dim=2)
