"""Attention sinks plus a local window: StreamingLLM and LM-Infinite.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Method, Slider, capped_sum, check_int, param

__all__ = ["StreamingLLM", "LMInfinite"]


@dataclass(frozen=True)
class _SinkWindow(Method):
    """Shared shape of StreamingLLM and LM-Infinite: ``sink_tokens`` first keys
    plus a local ``window`` of the most recent keys."""

    sink_tokens: int | None = param(Slider(0, 64))
    window: int | None = param(Slider(1, 256))

    def _visible(self, i, j):
        t = np.asarray(i) - np.asarray(j)
        return t, (t >= 0) & ((t < self.window) | (np.asarray(j) < self.sink_tokens))

    def visible_pairs(self, seq_len: int) -> int:
        """Per query ``i``: ``min(i + 1, window)`` local keys plus the
        ``min(sink_tokens, i - window + 1)`` sinks before the window."""
        n = int(seq_len)
        return capped_sum(n, self.window) + capped_sum(n - self.window, self.sink_tokens)


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
        check_int("sink_tokens", S, 0, T - 1)
        W = T - S if self.window is None else self.window
        check_int("window", W, 1, T - S)
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
        check_int("sink_tokens", S, 0)
        W = T - 1 if self.window is None else self.window
        check_int("window", W, 1, T - 1)
        return dataclasses.replace(self, sink_tokens=S, window=W)

    def relative(self, i, j):
        t, vis = self._visible(i, j)
        return np.minimum(t, self.window), vis
