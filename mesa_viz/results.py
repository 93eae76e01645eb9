"""Plain result objects: what probes capture, saved before anything is drawn.

No torch, no transformers: a result loads and plots without the model.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .methods import get_method

__all__ = ["Trace", "needle_share", "append_jsonl", "read_jsonl", "save_result",
           "load_result", "wilson_interval", "format_table"]


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


def save_result(result, path: "str | Path", arrays, skip=()) -> Path:
    """Write a result dataclass as ``path.npz`` (its fields named in ``arrays``
    that are not None, less ``skip``) and ``path.json`` (its other fields)."""
    path = _stem(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(_with(path, ".npz"), **{
        k: getattr(result, k) for k in arrays if getattr(result, k) is not None and k not in skip})
    meta = {k: v for k, v in asdict(result).items() if k not in arrays}
    _with(path, ".json").write_text(json.dumps(meta, default=_jsonable))
    return path


def load_result(cls, path: "str | Path"):
    """The ``cls`` instance :func:`save_result` wrote at ``path``."""
    path = _stem(path)
    meta = json.loads(_with(path, ".json").read_text())
    with np.load(_with(path, ".npz")) as arrays:
        meta.update({k: arrays[k] for k in arrays.files})
    return cls(**meta)


def _stem(path: "str | Path") -> Path:
    """``path`` without a ``.json`` / ``.npz`` suffix (other dots are kept)."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".json", ".npz") else path


def _with(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)


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


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot save {type(value).__name__} to JSON")


def append_jsonl(path: "str | Path", row: dict) -> None:
    """Append one JSON line and flush it to disk (results survive a crash)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row, default=_jsonable) + "\n")
        f.flush()


def read_jsonl(path: "str | Path") -> list[dict]:
    """All rows of a JSON-lines file (an absent file has none)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for ``hits`` successes in ``n`` trials (95 % for
    ``z = 1.96``); ``(nan, nan)`` when ``n == 0``."""
    if n <= 0:
        return math.nan, math.nan
    p = hits / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


#: Columns :func:`format_table` writes as percentages.
PERCENT_COLUMNS = ("accuracy", "ci_low", "ci_high", "score")


def format_table(table: list[dict]) -> str:
    """A plain-text table of summary rows (the columns of the first row;
    :data:`PERCENT_COLUMNS` as percentages, other floats with 4 digits)."""
    if not table:
        return "(no rows)"
    cols = list(table[0])
    cells = [[_cell(r.get(c), c) for c in cols] for r in table]
    width = [max(len(c), *(len(row[k]) for row in cells)) for k, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, width))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, width)) for row in cells]
    return "\n".join(lines)


def _cell(value, column: str) -> str:
    if isinstance(value, float) and column in PERCENT_COLUMNS:
        return f"{value:.0%}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
