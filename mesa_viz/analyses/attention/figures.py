"""Figures of attention rows: a heatmap that renders at any width (``T`` marked per
row at distance ``q - T``) and the attention mass by distance.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from ...viz.grid import wrap_title
from ...viz.marks import (ABOVE, add_marker_items, axis_info, mark, marker_items, positive)
from ...viz.reduce import (MAX_COLUMNS, MAX_ROWS, downsample, stride)
from ...viz.style import (MARK_COLOR_ON_DARK, PALETTE, method_color)

__all__ = ["attention_heatmap", "attention_by_distance", "distance_edges", "bin_centres",
           "check_window", "check_attn", "distance_mass"]


def check_attn(attn) -> np.ndarray:
    a = np.asarray(attn, dtype=float)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"attn has shape {np.shape(attn)}: allowed a non-empty "
                         "[q_row, k_pos] (or [k_pos]) array")
    return a


def _check_rows(query_rows, n_rows: int, name="query_rows") -> np.ndarray:
    if query_rows is None:
        return np.arange(n_rows)
    rows = np.asarray(query_rows).reshape(-1)
    if rows.size != n_rows:
        raise ValueError(f"{name} has {rows.size} entries but attn has {n_rows} rows: "
                         "allowed one query position per row")
    return rows


def check_window(window, width: int) -> tuple[int, int]:
    try:
        k0, k1 = (int(v) for v in window)
    except (TypeError, ValueError) as err:
        raise ValueError(f"window={window!r}: allowed (k_start, k_stop)") from err
    if not 0 <= k0 < k1 <= width:
        raise ValueError(f"window={window!r} is out of range: allowed "
                         f"0 <= k_start < k_stop <= {width}")
    return k0, k1


def attention_heatmap(attn, query_rows=None, block: int | None = None, reduce: str = "max",
                      log_color: bool = True, window=None, title: str | None = None,
                      marks: dict | None = None, train_length: int | None = None,
                      floor: float = 1e-6, max_columns: int = MAX_COLUMNS,
                      max_rows: int = MAX_ROWS, row_title: str = "query position q",
                      query_positions=None) -> go.Figure:
    """Attention rows ``attn [q_row, k_pos]`` as a heatmap that renders at any width.

    The key axis is block-downsampled (``reduce`` = ``"max"`` or ``"mean"``)
    to at most ``max_columns`` columns (``block`` forces a block size), the
    query axis likewise to ``max_rows``.  ``window=(k_start, k_stop)`` draws
    exact values of those keys (no downsampling up to ``max_columns`` keys).
    ``log_color`` colours by ``log10(max(p, floor))``.  ``marks``: name ->
    ``(k_start, k_stop)`` drawn as shaded spans (e.g. the passkey needle).
    Rows are labelled by ``query_rows`` (any labels; ``row_title`` names them).

    ``train_length`` marks, per row, where keys leave the trained range: for
    query ``q`` the keys ``k <= q - T`` are at distance ``>= T``, so a line
    at ``k = q - T + 0.5`` (one line when all rows share ``q``, else a segment
    per row; rows with ``q < T`` have no such keys and no mark).  The query
    position of each row is ``query_positions``, else ``query_rows`` when they
    are integers, else the last key (a causal row cut at its query); the
    label says which ``q`` it used.  A downsampled row block uses its first
    row's ``q``.  The block sizes used are in ``fig.layout.meta``.
    """
    a = check_attn(attn)
    rows = _check_rows(query_rows, a.shape[0])
    q = _query_positions(query_positions, query_rows, a.shape)
    k0, k1 = (0, a.shape[1]) if window is None else check_window(window, a.shape[1])
    a = a[:, k0:k1]
    kb = block if block is not None else stride(a.shape[1], max_columns)
    a = downsample(a, kb, axis=1, reduce=reduce)
    qb = stride(a.shape[0], max_rows)
    a = downsample(a, qb, axis=0, reduce=reduce)
    z = np.log10(np.maximum(a, floor)) if log_color else a
    x = np.arange(k0, k1, kb) + (kb - 1) / 2                 # block centres
    y = rows[::qb]
    fig = go.Figure(go.Heatmap(
        z=z, x=x, y=[str(r) for r in y], customdata=a, name="attention",
        colorscale="Magma", reversescale=False,
        colorbar=dict(title="log10 p" if log_color else "p"),
        hovertemplate=("%{y}<br>" + (f"k≈%{{x:.1f}} (block of {kb}, {reduce})" if kb > 1
                                     else "k=%{x}") + "<br>p=%{customdata:.3g}<extra></extra>")))
    fig.update_yaxes(autorange="reversed", title_text=row_title, type="category")
    fig.update_xaxes(title_text="key position k", range=[k0 - 0.5, k1 - 0.5])
    _mark_spans(fig, marks or {})
    if train_length is not None:
        _mark_distance_boundary(fig, q[::qb], positive(train_length, "train_length"))
    fig.update_layout(title=title or _attn_title(kb, reduce, window),
                      meta=dict(key_block=kb, query_block=qb, reduce=reduce,
                                window=[k0, k1]),
                      height=max(300, min(700, 140 + 18 * len(y))))
    return fig


def _query_positions(query_positions, query_rows, shape) -> np.ndarray:
    """``[q_row]`` query positions: given, the integer row labels, or the last key."""
    if query_positions is not None:
        q = np.asarray(query_positions).reshape(-1)
        if q.size != shape[0] or not np.issubdtype(q.dtype, np.integer):
            raise ValueError(f"query_positions={query_positions!r}: allowed {shape[0]} "
                             "integer positions, one per row")
        return q
    labels = None if query_rows is None else np.asarray(query_rows).reshape(-1)
    if labels is not None and np.issubdtype(labels.dtype, np.integer):
        return labels
    return np.full(shape[0], shape[1] - 1)


def _mark_distance_boundary(fig: go.Figure, q: np.ndarray, T: int) -> None:
    """Where keys reach distance ``>= T`` for each drawn row (query ``q``)."""
    rows = [i for i, qi in enumerate(q) if qi >= T]
    if not rows:
        return
    if len(set(q[rows])) == 1 and len(rows) == len(q):
        mark(fig, q[0] - T + 0.5, name="train_length", color=MARK_COLOR_ON_DARK,
             label=f"◀ distance ≥ T={T} (q={q[0]})", label_at=0.02)
        return
    x, y = axis_info(fig, "x"), axis_info(fig, "y")
    add_marker_items(fig, [marker_items(           # labelled once, at the bottom row
        x, y, q[i] - T + 0.5, name="train_length", across=(i - 0.5, i + 0.5),
        color=MARK_COLOR_ON_DARK, label=f"◀ distance ≥ T={T}" if i == rows[-1] else None,
        label_at=0.02, dash="solid", width=2.5) for i in rows])


def _attn_title(kb: int, reduce: str, window) -> str:
    what = "attention" if window is None else f"attention, keys [{window[0]}, {window[1]})"
    return what + (f" ({reduce} over blocks of {kb} keys)" if kb > 1 else "")


def _mark_spans(fig: go.Figure, marks: dict) -> None:
    """Shaded key spans ``name -> (k_start, k_stop)`` (clipped to the keys drawn)."""
    for k, (name, span) in enumerate(marks.items()):
        s0, s1 = check_window(span, 10 ** 12)
        mark(fig, s0 - 0.5, to=s1 - 0.5, name=str(name), label=str(name),
             color=PALETTE[(k + 2) % len(PALETTE)], fill_opacity=0.3, label_at=0.98)


def distance_edges(bins, max_d: int, train_length: int | None = None) -> np.ndarray:
    """Bin edges over distances ``0..max_d``; ``train_length`` is always an edge
    (when inside), with log-spaced bins below it and separate ones from it on."""
    T = train_length if train_length is not None and 0 < train_length <= max_d else None
    if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
        if bins < 1:
            raise ValueError(f"bins={bins}: allowed an integer >= 1 or bin edges")
        if T is None or T == 1:
            inner = np.geomspace(1, max_d + 1, bins)
        else:
            far = max(1, round(bins * math.log((max_d + 1) / T) / math.log(max_d + 1)))
            near = max(1, bins - 1 - far)
            inner = np.r_[np.geomspace(1, T, near + 1), np.geomspace(T, max_d + 1, far + 1)]
        edges = np.unique(np.concatenate([[0], np.round(inner).astype(int), [max_d + 1]]))
    else:
        edges = np.asarray(bins, dtype=float).reshape(-1)
        if edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise ValueError(f"bins={bins!r}: allowed an integer or increasing edges (>= 2)")
    if T is not None and edges[0] < T < edges[-1]:
        edges = np.union1d(edges, [T])
    return edges


def bin_centres(edges: np.ndarray, log: bool) -> np.ndarray:
    """Where each bin ``[a, b)`` of integer distances is drawn: the middle of the
    distances it holds (geometric on a log axis, distance 0 at 0.5)."""
    a = np.ceil(edges[:-1])
    b = np.maximum(np.ceil(edges[1:]) - 1, a)
    if log:
        return np.sqrt(np.maximum(a, 0.5) * np.maximum(b, 0.5))
    return (a + b) / 2


def distance_mass(a: np.ndarray, rows: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``[q_row, bin]`` attention mass of ``a [q_row, k_pos]`` by distance bin."""
    d = rows[:, None] - np.arange(a.shape[1])[None, :]
    which = np.searchsorted(edges, d, side="right") - 1
    ok = (d >= 0) & (which >= 0) & (which < len(edges) - 1)
    mass = np.zeros((a.shape[0], len(edges) - 1))
    for r in range(a.shape[0]):
        np.add.at(mass[r], which[r, ok[r]], a[r, ok[r]])
    return mass


def attention_by_distance(attn, query_rows, bins=24, mean: bool = False,
                          train_length: int | None = None, title: str | None = None,
                          names=None, log_x: bool = True, of: str | None = None) -> go.Figure:
    """Attention mass against relative distance ``d = q - k`` in log-spaced bins.

    ``attn [q_row, k_pos]``; ``query_rows [q_row]`` the query positions.
    One line per query row (``names`` labels them; default ``q=<row>``), or
    their mean (``mean=True``).  ``bins``: a number of log-spaced bins or
    explicit increasing edges (``[lo, hi)``).  Points sit at the middle of
    their bin's distances; ``log_x``: log distance axis.

    ``train_length`` (``T``) is made a bin edge, so the bins at distance
    ``>= T`` hold exactly the mass past the trained range: they are shaded,
    ``T`` is marked, and each curve's total there is in the subtitle and in
    ``fig.layout.meta["mass_beyond_train_length"]``.

    A row that sums to more than 1 (e.g. the max over heads per key, ``of``
    names it: ``"max over heads"``) is no distribution: its bin totals are
    sums of that value, said so on the y axis and in the subtitle, and never
    printed as a percentage.  Curves are coloured by
    :func:`~mesa_viz.viz.style.method_color` of their name.
    """
    a = check_attn(attn)
    rows = _check_rows(query_rows, a.shape[0])
    if rows.min() < 0 or rows.max() >= a.shape[1]:
        raise ValueError(f"query_rows must lie in [0, {a.shape[1] - 1}] (key positions), "
                         f"got [{rows.min()}, {rows.max()}]")
    T = None if train_length is None else positive(train_length, "train_length")
    edges = distance_edges(bins, int(rows.max()), T)
    mass = distance_mass(a, rows, edges)
    if names is not None and len(names) != len(rows):
        raise ValueError(f"names has {len(names)} entries: allowed one per row ({len(rows)})")
    names = [f"q={q}" for q in rows] if names is None else [str(n) for n in names]
    curves = {"mean": mass.mean(axis=0)} if mean else dict(zip(names, mass))
    x = bin_centres(edges, log_x)
    shares = bool(np.all(mass.sum(axis=1) <= 1 + 1e-3))      # rounding of a softmax row
    what = "mass" if shares else (of or "the values")
    fig = go.Figure([go.Scatter(x=x, y=m, name=name, mode="lines+markers",
                                line_color=method_color(name),
                                customdata=np.stack([edges[:-1], edges[1:]], axis=1),
                                hovertemplate="d in [%{customdata[0]}, %{customdata[1]})"
                                              f"<br>{'mass' if shares else 'sum'}=%{{y:.3g}}"
                                              "<extra>%{fullData.name}"
                                              "</extra>")
                     for name, m in curves.items()])
    fig.update_xaxes(type="log" if log_x else "linear",
                     title_text="relative distance q - k (middle of bin)")
    fig.update_yaxes(title_text="attention mass in bin" if shares else
                     "sum in bin (not a share)")
    fig.update_layout(title=wrap_title(title or "attention mass by distance"), height=400)
    if T is not None:
        _mark_beyond(fig, curves, edges, x, T, None if shares else what)
    return fig


def _mark_beyond(fig: go.Figure, curves: dict, edges: np.ndarray, x: np.ndarray, T: int,
                 summed: str | None = None) -> None:
    """Shade the bins at distance >= T, mark T, and report the mass there (a
    share in %; ``summed``: what rows that are no distribution sum, as a number)."""
    far = edges[:-1] >= T
    beyond = {name: float(m[far].sum()) for name, m in curves.items()}
    mark(fig, T, name="train_length", label=f"T={T}", label_at=ABOVE)
    if far.any():
        mark(fig, T, to=float(x[far].max()), name="distance >= T", color="#d62728",
             fill_opacity=0.08)
        fmt = "{:.2%}" if summed is None else "{:.3g}"
        shown = ", ".join(f"{n} {fmt.format(v)}" for n, v in list(beyond.items())[:4])
        more = f" (+{len(beyond) - 4} more in meta)" if len(beyond) > 4 else ""
        what = ("attention mass" if summed is None
                else f"{summed}, summed (not a share: rows sum to > 1)")
        note = f"{what} at distance ≥ T={T} (shaded): {shown}{more}"
    else:
        note = f"no bin reaches distance T={T}"
    lines = (fig.layout.title.text or "").count("<br>")        # a wrapped title's extra lines
    fig.update_layout(title_subtitle_text=note, margin_t=100 + 22 * lines,
                      meta=dict(mass_beyond_train_length=beyond))
