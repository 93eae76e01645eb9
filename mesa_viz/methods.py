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
    resolve("mesa", 16384, train_length=8192, first_chunk=256)

Capabilities: what a method declares so that no other module decides by name
--------------------------------------------------------------------------------
Each method class states how it runs; layouts, the application, the kernels,
memory estimates and the bench read these and never test names or classes:

``name`` (ClassVar[str])
    The name in :data:`METHODS` (command line, JSON rows).
``native`` (ClassVar[bool])
    True: the model's own attention runs (linear positions ``t = i - j``,
    RoPE possibly re-parameterised by :meth:`Method.rope_parameters`); a
    kernel is then needed only when a probe captures attention rows.  False:
    ``mesa_viz.application.apply`` runs the method's kernel from the registry
    in ``mesa_viz.kernels`` (``@kernel(MethodClass)``) on keys cached before
    RoPE; a non-native method without a kernel is refused by ``apply()``.
``chunked`` (ClassVar[bool])
    True: the layout comes from a chunk plan, :meth:`Mesa.plan` (drawn by
    layouts and probes).
``decode`` (ClassVar[str])
    How forwards after the first are read.  ``"rows"``: the token at ``i`` is
    row ``i`` of ``relative``, whatever the forward it comes in (a prompt may
    be fed in pieces).  ``"prefill-plan"``: the layout depends on the prompt
    length, so the first forward (from position 0) must hold the whole prompt,
    whose length is ``prefill_length``; generated tokens are the rows after it.
``past_train_length`` (ClassVar[str])
    One line saying what the method does past ``train_length`` (``apply()``
    logs it once, where transformers would warn that the model's maximum
    length is exceeded).
:meth:`Method.rope_parameters` -> dict | None
    A RoPE frequency rule as transformers ``rope_parameters`` entries (merged
    over the model's; the application builds the model's rotary class from
    them with ``max_position_embeddings = train_length``), e.g. Dynamic-NTK
    ``{"rope_type": "dynamic", "factor": 2.0}``, linear PI ``{"rope_type":
    "linear", "factor": f}``, YaRN ``{"rope_type": "yarn", "factor": f,
    "original_max_position_embeddings": T}``, static NTK ``{"rope_type":
    "default", "rope_theta": base'}``.  ``model`` gives the model's own
    ``{"rope_theta": base, "rotary_dim": d}`` (static NTK scales them).
    :meth:`Method.rope_rule` says it in words (reported by layouts).
:meth:`Method.visible_pairs` -> int
    Query/key pairs the layout makes visible in ``seq_len`` tokens, in closed
    form (the bench's useful FLOPs).
:meth:`Method.query_scale` -> ``[len(rows)]``
    A per-query multiplier on ``q`` (Mesa's ``log_scaling``), 1 elsewhere.
:meth:`Method.span_cuts` -> ``(i, ...)``
    Where the layout cuts a token span (a query that cannot see the token
    before it), from :meth:`Method.relative`: a passkey row records the
    cuts inside its needle.
:meth:`Method.prefill_pieces` -> ``((start, stop), ...)``
    The forwards a prefill may run as, each over every layer on the same KV
    cache, so that activations stay within ``max_tokens`` tokens (Mesa: its
    middle chunks see only the first chunk and themselves); one by default.

Adding a method: one frozen dataclass here (parameters with ``None`` defaults
filled by ``_fill`` from ``train_length``, ``relative``, the capabilities that
differ from :class:`Method`'s), an entry in :data:`METHODS`, a kernel entry in
``mesa_viz/kernels.py`` unless it is native, and tests (every name in
``METHODS`` is checked against the dense reference by ``tests/test_apply.py``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

__all__ = [
    "Method", "Origin", "Stair", "ReRoPE", "LeakyReRoPE", "DynamicNTK",
    "StreamingLLM", "LMInfinite", "Mesa", "ChunkPlan", "SelfExtend", "DualChunk",
    "String", "PositionInterpolation", "NTKAware", "YaRN", "METHODS",
    "get_method", "resolve", "stair_position", "dynamic_split", "DECODE_MODES",
    "MESA_PRESETS",
]

#: The values of :attr:`Method.decode`.
DECODE_MODES = ("rows", "prefill-plan")


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


def _check_factor(value, name: str = "factor") -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a number >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
            or not value >= 1:
        raise ValueError(f"{name}={value!r} must be a number >= 1")


def _triangle(n: int) -> int:
    """Pairs ``j <= i`` among ``n`` tokens: ``n(n+1)/2``."""
    return n * (n + 1) // 2


def _capped_sum(count: int, cap: int) -> int:
    """``sum(min(u, cap) for u in 1..count)`` in closed form (0 if ``count <= 0``)."""
    count = max(0, count)
    return _triangle(min(count, cap)) + max(0, count - cap) * cap


@dataclass(frozen=True)
class Method:
    """Base of all methods.  ``train_length`` is ``T``; ``None`` until resolved.

    The ClassVars and the methods below are the capability API (module doc).
    """

    name: ClassVar[str] = ""
    native: ClassVar[bool] = False
    chunked: ClassVar[bool] = False
    decode: ClassVar[str] = "rows"
    past_train_length: ClassVar[str] = ""
    train_length: int | None = None

    # -- resolution ---------------------------------------------------------
    def resolve(self, seq_len: int, train_length: int | None = None,
                prefill_length: int | None = None) -> "Method":
        """Fill defaults for a sequence of ``seq_len`` tokens and validate.

        ``train_length`` overrides the method's own; if both are missing the
        sequence length is used (no extrapolation).  ``prefill_length`` is the
        prompt length for methods whose plan is fixed at prefill
        (``decode == "prefill-plan"``).
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

    def span_cuts(self, start: int, stop: int) -> tuple[int, ...]:
        """Where the (resolved) layout cuts the token span ``[start, stop)``:
        the positions ``i`` in it whose query cannot see token ``i - 1``, so
        that from ``i`` on the span's tokens before ``i`` are hidden (Mesa: a
        middle chunk starting inside a passkey needle, whose rest then reads
        without the words before it).  Read off :meth:`relative`, so every
        method answers alike; ``()`` for a causal layout."""
        _check_int("start", start, 0)
        _check_int("stop", stop, start + 1, None, f"start={start} < stop")
        i = np.arange(start + 1, stop)
        _, visible = self.relative(i, i - 1)
        return tuple(int(k) for k in i[~np.asarray(visible, dtype=bool)])

    def visible_pairs(self, seq_len: int) -> int:
        """Query/key pairs the (resolved) layout makes visible among ``seq_len``
        tokens, each counted once: every causal pair, ``n(n+1)/2``, unless a
        method's mask hides some.  (Kernels that score a key twice, with two
        rotations, do overhead, not extra visibility.)"""
        return _triangle(int(seq_len))

    def query_scale(self, rows) -> np.ndarray:
        """Per-query multiplier on ``q`` for absolute positions ``rows``
        (``[len(rows)]`` float64): 1 unless the method scales queries."""
        return np.ones(np.shape(rows), dtype=np.float64)

    def prefill_pieces(self, seq_len: int, max_tokens: int) -> tuple[tuple[int, int], ...]:
        """The consecutive ``(start, stop)`` token ranges a prefill of
        ``seq_len`` tokens runs as, one forward each (over every layer, on the
        same cache), none longer than ``max_tokens`` where the layout allows:
        one forward unless a method says otherwise."""
        _check_int("max_tokens", max_tokens, 1)
        return ((0, int(seq_len)),)

    # -- RoPE frequencies -------------------------------------------------------
    def rope_parameters(self, model: dict | None = None) -> dict | None:
        """transformers ``rope_parameters`` entries this method runs RoPE with
        (merged over the model's), or None for the model's own frequencies;
        ``model``: the model's ``{"rope_theta": base, "rotary_dim": d}``."""
        return None

    def rope_rule(self) -> str | None:
        """A frequency rule this method applies to RoPE, in words (reported)."""
        return None


#: On a GPU, the fewest tokens a prefill piece holds by default (more where half the
#: training length is more): smaller pieces are bound by the host's launches.  Measured on
#: an H200, random 1.1B Llama, T = 8192 (benchmarks/h200-run5): Mesa's prefill reached
#: 19-23 % of the matmul rate in pieces of 4,096 tokens, 28-30 % in pieces of 16,384.
GPU_PIECE_TOKENS = 16384


def default_piece_tokens(train_length: int, on_gpu: bool = False) -> int:
    """The most tokens one forward of a prefill in pieces holds unless told:
    half the training length (the activations of a piece stay those of a
    prompt the model was trained on), and on a GPU at least
    :data:`GPU_PIECE_TOKENS`."""
    half = max(1, int(train_length) // 2)
    return max(half, GPU_PIECE_TOKENS) if on_gpu else half


@dataclass(frozen=True)
class Origin(Method):
    """Plain causal attention with linear positions ``t = i - j``."""

    name: ClassVar[str] = "origin"
    native: ClassVar[bool] = True
    past_train_length: ClassVar[str] = (
        "linear positions past the training length (no extrapolation method: the "
        "baseline that fails)")


@dataclass(frozen=True)
class Stair(Method):
    """Stair PE over the whole causal matrix (Figure 1, right).

    ``stair_start`` (``N``) defaults to ``train_length // 2``, ``stair_width``
    (``E``) to the smallest keeping every position below ``train_length``.
    """

    name: ClassVar[str] = "stair"
    past_train_length: ClassVar[str] = (
        "distances past stair_start grow by one every stair_width tokens (Stair PE)")
    stair_start: int | None = None
    stair_width: int | None = None

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        N = T // 2 if self.stair_start is None else self.stair_start
        _check_int("stair_start", N, 0)
        E = self.stair_width
        if E is None:
            E = _fit_stair_width(seq_len - 1, N, T)
        _check_int("stair_width", E, 1)
        return dataclasses.replace(self, stair_start=N, stair_width=E)

    def relative(self, i, j):
        t, vis = Method.relative(self, i, j)
        return stair_position(t, self.stair_start, self.stair_width), vis


def _fit_stair_width(max_t: int, stair_start: int, limit: int,
                     limit_name: str = "train_length") -> int:
    """Smallest stair width ``E`` keeping ``P(max_t) <= limit - 1``."""
    if max_t < limit:
        return 1
    if stair_start > limit - 1:
        raise ValueError(
            f"stair_start={stair_start} leaves no room for a stair below "
            f"{limit_name}={limit}: allowed [0, {limit - 1}]")
    return (max_t - stair_start) // (limit - stair_start) + 1


@dataclass(frozen=True)
class ReRoPE(Method):
    """ReRoPE: ``t`` inside ``window``, ``window`` beyond it."""

    name: ClassVar[str] = "rerope"
    past_train_length: ClassVar[str] = "keys beyond window are all placed at window"
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
    past_train_length: ClassVar[str] = (
        "distances beyond window grow 1/leak as fast, staying below the training length")
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
    native: ClassVar[bool] = True
    past_train_length: ClassVar[str] = (
        "linear positions; transformers' dynamic RoPE grows the base with the length")
    factor: float = 1.0

    def _fill(self, seq_len, prefill_length):
        _check_factor(self.factor)
        return self

    def rope_parameters(self, model: dict | None = None) -> dict:
        return {"rope_type": "dynamic", "factor": float(self.factor)}

    def rope_rule(self) -> str:
        return (f"for n > T={self.train_length}: base' = base * (factor*n/T - "
                f"(factor-1)) ** (d/(d-2)), factor={self.factor}; positions linear")


@dataclass(frozen=True)
class _SinkWindow(Method):
    """Shared shape of StreamingLLM and LM-Infinite: ``sink_tokens`` first keys
    plus a local ``window`` of the most recent keys."""

    sink_tokens: int | None = None
    window: int | None = None

    def _visible(self, i, j):
        t = np.asarray(i) - np.asarray(j)
        return t, (t >= 0) & ((t < self.window) | (np.asarray(j) < self.sink_tokens))

    def visible_pairs(self, seq_len: int) -> int:
        """Per query ``i``: ``min(i + 1, window)`` local keys plus the
        ``min(sink_tokens, i - window + 1)`` sinks before the window."""
        n = int(seq_len)
        return _capped_sum(n, self.window) + _capped_sum(n - self.window, self.sink_tokens)


def _default_sinks(train_length: int, most: int) -> int:
    """``most`` sink tokens, fewer (a quarter of it, at least 1) at small ``train_length``."""
    return max(1, min(most, train_length // 4))


@dataclass(frozen=True)
class StreamingLLM(_SinkWindow):
    """StreamingLLM: ``sink_tokens`` first keys plus the last ``window`` keys;
    positions are cache slots (a cache of ``sink_tokens + window`` keys)."""

    name: ClassVar[str] = "streaming-llm"
    past_train_length: ClassVar[str] = (
        "only the sink tokens and the last window keys are seen, at cache-slot positions")

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        S = _default_sinks(T, 4) if self.sink_tokens is None else self.sink_tokens
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
    past_train_length: ClassVar[str] = (
        "only the sink tokens and a local window are seen, distances capped at window")

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        S = _default_sinks(T, 10) if self.sink_tokens is None else self.sink_tokens
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
    ``stair="per-query"`` (default) is the paper's exact ``P(i - j)``;
    ``"anchored"`` is the authors' code: keys before the last chunk placed at
    ``P(start - j)`` plus the query's offset.  ``log_scaling`` (default off)
    multiplies queries by ``max(1, log(i + 1) / log(train_length))``.

    ``preset`` (:data:`MESA_PRESETS`) resolves into explicit parameters (a
    parameter given explicitly overrides the preset's): ``"paper"`` is
    Appendix B.2 (Algorithm 2's DynamicSplit with ``F = 100``, ``L = 512``,
    ``M_max = 200``; Stair PE ``N = 512``, ``E = 50``, per query, floor form;
    no log-n scaling); ``"authors-code"`` is what the released code runs
    (its DynamicSplit variant, the stair anchored where the code anchors it
    with ``E = 50``, log-n query scaling).  Both need ``train_length > 512``.

    Defaults derived from ``T = train_length``: ``first_chunk = last_chunk =
    T // 16``, ``chunk_size <= T // 8``; at small ``T`` (below 32) never less
    than 2, 2 and 4 tokens (capped by ``T``), so a drawn layout shows the chunk
    triangles and the stair.  ``T = 8`` gives Figure 1's plan for 13 tokens
    (first chunk 2, middle chunks of 3, last chunk 2, ``stair_start`` 2;
    ``stair_limit=8`` also gives its ``stair_width`` 2).
    """

    name: ClassVar[str] = "mesa"
    chunked: ClassVar[bool] = True
    decode: ClassVar[str] = "prefill-plan"
    past_train_length: ClassVar[str] = (
        "middle chunks see the first chunk and themselves; the last chunk and every "
        "generated token see all keys through Stair PE")
    first_chunk: int | None = None
    chunk_size: int | None = None
    last_chunk: int | None = None
    stair_start: int | None = None
    stair_width: int | None = None
    stair_limit: int | None = None
    stair: str | None = None
    log_scaling: bool | None = None
    prefill_length: int | None = None
    preset: str | None = None

    def _fill(self, seq_len, prefill_length):
        P = prefill_length if prefill_length is not None else self.prefill_length
        P = seq_len if P is None else P
        _check_int("prefill_length", P, 1, seq_len)
        me = self._preset_filled(P) if self.preset is not None else self
        return me._fill_switches()._fill_fields(seq_len, P)

    def _fill_switches(self) -> "Mesa":
        """``stair`` (default per-query) and ``log_scaling`` (default off)."""
        stair = "per-query" if self.stair is None else self.stair
        if stair not in ("per-query", "anchored"):
            raise ValueError(f"stair={stair!r}: allowed 'per-query' or 'anchored'")
        if self.log_scaling not in (None, True, False):
            raise ValueError(f"log_scaling={self.log_scaling!r}: allowed True or False")
        return dataclasses.replace(self, stair=stair, log_scaling=bool(self.log_scaling))

    def _preset_filled(self, prefill_length: int) -> "Mesa":
        """The preset's values for every parameter left ``None``."""
        if self.preset not in MESA_PRESETS:
            raise ValueError(f"preset={self.preset!r}: allowed {list(MESA_PRESETS)}")
        T = self.train_length
        if T <= _PAPER["last_chunk"]:
            raise ValueError(f"preset={self.preset!r} needs train_length > "
                             f"{_PAPER['last_chunk']} (its last chunk of {_PAPER['last_chunk']} "
                             f"tokens): got train_length={T}, allowed >= "
                             f"{_PAPER['last_chunk'] + 1}")
        F = _PAPER["first_chunk"] if self.first_chunk is None else self.first_chunk
        L = _PAPER["last_chunk"] if self.last_chunk is None else self.last_chunk
        if self.preset == "paper":
            values = dict(_PAPER, chunk_size=dynamic_split(prefill_length, T, F, L))
        else:                        # the code's L only sizes its split: the last chunk follows
            values = _authors_code_values(prefill_length, T, F, L)
        given = {k: v for k, v in values.items() if getattr(self, k) is None}
        if self.preset == "authors-code":
            given["last_chunk"] = values["last_chunk"]
        return dataclasses.replace(self, **given)

    def _fill_fields(self, seq_len: int, P: int) -> "Mesa":
        T = self.train_length
        F = min(T - 1, max(2, T // 16)) if self.first_chunk is None else self.first_chunk
        _check_int("first_chunk", F, 1, T - 1, f"train_length={T}")
        L = max(2, T // 16) if self.last_chunk is None else self.last_chunk
        _check_int("last_chunk", L, 1, T)
        C = self.chunk_size
        if C is None:                # DynamicSplit: equal chunks, last one close to last_chunk
            C, rest = min(T - F, max(4, T // 8)), P - F - L
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
        limit, N = self.stair_limit, self.stair_start
        s = self.plan().last_start
        if self.stair == "per-query":
            return _fit_stair_width(seq_len - 1, N, limit, "stair_limit")
        offset = seq_len - 1 - s                # query offset inside the last chunk
        if s == 0:
            return 1
        if offset + N >= limit:
            raise ValueError(
                f"stair_start={N} with a last chunk of {offset + 1} tokens cannot fit "
                f"stair_limit={limit} (anchored stair): allowed stair_start <= "
                f"{max(0, limit - offset - 1)}")
        return _fit_stair_width(s, N, limit - offset, "stair_limit minus the query offset")

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

    def visible_pairs(self, seq_len: int) -> int:
        """Past ``train_length``: the first chunk ``F(F+1)/2``, each middle
        chunk ``C*F + C(C+1)/2``, each row ``i`` from the last chunk on all its
        ``i + 1`` keys; otherwise every causal pair."""
        n, plan = int(seq_len), self.plan()
        if len(plan.chunks) == 1:
            return _triangle(n)
        F = plan.first[1]
        middle = sum((b - a) * F + _triangle(b - a) for a, b in plan.middle)
        return _triangle(F) + middle + _triangle(n) - _triangle(plan.last_start)

    def prefill_pieces(self, seq_len: int, max_tokens: int) -> tuple[tuple[int, int], ...]:
        """Past ``train_length``: the first chunk and then consecutive middle
        chunks, grouped into pieces of at most ``max_tokens`` tokens (at least
        one chunk each: a middle chunk sees only the first chunk and itself),
        then the last chunk (which sees every key) in pieces of at most
        ``max_tokens`` rows; the prompt in one forward otherwise."""
        _check_int("max_tokens", max_tokens, 1)
        plan, n = self.plan(), int(seq_len)
        if len(plan.chunks) == 1 or n != self.prefill_length:
            return ((0, n),)
        pieces, start = [], 0
        for a, b in plan.chunks[:-1]:
            if b - start > max_tokens and a > start:
                pieces.append((start, a))
                start = a
        s = plan.last_start
        pieces.append((start, s))
        pieces += [(x, min(n, x + max_tokens)) for x in range(s, n, max_tokens)]
        return tuple(pieces)

    def query_scale(self, rows) -> np.ndarray:
        """``max(1, log(i + 1) / log(train_length))`` for rows from the last
        chunk on when ``log_scaling`` (and the prompt is chunked), else 1."""
        rows = np.asarray(rows, dtype=np.float64)
        plan = self.plan()
        if not self.log_scaling or len(plan.chunks) == 1:
            return np.ones_like(rows)
        f = np.maximum(1.0, np.log(rows + 1) / math.log(self.train_length))
        return np.where(rows >= plan.last_start, f, 1.0)


# -- Mesa presets ------------------------------------------------------------------------

#: The values of :attr:`Mesa.preset`.
MESA_PRESETS = ("paper", "authors-code")
#: Appendix B.2 of the paper: F, L, M_max of Algorithm 2, Stair PE N and E (floor form).
_PAPER = dict(first_chunk=100, last_chunk=512, stair="per-query", stair_start=512,
              stair_width=50, log_scaling=False)
_PAPER_M_MAX = 200
#: The released code's constants (``PositionSet``): tokens reserved for generation and
#: the margin under ``train_length`` its middle chunks keep (``T - F - 100``).
_CODE_RESERVE, _CODE_MARGIN = 50, 100


def dynamic_split(prompt_length: int, train_length: int, first_chunk: int = 100,
                  last_chunk: int = 512, max_remainder: int = _PAPER_M_MAX) -> int:
    """Algorithm 2 (DynamicSplit) of the paper: the middle-chunk length ``C``.

    With ``R = I - L - F``, ``N, M = divmod(R, T - F)``: ``C = T - F`` if
    ``M < M_max`` (the remainder joins the last chunk), else ``R // (N + 1)``
    (equal chunks).  ``I``: prompt length, ``T``: training length.
    """
    rest, room = prompt_length - last_chunk - first_chunk, train_length - first_chunk
    if rest <= 0:
        return room
    n, m = divmod(rest, room)
    return room if m < max_remainder else rest // (n + 1)


def _authors_code_values(prompt_length: int, train_length: int, first_chunk: int,
                         last_context: int) -> dict:
    """What the authors' code (``PositionSet.set_align_position`` and its chunk
    loop) runs for a prompt of ``I`` tokens, in this project's parameters.

    Its split: ``R = I + 50 - L - F``, ``D = T - F - 100``, ``N, M = divmod(R,
    D)``, ``C = D`` if ``M < 200`` else ``R // (N + 1)``; chunks of ``C`` follow
    the first while they end before ``I``, the rest is the last chunk.  Its
    stair is anchored at ``a = 1 + C * floor((I - 1) / C)``: keys from ``a``
    on keep their positions, so ``stair_start = s - a + 1`` (``s``: the last
    chunk's start).
    """
    I, T, F, L = prompt_length, train_length, first_chunk, last_context
    C = dynamic_split(I + _CODE_RESERVE, T - _CODE_MARGIN, F, L)
    n_middle = max(0, -(-(I - F) // C) - 1)
    s = F + n_middle * C
    anchor = 1 + C * ((I - 1) // C)
    if I > T and s - anchor + 1 < 0:
        raise ValueError(f"preset='authors-code' at {I} tokens (train_length={T}): the "
                         f"authors' code anchors its stair at {anchor}, inside the last chunk "
                         f"(from {s}), which this project cannot express")
    return dict(_PAPER, first_chunk=F, chunk_size=C, last_chunk=max(1, I - s), stair="anchored",
                stair_start=max(0, s - anchor + 1), log_scaling=True)


# -- Self-Extend, Dual Chunk Attention, STRING ---------------------------------------------

@dataclass(frozen=True)
class SelfExtend(Method):
    """Self-Extend (Jin et al. 2024, "LLM Maybe LongLM"): neighbour attention
    inside ``window`` (``W``), grouped attention beyond it::

        t = i - j                           if t < W
        i // G - j // G + W - W // G        if t >= W      (G = group_size)

    ``window`` defaults to ``T // 4`` (the authors' example: 1024 at 4096);
    ``group_size`` to the smallest ``G`` keeping every position of the
    prompt below ``T`` (``G = 1``, Origin, up to ``T``), fixed for the
    generation that follows, as the authors do.
    """

    name: ClassVar[str] = "self-extend"
    decode: ClassVar[str] = "prefill-plan"
    past_train_length: ClassVar[str] = (
        "keys beyond the neighbour window at grouped positions: query i//G + W - W//G, "
        "key j//G")
    group_size: int | None = None
    window: int | None = None

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        W = max(1, T // 4) if self.window is None else self.window
        _check_int("window", W, 1, T - 1, f"below train_length={T}")
        G = self.group_size
        if G is None:
            G = _smallest_group(seq_len if prefill_length is None else prefill_length, W, T)
        _check_int("group_size", G, 1)
        return dataclasses.replace(self, group_size=G, window=W)

    def relative(self, i, j):
        t, vis = Method.relative(self, i, j)
        G, W = self.group_size, self.window
        grouped = np.asarray(i) // G - np.asarray(j) // G + W - W // G
        return np.where(t < W, t, grouped), vis


def _smallest_group(n: int, window: int, train_length: int) -> int:
    """Smallest ``G`` with ``(n - 1) // G + W - W // G <= T - 1``."""
    G = max(1, (n - 1) // train_length)
    while (n - 1) // G + window - window // G > train_length - 1:
        G += 1
    return G


@dataclass(frozen=True)
class DualChunk(Method):
    """Dual Chunk Attention (An et al. 2024, ChunkLlama), Eq. 2-8: keys at
    ``j mod s``; a query sees its own chunk at ``i mod s`` (intra-chunk), the
    previous chunk at ``s + (i mod s)`` while ``i mod s < w`` (successive),
    everything else at ``s + w - 1`` (inter-chunk; ``c - 1`` in the paper)::

        t                     if i//s == j//s, or i//s - j//s == 1 and i mod s < w
        s + w - 1 - (j mod s) otherwise

    ``chunk_size`` (``s``) defaults to ``3T/4`` (§4.1), ``local_window``
    (``w``) to ``T - s`` (§3.3; at most ``s``), the largest keeping positions
    below ``T``; then it is Origin up to ``T``.  The authors' code runs ``s = 3T/4 - T/8``,
    ``w = T/8 + 1``.
    """

    name: ClassVar[str] = "dual-chunk"
    past_train_length: ClassVar[str] = (
        "keys in the own and the previous chunk at true distance, older keys at "
        "chunk_size + local_window - 1 - (j mod chunk_size)")
    chunk_size: int | None = None
    local_window: int | None = None

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        s = max(1, T * 3 // 4) if self.chunk_size is None else self.chunk_size
        _check_int("chunk_size", s, 1, T - 1, f"below train_length={T}")
        w = min(s, T - s) if self.local_window is None else self.local_window
        _check_int("local_window", w, 1, min(s, T - s),
                   f"local_window <= chunk_size and chunk_size + local_window <= "
                   f"train_length={T}")
        return dataclasses.replace(self, chunk_size=s, local_window=w)

    def relative(self, i, j):
        t, vis = Method.relative(self, i, j)
        s, w = self.chunk_size, self.local_window
        gap = np.asarray(i) // s - np.asarray(j) // s
        near = (gap == 0) | ((gap == 1) & (np.asarray(i) % s < w))
        return np.where(near, t, s + w - 1 - np.asarray(j) % s), vis


@dataclass(frozen=True)
class String(Method):
    """STRING (An et al. 2024, "Why Does the Effective Context Length of LLMs
    Fall Short?"): positions from the shifted offset ``S`` on are dropped and
    the well-trained ones shifted over them, plus a local window ``W``::

        t               if t < S
        t - S + W       if t >= S

    ``shifted_offset`` (``S``) defaults to ``0.33 T`` and ``local_window``
    (``W``) to 128 (at most ``S / 4``), the authors' settings.  Origin up to
    ``S`` tokens; positions stay below ``T`` up to ``T + S - W`` tokens.
    """

    name: ClassVar[str] = "string"
    past_train_length: ClassVar[str] = (
        "distances from shifted_offset on are shifted back by shifted_offset - "
        "local_window (untrained again past train_length + shifted_offset - local_window)")
    shifted_offset: int | None = None
    local_window: int | None = None

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        S = max(1, int(0.33 * T)) if self.shifted_offset is None else self.shifted_offset
        _check_int("shifted_offset", S, 1, T - 1, f"below train_length={T}")
        W = min(128, S // 4) if self.local_window is None else self.local_window
        _check_int("local_window", W, 0, S - 1, f"below shifted_offset={S}")
        return dataclasses.replace(self, shifted_offset=S, local_window=W)

    def relative(self, i, j):
        t, vis = Method.relative(self, i, j)
        S, W = self.shifted_offset, self.local_window
        return np.where(t < S, t, t - S + W), vis


# -- frequency rules: PI, NTK-aware, YaRN ----------------------------------------------------

@dataclass(frozen=True)
class _FrequencyRule(Method):
    """Linear positions, RoPE frequencies changed by a rule with scale
    ``factor`` (``s`` in the YaRN paper), run through transformers' own rope
    types.  ``factor`` defaults to ``max(1, n / T)`` for a prompt of ``n``
    tokens, fixed for the generation after it (1, Origin, up to ``T``)."""

    native: ClassVar[bool] = True
    decode: ClassVar[str] = "prefill-plan"
    factor: float | None = None

    def _fill(self, seq_len, prefill_length):
        n = seq_len if prefill_length is None else prefill_length
        f = max(1.0, n / self.train_length) if self.factor is None else self.factor
        _check_factor(f)
        return dataclasses.replace(self, factor=float(f))


@dataclass(frozen=True)
class PositionInterpolation(_FrequencyRule):
    """Position Interpolation (Chen et al. 2023): positions ``× 1/factor``, i.e.
    ``inv_freq / factor`` (transformers' ``rope_type="linear"``)."""

    name: ClassVar[str] = "pi"
    past_train_length: ClassVar[str] = (
        "positions interpolated by 1/factor (factor = prompt length / train_length)")

    def rope_parameters(self, model: dict | None = None) -> dict:
        return {"rope_type": "linear", "factor": self.factor}

    def rope_rule(self) -> str:
        return f"inv_freq / factor (positions × 1/factor), factor={self.factor:g}"


@dataclass(frozen=True)
class NTKAware(_FrequencyRule):
    """Static NTK-aware scaling (bloc97 2023; YaRN paper Eq. 16): base
    ``b' = b * factor ** (d / (d - 2))`` for the rotary dim ``d``, fixed at the
    prompt (transformers' ``rope_type="default"`` with that ``rope_theta``)."""

    name: ClassVar[str] = "ntk"
    past_train_length: ClassVar[str] = (
        "linear positions; RoPE base raised to base * factor ** (d/(d-2)) at the prompt")

    def rope_parameters(self, model: dict | None = None) -> dict:
        if not model or "rope_theta" not in model or "rotary_dim" not in model:
            raise ValueError("the static NTK rule needs the model's rope_theta and "
                             f"rotary_dim, got {model!r}")
        d = model["rotary_dim"]
        return {"rope_type": "default",
                "rope_theta": float(model["rope_theta"]) * self.factor ** (d / (d - 2))}

    def rope_rule(self) -> str:
        return f"base' = base * factor ** (d/(d-2)), factor={self.factor:g}"


@dataclass(frozen=True)
class YaRN(_FrequencyRule):
    """YaRN (Peng et al. 2023): NTK-by-parts interpolation plus attention
    temperature (transformers' ``rope_type="yarn"``): dimensions whose
    wavelength fits ``T / beta_fast`` rotations keep their frequency, those
    under ``beta_slow`` rotations are interpolated by ``1/factor``, a linear
    ramp between; cos/sin scaled by ``attention_factor`` (default ``0.1 ln
    factor + 1``)."""

    name: ClassVar[str] = "yarn"
    past_train_length: ClassVar[str] = (
        "low frequencies interpolated by 1/factor, high ones kept, logits scaled "
        "(factor = prompt length / train_length)")
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None

    def _fill(self, seq_len, prefill_length):
        if not (isinstance(self.beta_fast, (int, float)) and isinstance(self.beta_slow, (int, float))
                and self.beta_fast > self.beta_slow > 0):
            raise ValueError(f"beta_fast={self.beta_fast!r}, beta_slow={self.beta_slow!r}: "
                             "allowed numbers with beta_fast > beta_slow > 0")
        a = self.attention_factor
        if a is not None and not (isinstance(a, (int, float)) and a > 0):
            raise ValueError(f"attention_factor={a!r} must be a number > 0 (or None)")
        return _FrequencyRule._fill(self, seq_len, prefill_length)

    def rope_parameters(self, model: dict | None = None) -> dict:
        p = {"rope_type": "yarn", "factor": self.factor, "beta_fast": float(self.beta_fast),
             "beta_slow": float(self.beta_slow),
             "original_max_position_embeddings": self.train_length}
        if self.attention_factor is not None:
            p["attention_factor"] = float(self.attention_factor)
        return p

    def rope_rule(self) -> str:
        a = self.attention_factor
        a = 0.1 * math.log(self.factor) + 1 if a is None else a
        return (f"NTK-by-parts: inv_freq / factor where fewer than beta_slow="
                f"{self.beta_slow:g} rotations fit in T, kept where more than beta_fast="
                f"{self.beta_fast:g}, a ramp between; cos/sin × {a:.4g}; factor={self.factor:g}")


METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in
    (Origin, Stair, ReRoPE, LeakyReRoPE, DynamicNTK, StreamingLLM, LMInfinite, Mesa,
     SelfExtend, DualChunk, String, PositionInterpolation, NTKAware, YaRN)
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


def resolve(method: "str | Method", seq_len: int, *, train_length: int | None = None,
            prefill_length: int | None = None, default_train_length: int | None = None,
            **params) -> Method:
    """``get_method(method, **params).resolve(seq_len, ...)`` in one call.

    ``train_length`` (an int, no model needed) overrides the method's own;
    ``default_train_length`` (e.g. a config's ``max_position_embeddings``)
    serves where neither is given; failing all, ``seq_len`` (no extrapolation).
    """
    m = get_method(method, **params)
    if train_length is None and m.train_length is None:
        train_length = default_train_length
    return m.resolve(seq_len, train_length=train_length, prefill_length=prefill_length)
