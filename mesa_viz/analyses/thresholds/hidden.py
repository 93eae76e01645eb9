"""The paper's own views on the real model (Appendix F, Figures 11-16): a trace's
hidden-state values over position windows around and past ``T``, pooled for
display, and how much they change across ``T`` and to the end."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...runtime import Trace

__all__ = ["HiddenView", "paper_windows", "hidden_view", "mean_change", "layer_changes",
           "format_changes"]


@dataclass
class HiddenView:
    """One trace's hidden-state values over position windows, pooled for display.

    ``values[w] [layer, dim, col]``: window ``w`` = ``windows[w]`` (``start,
    stop``), column ``c`` the mean of positions ``edges[w][c] ..
    edges[w][c + 1] - 1`` (``edges[w] [col + 1]``; ``pool`` positions a column,
    column edges at ``T + k * pool`` so ``T`` is always an edge).  With
    ``relative_to`` (a position), every value is minus the column of ``pool``
    positions ending there in the trace of method ``reference``.
    """

    method: str
    train_length: int
    seq_len: int
    layers: list[int]
    dims: list[int]
    windows: list[tuple[int, int]]
    pool: int
    edges: list[np.ndarray]
    values: list[np.ndarray]
    relative_to: int | None = None
    reference: str | None = None


def paper_windows(seq_len: int, train_length: int, width: int | None = None
                  ) -> list[tuple[int, int]]:
    """The position windows of the paper's Figures 11-16, scaled to ``T``:
    ``width`` positions (default ``T/4``; the paper: 1000 at ``T = 4096``)
    starting ``width/8`` before ``T`` (the paper: 4000-5000) and the last
    ``width`` positions; windows that overlap are merged, and what lies past
    ``seq_len`` is cut."""
    width = max(1, train_length // 4) if width is None else width
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width={width!r}: allowed an integer >= 1 (positions)")
    start = max(0, train_length - width // 8)
    spans = [(start, min(seq_len, start + width)), (max(0, seq_len - width), seq_len)]
    merged: list[tuple[int, int]] = []
    for a, b in sorted(s for s in spans if s[0] < s[1]):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def _indices(name: str, wanted, have) -> list[int]:
    """Where each of ``wanted`` (default all of ``have``) sits in ``have``."""
    have = [int(v) for v in have]
    wanted = have if wanted is None else [int(v) for v in wanted]
    missing = [v for v in wanted if v not in have]
    if missing or not wanted:
        raise ValueError(f"{name} {missing or wanted}: allowed a non-empty list of the traced "
                         f"{name} {have[:12]}{' ...' if len(have) > 12 else ''}")
    return [have.index(v) for v in wanted]


def _check_windows(windows, seq_len: int) -> list[tuple[int, int]]:
    spans = [(int(a), int(b)) for a, b in windows]
    if not spans or any(not 0 <= a < b <= seq_len for a, b in spans) or any(
            b1 > a2 for (_, b1), (a2, _) in zip(spans, spans[1:])):
        raise ValueError(f"windows={spans}: allowed sorted, non-overlapping (start, stop) "
                         f"with 0 <= start < stop <= {seq_len}")
    return spans


def _edges(a: int, b: int, pool: int, T: int) -> np.ndarray:
    """Column edges of window ``[a, b)``: ``a``, every ``T + k * pool`` inside, ``b``."""
    first = T + -((T - a) // pool) * pool                      # smallest T + k*pool >= a
    inner = np.arange(first, b, pool)
    return np.unique(np.concatenate([[a], inner[inner > a], [b]])).astype(np.int64)


def _pooled(hidden: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``hidden [layer, pos, dim]`` -> ``[layer, dim, col]``, each column the
    mean of its positions ``edges[c] .. edges[c + 1] - 1``."""
    a, b = int(edges[0]), int(edges[-1])
    sums = np.add.reduceat(hidden[:, a:b].astype(np.float64), edges[:-1] - a, axis=1)
    return np.transpose(sums / np.diff(edges)[None, :, None], (0, 2, 1))


def hidden_view(tr: Trace, *, layers=None, dims=None, windows=None, columns: int = 1000,
                relative_to: int | None = None, reference: Trace | None = None) -> HiddenView:
    """The heat-map data of the paper's Figures 11-16 from one trace: hidden
    layers x dims x position windows, pooled to at most ``columns`` columns
    over all windows, plus one a window where aligning on ``T`` splits one
    (no pooling when they fit).

    ``layers``/``dims``: default all the trace holds.  ``windows``: default
    :func:`paper_windows`; ``"all"``: every position; else sorted
    ``(start, stop)`` pairs.  ``relative_to``: a position (e.g. ``T - 1``):
    show each value minus ``reference``'s (default this trace's) column of
    ``pool`` positions ending there.
    """
    T, n = tr.train_length, tr.seq_len
    li, di = _indices("hidden layers", layers, tr.hidden_layers), _indices("dims", dims, tr.dims)
    spans = paper_windows(n, T) if windows is None else \
        [(0, n)] if isinstance(windows, str) and windows == "all" else None
    if spans is None and isinstance(windows, str):
        raise ValueError(f"windows={windows!r}: allowed None (the paper's), 'all' or "
                         "(start, stop) pairs")
    spans = _check_windows(spans if spans is not None else windows, n)
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise ValueError(f"columns={columns!r}: allowed an integer >= 1")
    pool = max(1, -(-sum(b - a for a, b in spans) // columns))
    hidden = tr.hidden[np.ix_(li, np.arange(n), di)]              # [layer, pos, dim]
    edges = [_edges(a, b, pool, T) for a, b in spans]
    values = [_pooled(hidden, e) for e in edges]
    if relative_to is not None:
        values = [v - _baseline(reference or tr, li, di, pool, relative_to, tr)
                  for v in values]
    return HiddenView(tr.method, T, n, [int(tr.hidden_layers[k]) for k in li],
                      [int(tr.dims[k]) for k in di], spans, pool, edges, values,
                      None if relative_to is None else int(relative_to),
                      None if relative_to is None else (reference or tr).method)


def _baseline(ref: Trace, li, di, pool: int, at: int, tr: Trace) -> np.ndarray:
    """``[layer, dim, 1]``: ``ref``'s mean of the ``pool`` positions ending at ``at``."""
    if not 0 <= at < ref.seq_len:
        raise ValueError(f"relative_to={at}: allowed a position in [0, {ref.seq_len})")
    if (list(ref.hidden_layers), list(ref.dims)) != (list(tr.hidden_layers), list(tr.dims)):
        raise ValueError("reference holds other hidden layers or dims than the trace: allowed "
                         "a trace of the same layers and dims")
    lo = max(0, at - pool + 1)
    return ref.hidden[np.ix_(li, np.arange(lo, at + 1), di)].mean(axis=1)[..., None]


def mean_change(tr: Trace, at: int, width: int, *, layers=None, dims=None,
                to: int | None = None) -> np.ndarray:
    """``[layer, dim]``: the mean value over ``[to - width, to)`` (default
    ``to = at + width``, the ``width`` positions from ``at``) minus the mean over
    the ``width`` positions before ``at``: the jump at ``T`` the paper's heat
    maps show (``at = T``), or the drift to the end (``to = seq_len``)."""
    to = at + width if to is None else to
    if not (isinstance(width, (int, np.integer)) and 1 <= width <= at and at < to - width + 1
            and to <= tr.seq_len):
        raise ValueError(f"at={at}, width={width}, to={to}: allowed width >= 1 positions "
                         f"before at and at <= to - width, to <= {tr.seq_len}")
    li, di = _indices("hidden layers", layers, tr.hidden_layers), _indices("dims", dims, tr.dims)
    h = tr.hidden[np.ix_(li, np.arange(tr.seq_len), di)].astype(np.float64)
    return h[:, to - width:to].mean(axis=1) - h[:, at - width:at].mean(axis=1)


def layer_changes(tr: Trace, width: int, *, layers=None, dims=None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(at_t, to_end)``, each ``[layer]``: the mean over ``dims`` of
    ``|mean_change|`` across ``T`` (the ``width`` positions after against the
    ``width`` before) and to the end (the last ``width`` against the same)."""
    T = tr.train_length
    at = np.abs(mean_change(tr, T, width, layers=layers, dims=dims)).mean(axis=1)
    end = np.abs(mean_change(tr, T, width, layers=layers, dims=dims, to=tr.seq_len))
    return at, end.mean(axis=1)


def format_changes(traces: dict, width: int, *, layers=None, dims=None) -> str:
    """One line per method (method -> Trace) of :func:`layer_changes`:
    ``L<layer> <across T>/<to the end>``."""
    lines = [f"mean |change| over the dims, per hidden layer: across T ({width} positions after "
             f"vs before) / to the end (last {width} vs the {width} before T)"]
    for m, tr in traces.items():
        at, end = layer_changes(tr, width, layers=layers, dims=dims)
        shown = tr.hidden_layers if layers is None else layers
        lines.append(f"{m:>14}: " + "  ".join(
            f"L{l} {a:.3g}/{e:.3g}" for l, a, e in zip(shown, at, end)))
    return "\n".join(lines)
