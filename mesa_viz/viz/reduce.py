"""Reducing long inputs so figures render in a browser: block downsampling of
attention rows, stride sampling of dense layouts, min/max envelopes of curves.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MAX_COLUMNS", "MAX_ROWS", "MAX_LAYOUT_SIDE",
           "MAX_POINTS", "REDUCERS", "stride", "downsample", "envelope"]


#: Most key columns an attention heatmap draws before block-downsampling.
MAX_COLUMNS = 1000


#: Most query rows an attention heatmap draws before block-downsampling.
MAX_ROWS = 400


#: Largest side of a layout heatmap before stride sampling.
MAX_LAYOUT_SIDE = 512


#: Most points per hidden-state curve before min/max envelope reduction.
MAX_POINTS = 4000


REDUCERS = ("max", "mean")


def stride(n: int, limit: int) -> int:
    return max(1, math.ceil(n / limit))


def downsample(a: np.ndarray, block: int, axis: int = -1, reduce: str = "max") -> np.ndarray:
    """Reduce ``a`` along ``axis`` in blocks of ``block`` by ``max`` or ``mean``.

    The last block may be shorter (NaN-padded, ignored by the reduction).
    ``[q, k]`` with ``block=b`` on axis -1 gives ``[q, ceil(k / b)]``.
    """
    if reduce not in REDUCERS:
        raise ValueError(f"reduce={reduce!r}: allowed {list(REDUCERS)}")
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block={block!r} must be an integer >= 1")
    a = np.moveaxis(np.asarray(a, dtype=float), axis, -1)
    if block > 1:
        n = a.shape[-1]
        pad = (-n) % block
        a = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)], constant_values=np.nan)
        a = a.reshape(*a.shape[:-1], -1, block)
        a = np.nanmax(a, axis=-1) if reduce == "max" else np.nanmean(a, axis=-1)
    return np.moveaxis(a, -1, axis)


def envelope(x: np.ndarray, y: np.ndarray, max_points: int):
    """Keep each block's min and max (in position order) so spikes survive."""
    if len(y) <= max_points:
        return x, y
    b = stride(len(y), max_points // 2)
    n = len(y) // b * b
    xb, yb = x[:n].reshape(-1, b), y[:n].reshape(-1, b)
    lo, hi = np.nanargmin(yb, axis=1), np.nanargmax(yb, axis=1)
    first, second = np.minimum(lo, hi), np.maximum(lo, hi)
    r = np.arange(len(yb))
    xs = np.stack([xb[r, first], xb[r, second]], axis=1).reshape(-1)
    ys = np.stack([yb[r, first], yb[r, second]], axis=1).reshape(-1)
    return np.concatenate([xs, x[n:]]), np.concatenate([ys, y[n:]])
