"""Methods that group distant keys onto fewer positions: Self-Extend (floor-divided
positions) and Dual Chunk Attention (chunk-local positions).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Method, Slider, check_int, param

__all__ = ["SelfExtend", "DualChunk"]


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
    group_size: int | None = param(Slider(1, 64))
    window: int | None = param(Slider(1, 256))

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        W = max(1, T // 4) if self.window is None else self.window
        check_int("window", W, 1, T - 1, f"below train_length={T}")
        G = self.group_size
        if G is None:
            G = _smallest_group(seq_len if prefill_length is None else prefill_length, W, T)
        check_int("group_size", G, 1)
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
    chunk_size: int | None = param(Slider(1, 256))
    local_window: int | None = param(Slider(1, 256))

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        s = max(1, T * 3 // 4) if self.chunk_size is None else self.chunk_size
        check_int("chunk_size", s, 1, T - 1, f"below train_length={T}")
        w = min(s, T - s) if self.local_window is None else self.local_window
        check_int("local_window", w, 1, min(s, T - s),
                  f"local_window <= chunk_size and chunk_size + local_window <= "
                  f"train_length={T}")
        return dataclasses.replace(self, chunk_size=s, local_window=w)

    def relative(self, i, j):
        t, vis = Method.relative(self, i, j)
        s, w = self.chunk_size, self.local_window
        gap = np.asarray(i) // s - np.asarray(j) // s
        near = (gap == 0) | ((gap == 1) & (np.asarray(i) % s < w))
        return np.where(near, t, s + w - 1 - np.asarray(j) % s), vis
