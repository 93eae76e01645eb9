"""Stair PE (Figure 1, right): ``P(t) = t`` below ``stair_start``, then one position
per ``stair_width`` tokens; the ``stair`` method, and the rule of Mesa's last chunk.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Method, Slider, check_int, param

__all__ = ["stair_position", "Stair", "fit_stair_width"]


def stair_position(t, stair_start: int, stair_width: int):
    """Stair PE: ``P(t) = t`` if ``t < stair_start`` else
    ``stair_start + floor((t - stair_start) / stair_width)`` (integer arrays)."""
    t = np.asarray(t)
    far = stair_start + np.floor_divide(t - stair_start, stair_width)
    return np.where(t < stair_start, t, far)


@dataclass(frozen=True)
class Stair(Method):
    """Stair PE over the whole causal matrix (Figure 1, right).

    ``stair_start`` (``N``) defaults to ``train_length // 2``, ``stair_width``
    (``E``) to the smallest keeping every position below ``train_length``.
    """

    name: ClassVar[str] = "stair"
    past_train_length: ClassVar[str] = (
        "distances past stair_start grow by one every stair_width tokens (Stair PE)")
    stair_start: int | None = param(Slider(0, 128))
    stair_width: int | None = param(Slider(1, 64))

    def _fill(self, seq_len, prefill_length):
        T = self.train_length
        N = T // 2 if self.stair_start is None else self.stair_start
        check_int("stair_start", N, 0)
        E = self.stair_width
        if E is None:
            E = fit_stair_width(seq_len - 1, N, T)
        check_int("stair_width", E, 1)
        return dataclasses.replace(self, stair_start=N, stair_width=E)

    def relative(self, i, j):
        t, vis = Method.relative(self, i, j)
        return stair_position(t, self.stair_start, self.stair_width), vis


def fit_stair_width(max_t: int, stair_start: int, limit: int,
                    limit_name: str = "train_length") -> int:
    """Smallest stair width ``E`` keeping ``P(max_t) <= limit - 1``."""
    if max_t < limit:
        return 1
    if stair_start > limit - 1:
        raise ValueError(
            f"stair_start={stair_start} leaves no room for a stair below "
            f"{limit_name}={limit}: allowed [0, {limit - 1}]")
    return (max_t - stair_start) // (limit - stair_start) + 1
