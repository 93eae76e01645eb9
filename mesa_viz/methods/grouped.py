"""Methods that group distant keys onto fewer positions: Self-Extend (floor-divided
positions) and Dual Chunk Attention (chunk-local positions).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import (PRESETS, Choice, Derived, Method, Slider, Toggle, check_int, check_preset,
                   param)

__all__ = ["SelfExtend", "DualChunk", "SHIFTS"]


#: The values of :attr:`SelfExtend.shift`: ``W - W // G`` (the authors' fix) or
#: ``W - W / G`` (their ``Llama.py``, what ``SelfExtend.apply`` loads).
SHIFTS = ("floor", "float")


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

    ``shift`` (:data:`SHIFTS`): ``"floor"`` (default), ``W - W // G`` as the
    authors' fix; ``"float"``, ``W - W / G``, what their ``Llama.py`` (loaded by
    ``SelfExtend.apply``) runs in prefill and decode: fractional positions
    where ``G`` does not divide ``W``.  ``preset="authors-code"`` is ``"float"``,
    ``"paper"`` is ``"floor"``.
    """

    name: ClassVar[str] = "self-extend"
    decode: ClassVar[str] = "prefill-plan"
    past_train_length: ClassVar[str] = (
        "keys beyond the neighbour window at grouped positions: query i//G + W - W//G, "
        "key j//G")
    group_size: int | None = param(Slider(1, 64))
    window: int | None = param(Slider(1, 256))
    shift: str | None = param(Choice(SHIFTS))
    preset: str | None = param(Choice(PRESETS))

    def _fill(self, seq_len, prefill_length):
        me = check_preset(self, {"paper": dict(shift="floor"),
                                 "authors-code": dict(shift="float")})
        shift = "floor" if me.shift is None else me.shift
        if shift not in SHIFTS:
            raise ValueError(f"shift={shift!r}: allowed {list(SHIFTS)}")
        T = self.train_length
        W = max(1, T // 4) if self.window is None else self.window
        check_int("window", W, 1, T - 1, f"below train_length={T}")
        G = self.group_size
        if G is None:
            n = seq_len if prefill_length is None else prefill_length
            G = _smallest_group(n, W, T, shift)
        check_int("group_size", G, 1)
        return dataclasses.replace(me, group_size=G, window=W, shift=shift)

    def group_shift(self) -> float:
        """The grouped query's shift: ``W - W // G`` (``shift="floor"``) or ``W - W / G``."""
        return _group_shift(self.window, self.group_size, self.shift)

    def relative(self, i, j):
        t, vis = Method.relative(self, i, j)
        G, W = self.group_size, self.window
        grouped = np.asarray(i) // G - np.asarray(j) // G + self.group_shift()
        return np.where(t < W, t, grouped), vis


def _group_shift(window: int, group: int, shift: str):
    return window - window // group if shift == "floor" else window - window / group


def _smallest_group(n: int, window: int, train_length: int, shift: str = "floor") -> int:
    """Smallest ``G`` with ``(n - 1) // G + shift <= T - 1`` (:func:`_group_shift`)."""
    G = max(1, (n - 1) // train_length)
    while (n - 1) // G + _group_shift(window, G, shift) > train_length - 1:
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

    ``mscale`` (default off, as the paper): queries and keys times ``0.05
    ln(e / T) + 1`` where ``e = max(prefill_length, i + 1) > T`` (the cache
    length of the forward that computed them: the prompt's, then each
    generated token's), as the released ``ChunkLlamaRotaryEmbedding`` does on
    every forward longer than ``max_position_embeddings``.
    ``preset="authors-code"``: the code's ``s``, ``w`` and ``mscale``;
    ``"paper"``: the defaults.
    """

    name: ClassVar[str] = "dual-chunk"
    past_train_length: ClassVar[str] = (
        "keys in the own and the previous chunk at true distance, older keys at "
        "chunk_size + local_window - 1 - (j mod chunk_size)")
    chunk_size: int | None = param(Slider(1, 256))
    local_window: int | None = param(Slider(1, 256))
    mscale: bool | None = param(Toggle())
    preset: str | None = param(Choice(PRESETS))
    prefill_length: int | None = param(Derived("the prompt length, fixed at the prefill"))

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        code = dict(chunk_size=max(1, T * 3 // 4 - T // 8), local_window=T // 8 + 1, mscale=True)
        me = check_preset(self, {"paper": dict(mscale=False), "authors-code": code})
        s = max(1, T * 3 // 4) if me.chunk_size is None else me.chunk_size
        check_int("chunk_size", s, 1, T - 1, f"below train_length={T}")
        w = min(s, T - s) if me.local_window is None else me.local_window
        check_int("local_window", w, 1, min(s, T - s),
                  f"local_window <= chunk_size and chunk_size + local_window <= "
                  f"train_length={T}")
        if me.mscale not in (None, True, False):
            raise ValueError(f"mscale={me.mscale!r}: allowed True or False")
        P = prefill_length if prefill_length is not None else me.prefill_length
        P = seq_len if P is None else P
        check_int("prefill_length", P, 1, seq_len)
        return dataclasses.replace(me, chunk_size=s, local_window=w, mscale=bool(me.mscale),
                                   prefill_length=P)

    def query_scale(self, rows) -> np.ndarray:
        """``mscale``: ``0.05 ln(e / T) + 1`` with ``e = max(prefill_length, i + 1)``
        where ``e > T``; else 1."""
        if not self.mscale:
            return Method.query_scale(self, rows)
        e = np.maximum(self.prefill_length, np.asarray(rows, dtype=np.float64) + 1)
        return np.where(e > self.train_length, 0.05 * np.log(e / self.train_length) + 1, 1.0)

    key_scale = query_scale

    def relative(self, i, j):
        t, vis = Method.relative(self, i, j)
        s, w = self.chunk_size, self.local_window
        gap = np.asarray(i) // s - np.asarray(j) // s
        near = (gap == 0) | ((gap == 1) & (np.asarray(i) % s < w))
        return np.where(near, t, s + w - 1 - np.asarray(j) % s), vis
