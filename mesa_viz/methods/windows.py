"""Methods with a near window at true distances and one rule for the keys beyond
it: ReRoPE, Leaky-ReRoPE and STRING.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Method, Slider, check_int, param

__all__ = ["ReRoPE", "LeakyReRoPE", "String"]


@dataclass(frozen=True)
class ReRoPE(Method):
    """ReRoPE: ``t`` inside ``window``, ``window`` beyond it."""

    name: ClassVar[str] = "rerope"
    past_train_length: ClassVar[str] = "keys beyond window are all placed at window"
    window: int | None = param(Slider(1, 256))

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        w = T // 2 if self.window is None else self.window
        check_int("window", w, 1, T - 1)
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
    window: int | None = param(Slider(1, 256))
    leak: float | None = param(Slider(1.0, 16.0, 0.25))

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        w = T // 2 if self.window is None else self.window
        check_int("window", w, 1, T - 1)
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
    shifted_offset: int | None = param(Slider(1, 256))
    local_window: int | None = param(Slider(0, 256))

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        S = max(1, int(0.33 * T)) if self.shifted_offset is None else self.shifted_offset
        check_int("shifted_offset", S, 1, T - 1, f"below train_length={T}")
        W = min(128, S // 4) if self.local_window is None else self.local_window
        check_int("local_window", W, 0, S - 1, f"below shifted_offset={S}")
        return dataclasses.replace(self, shifted_offset=S, local_window=W)

    def relative(self, i, j):
        t, vis = Method.relative(self, i, j)
        S, W = self.shifted_offset, self.local_window
        return np.where(t < S, t, t - S + W), vis
