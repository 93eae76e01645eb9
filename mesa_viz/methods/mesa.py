"""Mesa-Extrapolation (Figure 1, left): the chunk plan and its layout.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

import math

from .base import Derived, Method, Slider, Toggle, Choice, check_int, log_n, param, triangle
from .mesa_presets import MESA_PRESETS, PAPER, authors_code_values, dynamic_split
from .stair import fit_stair_width, stair_position

__all__ = ["Mesa", "ChunkPlan", "STAIRS"]

#: The values of :attr:`Mesa.stair`: the paper's per-query ``P(i - j)``, or anchored at the
#: last chunk's start as the authors' code.
STAIRS = ("per-query", "anchored")


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


def _check_overlap(F: int, K: int, C: int, T: int) -> None:
    """A middle chunk's last query sits at ``F + K + C - 1``: it must stay below ``T``."""
    if F + K + C > T:
        raise ValueError(
            f"first_chunk={F} + chunk_overlap={K} + chunk_size={C} = {F + K + C} exceeds "
            f"train_length={T}: a middle chunk's last query would sit at position "
            f"{F + K + C - 1}; allowed chunk_overlap <= {max(0, T - F - C)} with these chunks "
            "(or a smaller chunk_size or first_chunk)")


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
    theory (``benchmarks/methods-thresholds``).
    ``stair="per-query"`` (default) is the paper's exact ``P(i - j)``;
    ``"anchored"`` is the authors' code: token ``x`` placed at ``s -
    P(s - x)`` (``s``: the last chunk's start), so keys from the anchor ``a = s
    - stair_start + 1`` on keep their index and earlier ones step down every
    ``stair_width``; a negative ``stair_start`` puts the anchor inside the last
    chunk (its rows before ``a`` are then stepped too).  ``log_scaling``
    (default off) multiplies the stair rows' queries by ``max(1, log(i + 1) /
    log(train_length))``.  ``split_from`` (default ``train_length + 1``): prompts
    of at least this many tokens are split into chunks; rows of the last chunk
    use the stair only where the cache exceeds ``train_length`` (true positions
    below it).  ``decode_stair`` (default off): tokens generated past
    ``train_length`` after a prompt of at most ``train_length`` tokens use the
    stair (otherwise such a prompt stays Origin).

    ``preset`` (:data:`MESA_PRESETS`) resolves into explicit parameters (a
    parameter given explicitly overrides the preset's): ``"paper"`` is
    Appendix B.2 (Algorithm 2's DynamicSplit with ``F = 100``, ``L = 512``,
    ``M_max = 200``; Stair PE ``N = 512``, ``E = 50``, per query, floor form;
    no log-n scaling); ``"authors-code"`` is what the released code runs
    (its DynamicSplit variant, the stair anchored where the code anchors it
    with ``E = 50``, log-n query scaling, splitting from ``train_length - 50``
    tokens, the stair for tokens generated past ``train_length``).  Both need
    ``train_length > 512``.

    ``chunk_overlap`` (``k``, default 0: the paper's layout) lets each middle
    chunk also see the ``k`` tokens just before it (never the first chunk's,
    which it sees already: the first middle chunk sees none, and with ``k >
    chunk_size`` the overlap reaches back into earlier middle chunks), at
    linear positions between the first chunk and the chunk's own: a chunk of
    ``k' = min(k, start - first_chunk)`` overlap tokens sees the first chunk at
    ``0..F-1``, the overlap at ``F..F+k'-1`` and itself from ``F + k'``, so a
    span cut by a chunk boundary (a passkey needle) is read whole when it
    starts at most ``k`` tokens before it.  The last chunk, which sees every
    key, is unchanged.  Needs ``first_chunk + chunk_overlap + chunk_size <=
    train_length`` (the default ``chunk_size`` leaves room for it).

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
        "middle chunks see the first chunk and themselves (and chunk_overlap tokens before "
        "them); the last chunk and every generated token see all keys through Stair PE")
    first_chunk: int | None = param(Slider(1, 128))
    chunk_size: int | None = param(Slider(1, 128))
    last_chunk: int | None = param(Slider(1, 128))
    stair_start: int | None = param(Slider(0, 128))
    stair_width: int | None = param(Slider(1, 64))
    stair_limit: int | None = param(Slider(2, 256))
    stair: str | None = param(Choice(STAIRS))
    log_scaling: bool | None = param(Toggle())
    split_from: int | None = param(Slider(2, 2048))
    decode_stair: bool | None = param(Toggle())
    prefill_length: int | None = param(Derived("the prompt length, fixed at the prefill"))
    preset: str | None = param(Choice(MESA_PRESETS))
    chunk_overlap: int = param(Slider(0, 128), default=0)

    def _fill(self, seq_len, prefill_length):
        P = prefill_length if prefill_length is not None else self.prefill_length
        P = seq_len if P is None else P
        check_int("prefill_length", P, 1, seq_len)
        me = self._preset_filled(P) if self.preset is not None else self
        return me._fill_switches()._fill_fields(seq_len, P)

    def _fill_switches(self) -> "Mesa":
        """``stair`` (default per-query), ``log_scaling`` and ``decode_stair``
        (default off)."""
        stair = "per-query" if self.stair is None else self.stair
        if stair not in STAIRS:
            raise ValueError(f"stair={stair!r}: allowed {list(STAIRS)}")
        for name in ("log_scaling", "decode_stair"):
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"{name}={getattr(self, name)!r}: allowed True or False")
        return dataclasses.replace(self, stair=stair, log_scaling=bool(self.log_scaling),
                                   decode_stair=bool(self.decode_stair))

    def _preset_filled(self, prefill_length: int) -> "Mesa":
        """The preset's values for every parameter left ``None``."""
        if self.preset not in MESA_PRESETS:
            raise ValueError(f"preset={self.preset!r}: allowed {list(MESA_PRESETS)}")
        T = self.train_length
        if T <= PAPER["last_chunk"]:
            raise ValueError(f"preset={self.preset!r} needs train_length > "
                             f"{PAPER['last_chunk']} (its last chunk of {PAPER['last_chunk']} "
                             f"tokens): got train_length={T}, allowed >= "
                             f"{PAPER['last_chunk'] + 1}")
        F = PAPER["first_chunk"] if self.first_chunk is None else self.first_chunk
        L = PAPER["last_chunk"] if self.last_chunk is None else self.last_chunk
        if self.preset == "paper":
            values = dict(PAPER, chunk_size=dynamic_split(prefill_length, T, F, L))
        else:                        # the code's L only sizes its split: the last chunk follows
            values = authors_code_values(prefill_length, T, F, L)
        given = {k: v for k, v in values.items() if getattr(self, k) is None}
        if self.preset == "authors-code":
            given["last_chunk"] = values["last_chunk"]
        return dataclasses.replace(self, **given)

    def _fill_fields(self, seq_len: int, P: int) -> "Mesa":
        T = self.train_length
        F = min(T - 1, max(2, T // 16)) if self.first_chunk is None else self.first_chunk
        check_int("first_chunk", F, 1, T - 1, f"train_length={T}")
        L = max(2, T // 16) if self.last_chunk is None else self.last_chunk
        check_int("last_chunk", L, 1, T)
        K = self.chunk_overlap
        check_int("chunk_overlap", K, 0)
        C = self.chunk_size
        if C is None:                # DynamicSplit: equal chunks, last one close to last_chunk
            C, rest = max(1, min(T - F - K, max(4, T // 8))), P - F - L
            if P > T and rest > 0:
                C = max(1, rest // math.ceil(rest / C))
        check_int("chunk_size", C, 1, T - F,
                  f"first_chunk + chunk_size <= train_length={T}")
        _check_overlap(F, K, C, T)
        split = T + 1 if self.split_from is None else self.split_from
        check_int("split_from", split, 1, T + 1,
                  f"a prompt of more than train_length={T} tokens is always split")
        me = dataclasses.replace(self, first_chunk=F, chunk_size=C, last_chunk=L,
                                 prefill_length=P, split_from=split)
        N = self.stair_start
        if N is None:        # the authors' anchored stair starts at the chunk boundary
            N = 0 if self.stair == "anchored" else T // 4
        if self.stair == "anchored":     # the anchor s - N + 1 at most at the last token,
            # or, with decode_stair, at most at the first token past train_length
            reach = max(seq_len, T + 1) if me.decode_stair else seq_len
            check_int("stair_start", N, min(0, me.plan().last_start + 1 - reach), None,
                      "anchored: the anchor last_start - stair_start + 1 <= "
                      + ("max(seq_len, train_length + 1)" if me.decode_stair else "seq_len"))
        else:
            check_int("stair_start", N, 0)
        limit = max(N + 1, T // 2) if self.stair_limit is None else self.stair_limit
        check_int("stair_limit", limit, N + 1, T, "stair_start < stair_limit <= train_length")
        me = dataclasses.replace(me, stair_start=N, stair_limit=limit)
        E = self.stair_width
        if E is None:
            E = me._fit_width(seq_len)
        check_int("stair_width", E, 1)
        return dataclasses.replace(me, stair_width=E)

    def _fit_width(self, seq_len: int) -> int:
        limit, N = self.stair_limit, self.stair_start
        s = self.plan().last_start
        if self.stair == "per-query":
            return fit_stair_width(seq_len - 1, N, limit, "stair_limit")
        offset = seq_len - 1 - s                # query offset inside the last chunk
        if s == 0:
            return 1
        if offset + N >= limit:
            raise ValueError(
                f"stair_start={N} with a last chunk of {offset + 1} tokens cannot fit "
                f"stair_limit={limit} (anchored stair): allowed stair_start <= "
                f"{max(0, limit - offset - 1)}")
        return fit_stair_width(s, N, limit - offset, "stair_limit minus the query offset")

    def plan(self) -> ChunkPlan:
        """The chunk plan for the prefill of ``prefill_length`` tokens."""
        n = self.prefill_length
        if n < self.split_from or n <= self.first_chunk:
            return ChunkPlan(((0, n),))
        F, C, L = self.first_chunk, self.chunk_size, self.last_chunk
        n_middle = max(0, (n - F - L) // C)
        chunks = [(0, F)] + [(F + k * C, F + (k + 1) * C) for k in range(n_middle)]
        chunks.append((F + n_middle * C, n))
        return ChunkPlan(tuple(chunks))

    def stair_from(self) -> int | None:
        """The first row using Stair PE: the last chunk's start past
        ``train_length``; ``train_length`` (the first row whose cache exceeds
        it) after a shorter prompt with ``decode_stair``; else None."""
        if self.prefill_length > self.train_length:
            return self.plan().last_start
        return max(self.train_length, self.plan().last_start) if self.decode_stair else None

    def relative(self, i, j):
        i, j = np.broadcast_arrays(np.asarray(i), np.asarray(j))
        t = i - j
        plan, r0 = self.plan(), self.stair_from()
        if len(plan.chunks) == 1 and r0 is None:
            return t, t >= 0
        F, s = self.first_chunk, plan.last_start
        starts = np.array([c[0] for c in plan.chunks])
        chunk_start = starts[np.searchsorted(starts, i, side="right") - 1]
        in_middle = (i >= F) & (i < s)
        # a middle chunk's queries see keys from seen_from on (its overlap, then itself)
        seen_from = chunk_start - np.minimum(self.chunk_overlap, np.maximum(chunk_start - F, 0))
        vis = (t >= 0) & (~in_middle | (j < F) | (j >= seen_from))
        rel = np.where(in_middle & (j < F), i - seen_from + F - j, t)
        if r0 is None:
            return rel, vis
        N, E = self.stair_start, self.stair_width
        if self.stair == "per-query":
            stair = stair_position(t, N, E)
        else:                        # token x at s - P(s - x): the anchored stair
            stair = stair_position(s - j, N, E) - stair_position(s - i, N, E)
        return np.where(i >= r0, stair, rel), vis

    def visible_pairs(self, seq_len: int) -> int:
        """Past ``train_length``: the first chunk ``F(F+1)/2``, each middle
        chunk ``C*(F + k') + C(C+1)/2`` (``k'`` its overlap tokens), each row
        ``i`` from the last chunk on all its ``i + 1`` keys; otherwise every
        causal pair."""
        n, plan = int(seq_len), self.plan()
        if len(plan.chunks) == 1:
            return triangle(n)
        F, K = plan.first[1], self.chunk_overlap
        middle = sum((b - a) * (F + min(K, a - F)) + triangle(b - a) for a, b in plan.middle)
        return triangle(F) + middle + triangle(n) - triangle(plan.last_start)

    def prefill_pieces(self, seq_len: int, max_tokens: int) -> tuple[tuple[int, int], ...]:
        """Past ``train_length``: the first chunk and then consecutive middle
        chunks, grouped into pieces of at most ``max_tokens`` tokens (at least
        one chunk each: a middle chunk sees only the first chunk and itself),
        then the last chunk (which sees every key) in pieces of at most
        ``max_tokens`` rows; the prompt in one forward otherwise."""
        check_int("max_tokens", max_tokens, 1)
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
        """``max(1, log(i + 1) / log(train_length))`` for the stair rows
        (:meth:`stair_from` on) when ``log_scaling``, else 1."""
        rows = np.asarray(rows, dtype=np.float64)
        r0 = self.stair_from()
        if not self.log_scaling or r0 is None:
            return np.ones_like(rows)
        return np.where(rows >= r0, log_n(rows, self.train_length), 1.0)
