"""Methods with a near window at true distances and one rule for the keys beyond
it: ReRoPE, Leaky-ReRoPE and STRING.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import PRESETS, Choice, Method, Slider, Toggle, check_int, check_preset, log_n, param

__all__ = ["ReRoPE", "LeakyReRoPE", "String"]


#: ``preset`` of ReRoPE and Leaky-ReRoPE: the blog's rule, or the released patches
#: (``rerope_patch.py``, ``leaky_rerope_patch.py``), which scale every query by log-n.
WINDOW_PRESETS = {"paper": dict(log_scaling=False), "authors-code": dict(log_scaling=True)}


def _fill_log_scaling(method: Method) -> Method:
    """The preset applied, then ``log_scaling`` (default off) checked."""
    me = check_preset(method, WINDOW_PRESETS)
    if me.log_scaling not in (None, True, False):
        raise ValueError(f"log_scaling={me.log_scaling!r}: allowed True or False")
    return dataclasses.replace(me, log_scaling=bool(me.log_scaling))


@dataclass(frozen=True)
class ReRoPE(Method):
    """ReRoPE: ``t`` inside ``window``, ``window`` beyond it.

    ``log_scaling`` (default off) multiplies every query by ``max(1, log(i + 1)
    / log(train_length))``, as the released patch does on every forward;
    ``preset="authors-code"`` turns it on, ``"paper"`` (the blog's rule) off.
    """

    name: ClassVar[str] = "rerope"
    past_train_length: ClassVar[str] = "keys beyond window are all placed at window"
    window: int | None = param(Slider(1, 256))
    log_scaling: bool | None = param(Toggle())
    preset: str | None = param(Choice(PRESETS))

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        w = T // 2 if self.window is None else self.window
        check_int("window", w, 1, T - 1)
        return _fill_log_scaling(dataclasses.replace(self, window=w))

    def query_scale(self, rows) -> np.ndarray:
        """Log-n (``max(1, log(i + 1) / log(train_length))``) when ``log_scaling``, else 1."""
        return log_n(rows, self.train_length) if self.log_scaling else Method.query_scale(
            self, rows)

    def relative(self, i, j):
        t, vis = Method.relative(self, i, j)
        return np.minimum(t, self.window), vis


@dataclass(frozen=True)
class LeakyReRoPE(Method):
    """Leaky-ReRoPE: ``t`` inside ``window``, ``window + (t - window) / leak`` beyond.

    ``leak`` defaults to the smallest factor (>= 1) that keeps every position
    below ``train_length``.  Relative positions are fractional (float).
    ``log_scaling`` and ``preset`` as :class:`ReRoPE`'s.
    """

    name: ClassVar[str] = "leaky-rerope"
    past_train_length: ClassVar[str] = (
        "distances beyond window grow 1/leak as fast, staying below the training length")
    window: int | None = param(Slider(1, 256))
    leak: float | None = param(Slider(1.0, 16.0, 0.25))
    log_scaling: bool | None = param(Toggle())
    preset: str | None = param(Choice(PRESETS))

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
        return _fill_log_scaling(dataclasses.replace(self, window=w, leak=float(k)))

    def relative(self, i, j):
        t, vis = Method.relative(self, i, j)
        far = self.window + (t - self.window) / self.leak
        return np.where(t < self.window, t, far).astype(float), vis

    query_scale = ReRoPE.query_scale


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
