"""Extrapolation methods as values: frozen dataclasses of the paper's parameters.

Pure numpy, no torch and no transformers.  Every method answers one question,
``relative(i, j)``: for query ``i`` and key ``j`` (absolute token indices, any
broadcastable integer arrays), which relative position does attention use, and
may ``i`` see ``j`` at all.  Layouts, the attention kernels and the tests'
independent references are all built on that answer.

A method is first *resolved* for a sequence: defaults derived from
``train_length`` (the model's training length, ``T``) are filled in and the
parameters validated, e.g.::

    Mesa().resolve(seq_len=16384, train_length=8192)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

__all__ = [
    "Method", "Origin", "Stair", "ReRoPE", "LeakyReRoPE", "DynamicNTK",
    "StreamingLLM", "LMInfinite", "Mesa", "ChunkPlan", "METHODS",
    "get_method", "stair_position",
]


def _check_int(name: str, value, low: int, high: int | None = None, why: str = "") -> None:
    """Raise ValueError naming ``name`` unless ``low <= value (<= high)``."""
    allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
    allowed += f" ({why})" if why else ""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}={value!r} must be an integer {allowed}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name}={value} is out of range: allowed {allowed}")


def stair_position(t, stair_start: int, stair_width: int):
    """Stair PE: ``P(t) = t`` if ``t < stair_start`` else
    ``stair_start + floor((t - stair_start) / stair_width)`` (integer arrays)."""
    t = np.asarray(t)
    far = stair_start + np.floor_divide(t - stair_start, stair_width)
    return np.where(t < stair_start, t, far)


@dataclass(frozen=True)
class Method:
    """Base of all methods.  ``train_length`` is ``T``; ``None`` until resolved."""

    name: ClassVar[str] = ""
    chunked: ClassVar[bool] = False
    train_length: int | None = None

    # -- resolution ---------------------------------------------------------
    def resolve(self, seq_len: int, train_length: int | None = None,
                prefill_length: int | None = None) -> "Method":
        """Fill defaults for a sequence of ``seq_len`` tokens and validate.

        ``train_length`` overrides the method's own; if both are missing the
        sequence length is used (no extrapolation).  ``prefill_length`` is the
        prompt length for methods whose plan is fixed at prefill (Mesa).
        """
        _check_int("seq_len", seq_len, 1)
        T = self.train_length if train_length is None else train_length
        T = max(2, seq_len) if T is None else T
        _check_int("train_length", T, 2)
        resolved = dataclasses.replace(self, train_length=int(T))
        return resolved._fill(int(seq_len), prefill_length)

    def _fill(self, seq_len: int, prefill_length: int | None) -> "Method":
        return self

    def params(self) -> dict:
        """The method's parameters as a plain dict (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    # -- the layout rule ------------------------------------------------------
    def relative(self, i, j):
        """Relative positions and visibility for queries ``i`` and keys ``j``.

        Returns ``(rel, visible)`` broadcast to ``np.broadcast(i, j).shape``;
        ``rel`` is meaningful only where ``visible``.
        """
        i, j = np.asarray(i), np.asarray(j)
        t = i - j
        return t, t >= 0

    def rope_rule(self) -> str | None:
        """A frequency rule this method applies to RoPE, if any (reported)."""
        return None


@dataclass(frozen=True)
class Origin(Method):
    """Plain causal attention with linear positions ``t = i - j``."""

    name: ClassVar[str] = "origin"


@dataclass(frozen=True)
class Stair(Method):
    """Stair PE over the whole causal matrix (Figure 1, right)."""

    name: ClassVar[str] = "stair"
    stair_start: int | None = None
    stair_width: int | None = None

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        N = T // 2 if self.stair_start is None else self.stair_start
        _check_int("stair_start", N, 0)
        E = self.stair_width
        if E is None:
            E = _fit_stair_width(seq_len - 1, N, T, "stair_start")
        _check_int("stair_width", E, 1)
        return dataclasses.replace(self, stair_start=N, stair_width=E)

    def relative(self, i, j):
        t, vis = Method.relative(self, i, j)
        return stair_position(t, self.stair_start, self.stair_width), vis


def _fit_stair_width(max_t: int, stair_start: int, train_length: int,
                     start_name: str = "stair_start") -> int:
    """Smallest stair width ``E`` keeping ``P(max_t) <= train_length - 1``."""
    if max_t < train_length:
        return 1
    if stair_start > train_length - 1:
        raise ValueError(
            f"{start_name}={stair_start} leaves no room for a stair below "
            f"train_length={train_length}: allowed [0, {train_length - 1}]")
    return (max_t - stair_start) // (train_length - stair_start) + 1


@dataclass(frozen=True)
class ReRoPE(Method):
    """ReRoPE: ``t`` inside ``window``, ``window`` beyond it."""

    name: ClassVar[str] = "rerope"
    window: int | None = None

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        w = T // 2 if self.window is None else self.window
        _check_int("window", w, 1, T - 1)
        return dataclasses.replace(self, window=w)

    def relative(self, i, j):
        t, vis = Method.relative(self, i, j)
        return np.minimum(t, self.window), vis


@dataclass(frozen=True)
class LeakyReRoPE(Method):
    """Leaky-ReRoPE: ``t`` inside ``window``, ``window + (t - window) / leak`` beyond.

    ``leak`` defaults to the smallest factor (>= 1) that keeps every position
    below ``train_length``.  Relative positions are fractional (float).
    """

    name: ClassVar[str] = "leaky-rerope"
    window: int | None = None
    leak: float | None = None

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        w = T // 2 if self.window is None else self.window
        _check_int("window", w, 1, T - 1)
        k = self.leak
        if k is None and seq_len - 1 <= w:
            k = 1.0
        elif k is None and w >= T - 1:
            raise ValueError(f"window={w} leaves no room below train_length={T} for "
                             f"{seq_len} tokens: allowed window <= {T - 2}, or pass leak=")
        elif k is None:
            k = max(1.0, (seq_len - 1 - w) / (T - 1 - w))
        if not (isinstance(k, (int, float)) and k >= 1):
            raise ValueError(f"leak={k!r} must be a number >= 1")
        return dataclasses.replace(self, window=w, leak=float(k))

    def relative(self, i, j):
        t, vis = Method.relative(self, i, j)
        far = self.window + (t - self.window) / self.leak
        return np.where(t < self.window, t, far).astype(float), vis


@dataclass(frozen=True)
class DynamicNTK(Method):
    """Dynamic NTK: linear positions, RoPE base grown with the sequence.

    Applied through transformers' own ``rope_parameters`` (type ``dynamic``).
    """

    name: ClassVar[str] = "dynamic-ntk"
    factor: float = 1.0

    def _fill(self, seq_len, prefill_length):
        if not (isinstance(self.factor, (int, float)) and self.factor >= 1):
            raise ValueError(f"factor={self.factor!r} must be a number >= 1")
        return self

    def rope_rule(self) -> str:
        return (f"for n > T={self.train_length}: base' = base * (factor*n/T - "
                f"(factor-1)) ** (d/(d-2)), factor={self.factor}; positions linear")


@dataclass(frozen=True)
class _SinkWindow(Method):
    """Shared shape of StreamingLLM and LM-Infinite: sinks plus a local window."""

    sink_tokens: int | None = None
    window: int | None = None

    def _visible(self, i, j):
        t = np.asarray(i) - np.asarray(j)
        return t, (t >= 0) & ((t < self.window) | (np.asarray(j) < self.sink_tokens))


@dataclass(frozen=True)
class StreamingLLM(_SinkWindow):
    """StreamingLLM: ``sink_tokens`` first keys plus the last ``window`` keys;
    positions are cache slots (a cache of ``sink_tokens + window`` keys)."""

    name: ClassVar[str] = "streaming-llm"

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        S = 4 if self.sink_tokens is None else self.sink_tokens
        _check_int("sink_tokens", S, 0, T - 1)
        W = T - S if self.window is None else self.window
        _check_int("window", W, 1, T - S)
        return dataclasses.replace(self, sink_tokens=S, window=W)

    def relative(self, i, j):
        t, vis = self._visible(i, j)
        slot = np.minimum(np.asarray(i), self.sink_tokens + self.window - 1)
        return np.where(t < self.window, t, slot - np.asarray(j)), vis


@dataclass(frozen=True)
class LMInfinite(_SinkWindow):
    """LM-Infinite: Λ-shaped mask (``sink_tokens`` global keys + local ``window``),
    distances capped at ``window``."""

    name: ClassVar[str] = "lm-infinite"

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        S = 10 if self.sink_tokens is None else self.sink_tokens
        _check_int("sink_tokens", S, 0)
        W = T - 1 if self.window is None else self.window
        _check_int("window", W, 1, T - 1)
        return dataclasses.replace(self, sink_tokens=S, window=W)

    def relative(self, i, j):
        t, vis = self._visible(i, j)
        return np.minimum(t, self.window), vis


@dataclass(frozen=True)
class ChunkPlan:
    """Mesa's chunks: ``[0, first_chunk)``, middle chunks of ``chunk_size``,
    then the last chunk.  ``chunks`` holds ``(start, stop)`` pairs."""

    chunks: tuple[tuple[int, int], ...]

    @property
    def first(self) -> tuple[int, int]:
        return self.chunks[0]

    @property
    def middle(self) -> tuple[tuple[int, int], ...]:
        return self.chunks[1:-1] if len(self.chunks) > 2 else ()

    @property
    def last(self) -> tuple[int, int]:
        return self.chunks[-1]

    @property
    def last_start(self) -> int:
        return self.chunks[-1][0] if len(self.chunks) > 1 else 0

    def to_dict(self) -> dict:
        return {"chunks": [list(c) for c in self.chunks]}


@dataclass(frozen=True)
class Mesa(Method):
    """Mesa-Extrapolation (Figure 1, left).

    For ``n <= train_length`` it is Origin.  Otherwise the prompt is cut into
    the first chunk, middle chunks of ``chunk_size`` (default: at most
    ``train_length // 8``, sized from the prompt so the last chunk is close to
    ``last_chunk``, the authors' DynamicSplit; each sees the first chunk
    at positions ``0..first_chunk-1`` and itself after it), and a last chunk of
    at least ``last_chunk`` tokens that sees every earlier key through Stair PE.
    By default the stair starts at ``train_length // 4`` (anchored: at the
    chunk boundary, as the authors do) and its width is the
    smallest keeping every relative position below ``stair_limit``
    (``train_length // 2``): inside the hidden-state thresholds of the paper's
    theory (see README, Measurements).
    ``stair="per-query"`` is the paper's exact ``P(i - j)``; ``"anchored"`` is
    the authors' code: keys before the last chunk placed at ``P(start - j)``
    plus the query's offset.  ``log_scaling`` multiplies queries by
    ``max(1, log(i + 1) / log(train_length))``.
    """

    name: ClassVar[str] = "mesa"
    chunked: ClassVar[bool] = True
    first_chunk: int | None = None
    chunk_size: int | None = None
    last_chunk: int | None = None
    stair_start: int | None = None
    stair_width: int | None = None
    stair_limit: int | None = None
    stair: str = "per-query"
    log_scaling: bool = False
    prefill_length: int | None = None

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        F = max(1, T // 16) if self.first_chunk is None else self.first_chunk
        _check_int("first_chunk", F, 1, T - 1, f"train_length={T}")
        L = max(1, T // 16) if self.last_chunk is None else self.last_chunk
        _check_int("last_chunk", L, 1, T)
        if self.stair not in ("per-query", "anchored"):
            raise ValueError(f"stair={self.stair!r}: allowed 'per-query' or 'anchored'")
        P = prefill_length if prefill_length is not None else self.prefill_length
        P = seq_len if P is None else P
        _check_int("prefill_length", P, 1, seq_len)
        C = self.chunk_size
        if C is None:                # DynamicSplit: equal chunks, last one close to last_chunk
            C, rest = max(1, min(T // 8, T - F)), P - F - L
            if P > T and rest > 0:
                C = max(1, rest // math.ceil(rest / C))
        _check_int("chunk_size", C, 1, T - F,
                   f"first_chunk + chunk_size <= train_length={T}")
        me = dataclasses.replace(self, first_chunk=F, chunk_size=C, last_chunk=L,
                                 prefill_length=P)
        N = self.stair_start
        if N is None:        # the authors' anchored stair starts at the chunk boundary
            N = 0 if self.stair == "anchored" else T // 4
        _check_int("stair_start", N, 0)
        limit = max(N + 1, T // 2) if self.stair_limit is None else self.stair_limit
        _check_int("stair_limit", limit, N + 1, T, "stair_start < stair_limit <= train_length")
        me = dataclasses.replace(me, stair_start=N, stair_limit=limit)
        E = self.stair_width
        if E is None:
            E = me._fit_width(seq_len)
        _check_int("stair_width", E, 1)
        return dataclasses.replace(me, stair_width=E)

    def _fit_width(self, seq_len: int) -> int:
        T, N = self.stair_limit, self.stair_start
        s = self.plan().last_start
        if self.stair == "per-query":
            return _fit_stair_width(seq_len - 1, N, T, "stair_start")
        offset = seq_len - 1 - s                # query offset inside the last chunk
        if s == 0:
            return 1
        if offset + N >= T:
            raise ValueError(
                f"stair_start={N} with a last chunk of {offset + 1} tokens cannot fit "
                f"stair_limit={T} (anchored stair): allowed stair_start <= {max(0, T - offset - 1)}")
        return _fit_stair_width(s, N, T - offset)

    def plan(self) -> ChunkPlan:
        """The chunk plan for the prefill of ``prefill_length`` tokens."""
        n, T = self.prefill_length, self.train_length
        if n <= T or n <= self.first_chunk:
            return ChunkPlan(((0, n),))
        F, C, L = self.first_chunk, self.chunk_size, self.last_chunk
        n_middle = max(0, (n - F - L) // C)
        chunks = [(0, F)] + [(F + k * C, F + (k + 1) * C) for k in range(n_middle)]
        chunks.append((F + n_middle * C, n))
        return ChunkPlan(tuple(chunks))

    def relative(self, i, j):
        i, j = np.broadcast_arrays(np.asarray(i), np.asarray(j))
        t = i - j
        plan = self.plan()
        if len(plan.chunks) == 1:
            return t, t >= 0
        F, s = self.first_chunk, plan.last_start
        starts = np.array([c[0] for c in plan.chunks])
        chunk_start = starts[np.searchsorted(starts, i, side="right") - 1]
        in_last = i >= s
        in_middle = (i >= F) & ~in_last
        vis = (t >= 0) & (~in_middle | (j < F) | (j >= chunk_start))
        rel = np.where(in_middle & (j < F), i - chunk_start + F - j, t)
        if self.stair == "per-query":
            stair = stair_position(t, self.stair_start, self.stair_width)
        else:
            stair = np.where(j >= s, t, (i - s) + stair_position(
                s - j, self.stair_start, self.stair_width))
        rel = np.where(in_last, stair, rel)
        return rel, vis


METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in
    (Origin, Stair, ReRoPE, LeakyReRoPE, DynamicNTK, StreamingLLM, LMInfinite, Mesa)
}


def get_method(method: "str | Method", **params) -> Method:
    """A method value from its name (or a Method, with parameters replaced)."""
    if isinstance(method, Method):
        return dataclasses.replace(method, **params) if params else method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: allowed {sorted(METHODS)}")
    cls = METHODS[method]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for method {method!r}: "
                         f"allowed {sorted(names)}")
    return cls(**params)
