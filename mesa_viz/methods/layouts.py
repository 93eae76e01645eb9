"""Position layouts ("weave PE"): the ``[q, k]`` relative-position matrix and mask.

Pure numpy: no torch, no transformers.  ``layout("mesa", seq_len=13,
train_length=8, first_chunk=2, chunk_size=3, last_chunk=2, stair_start=2,
stair_width=2)`` draws Figure 1 (left) of the paper (``train_length=8`` is the
shortest keeping every position it shows trained, and its defaults give the
same chunks); ``layout("stair", seq_len=10, stair_start=4, stair_width=2)`` row
9 is Figure 1 (right).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .base import Method
from .mesa import ChunkPlan
from .registry import resolve

__all__ = ["Layout", "layout", "layout_rows", "MAX_DENSE_LAYOUT"]

log = logging.getLogger(__name__)

#: Largest ``seq_len`` drawn as a dense ``[n, n]`` matrix; use ``layout_rows`` beyond.
MAX_DENSE_LAYOUT = 8192


@dataclass(frozen=True)
class Layout:
    """One method's layout for ``seq_len`` tokens.

    ``relative_positions``: ``[q, k]`` relative position each query uses for
    each key, ``-1`` where masked (int, float for Leaky-ReRoPE).
    ``mask``: ``[q, k]`` bool, True where the query may see the key.
    ``chunk_plan``: Mesa's chunks, else None.  ``rope_rule``: a RoPE frequency
    rule the method applies (Dynamic-NTK), else None.
    """

    method: str
    seq_len: int
    params: dict
    relative_positions: np.ndarray
    mask: np.ndarray
    chunk_plan: ChunkPlan | None = None
    rope_rule: str | None = None

    @property
    def max_relative_position(self) -> float:
        """Largest relative position used anywhere in the layout."""
        return float(self.relative_positions[self.mask].max())

    def to_dict(self) -> dict:
        """JSON-ready summary (matrices as nested lists)."""
        return {
            "method": self.method, "seq_len": self.seq_len, "params": self.params,
            "relative_positions": self.relative_positions.tolist(),
            "mask": self.mask.tolist(),
            "chunk_plan": self.chunk_plan.to_dict() if self.chunk_plan else None,
            "rope_rule": self.rope_rule,
        }


def layout_rows(method: "str | Method", seq_len: int, rows, **params):
    """Relative positions and mask for selected query ``rows`` only.

    Returns ``(relative_positions [len(rows), seq_len], mask, resolved_method)``;
    use it for sequences too long to draw densely.
    """
    m = resolve(method, seq_len, **params)
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= seq_len):
        raise ValueError(f"rows must lie in [0, {seq_len - 1}], got "
                         f"[{rows.min()}, {rows.max()}]")
    rel, vis = m.relative(rows[:, None], np.arange(seq_len)[None, :])
    rel = np.where(vis, rel, -1)
    return rel, vis, m


def layout(method: "str | Method", seq_len: int, **params) -> Layout:
    """The dense layout of ``method`` for ``seq_len`` tokens.

    ``params`` are the method's parameters (``train_length``, ``first_chunk``,
    ``chunk_size``, ``last_chunk``, ``stair_start``, ``stair_width``,
    ``window``, ``leak``, ``sink_tokens``, ...).  Raises ValueError for an
    unknown method or parameter, or a value outside its allowed range.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len={seq_len!r} must be an integer >= 1")
    if seq_len > MAX_DENSE_LAYOUT:
        raise ValueError(f"seq_len={seq_len} is too long for a dense [n, n] layout "
                         f"(allowed <= {MAX_DENSE_LAYOUT}); use layout_rows() for "
                         "selected query rows")
    rel, vis, m = layout_rows(method, seq_len, np.arange(seq_len), **params)
    T = m.train_length
    if vis.any() and rel[vis].max() >= T and not m.native:      # native: linear by design
        log.warning("%s layout uses relative position %s >= train_length=%d",
                    m.name, rel[vis].max(), T)
    return Layout(
        method=m.name, seq_len=int(seq_len), params=m.params(),
        relative_positions=rel, mask=vis,
        chunk_plan=m.plan() if m.chunked else None, rope_rule=m.rope_rule())
