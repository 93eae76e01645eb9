"""The result of :func:`mesa_viz.trace`: what one forward computed under one
method, plain numpy, saved before anything is drawn and loaded without the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..methods import get_method
from ..runs.arrays import load_result, save_result

__all__ = ["Trace", "needle_share"]


@dataclass
class Trace:
    """What ``trace()`` captured from one forward pass under one method.

    Shapes: ``attention [layer, head, q_row, k_pos]`` (probabilities, rows sum
    to 1), ``hidden [hidden_layer, pos, dim]`` (hidden-state values at the
    chosen dims), ``norms [hidden_layer, pos]`` (L2 norm of the whole hidden
    state).  Hidden layer ``l`` follows transformers' ``output_hidden_states``:
    0 is the embedding output, ``l`` the output of decoder layer ``l - 1``.
    """

    method: str
    params: dict
    train_length: int
    input_ids: np.ndarray                    # [pos]
    tokens: list[str]
    layers: list[int]
    heads: list[int]
    query_rows: list[int]
    attention: np.ndarray                    # [layer, head, q_row, k_pos]
    hidden_layers: list[int]
    dims: list[int]
    hidden: np.ndarray                       # [hidden_layer, pos, dim]
    norms: np.ndarray                        # [hidden_layer, pos]
    chunk_plan: list[list[int]] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return int(len(self.input_ids))

    def layout_rows(self, rows=None):
        """``(relative_positions, mask)`` ``[q_row, k_pos]`` the method used for
        ``rows`` (default: the captured query rows), recomputed from the params."""
        rows = np.asarray(self.query_rows if rows is None else rows, dtype=np.int64)
        m = get_method(self.method, **self.params)
        rel, vis = m.relative(rows[:, None], np.arange(self.seq_len)[None, :])
        return np.where(vis, rel, -1), vis

    def attention_row(self, layer: int, head: int, row: int) -> np.ndarray:
        """``[k_pos]`` attention of captured query ``row`` at (``layer``, ``head``)."""
        return self.attention[self.layers.index(layer), self.heads.index(head),
                              self.query_rows.index(row)]

    def needle_share(self, needle: tuple[int, int], row: int | None = None) -> np.ndarray:
        """``[layer, head]`` attention of captured query ``row`` (default the
        last captured) on the needle tokens ``[start, stop)``."""
        row = self.query_rows[-1] if row is None else row
        return needle_share(self.attention[:, :, self.query_rows.index(row)], needle)

    def hidden_values(self, layer: int, dim: int) -> np.ndarray:
        """``[pos]`` hidden-state value at (``layer``, ``dim``)."""
        return self.hidden[self.hidden_layers.index(layer), :, self.dims.index(dim)]

    # -- persistence ----------------------------------------------------------
    _ARRAYS = ("input_ids", "attention", "hidden", "norms")

    def save(self, path: "str | Path") -> Path:
        """Write ``path.npz`` (arrays) and ``path.json`` (everything else)."""
        return save_result(self, path, self._ARRAYS)

    @classmethod
    def load(cls, path: "str | Path") -> "Trace":
        return load_result(cls, path)


def needle_share(attention, needle: tuple[int, int]):
    """Attention probability on the needle tokens ``needle = (start, stop)``:
    ``attention [..., k_pos]`` summed over ``k_pos`` in ``[start, stop)``.
    Returns ``[...]`` (a float for one row ``[k_pos]``)."""
    attention = np.asarray(attention)
    start, stop = (int(v) for v in needle)
    if not 0 <= start < stop <= attention.shape[-1]:
        raise ValueError(f"needle={tuple(needle)!r}: allowed (start, stop) with "
                         f"0 <= start < stop <= {attention.shape[-1]}")
    share = attention[..., start:stop].sum(axis=-1)
    return float(share) if share.ndim == 0 else share
