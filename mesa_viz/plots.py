"""Plotly figures from layouts and results.  Every function returns a
``plotly.graph_objects.Figure`` and never displays it.

Inputs are plain values: numpy arrays, :class:`~mesa_viz.layouts.Layout`,
:class:`~mesa_viz.methods.ChunkPlan`, and lists of row dicts (passkey and
bench results).  No torch, no transformers.  Bad input raises ``ValueError``
naming the bad value and what is allowed.

Long inputs are reduced before drawing so that figures render in a browser:
attention rows 16k+ keys wide are block-downsampled to at most
``MAX_COLUMNS`` columns (``window=`` zooms in on exact values), dense layouts
are sampled with a stride, and long hidden-state curves keep each block's
minimum and maximum.
"""

from __future__ import annotations

import csv
import html
import json
import logging
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .layouts import Layout
from .methods import METHODS, ChunkPlan

__all__ = [
    "MAX_COLUMNS", "MAX_ROWS", "method_color", "downsample",
    "layout_heatmap", "layouts_side_by_side", "layout_difference", "chunk_plan_figure",
    "attention_heatmap", "attention_by_distance", "hidden_state_figure",
    "passkey_heatmap", "passkey_accuracy_lines", "bench_figure", "save_html", "load_rows",
    "smooth_values",
]

log = logging.getLogger(__name__)

#: Most key columns an attention heatmap draws before block-downsampling.
MAX_COLUMNS = 1000
#: Most query rows an attention heatmap draws before block-downsampling.
MAX_ROWS = 400
#: Largest side of a layout heatmap before stride sampling.
MAX_LAYOUT_SIDE = 512
#: Most points per hidden-state curve before min/max envelope reduction.
MAX_POINTS = 4000

_PALETTE = tuple(qualitative.D3)
_CHUNK_COLORS = (("first", "#1f77b4"), ("middle", "#2ca02c"), ("last", "#d62728"),
                 ("whole", "#7f7f7f"))
_REDUCERS = ("max", "mean")


def method_color(name: str) -> str:
    """A fixed colour per method name (known methods first, others by name)."""
    names = list(METHODS)
    idx = names.index(name) if name in names else len(names) + sum(map(ord, str(name)))
    return _PALETTE[idx % len(_PALETTE)]


# -- helpers -------------------------------------------------------------------

def _check_layout(obj, name="layout") -> Layout:
    if not isinstance(obj, Layout):
        raise ValueError(f"{name} must be a mesa_viz.Layout, got {type(obj).__name__}")
    return obj


def _masked_z(lay: Layout) -> np.ndarray:
    """``[q, k]`` float relative positions, NaN where masked."""
    return np.where(lay.mask, lay.relative_positions, np.nan).astype(float)


def _stride(n: int, limit: int) -> int:
    return max(1, math.ceil(n / limit))


def downsample(a: np.ndarray, block: int, axis: int = -1, reduce: str = "max") -> np.ndarray:
    """Reduce ``a`` along ``axis`` in blocks of ``block`` by ``max`` or ``mean``.

    The last block may be shorter (NaN-padded, ignored by the reduction).
    ``[q, k]`` with ``block=b`` on axis -1 gives ``[q, ceil(k / b)]``.
    """
    if reduce not in _REDUCERS:
        raise ValueError(f"reduce={reduce!r}: allowed {list(_REDUCERS)}")
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


def _layout_trace(lay: Layout, coloraxis: str | None = None) -> go.Heatmap:
    """Heatmap trace of ``lay.relative_positions [q, k]``, stride-sampled if large."""
    s = _stride(lay.seq_len, MAX_LAYOUT_SIDE)
    idx = np.arange(0, lay.seq_len, s)
    z = _masked_z(lay)[::s, ::s]
    return go.Heatmap(
        z=z, x=idx, y=idx, name=lay.method, coloraxis=coloraxis,
        colorscale=None if coloraxis else "Viridis",
        colorbar=None if coloraxis else dict(title="relative<br>position"),
        hovertemplate="q=%{y}<br>k=%{x}<br>relative position=%{z}<extra>"
                      + html.escape(lay.method) + "</extra>")


def _reverse_y(fig: go.Figure, **kwargs) -> None:
    """Query 0 at the top, square cells (q and k share a scale)."""
    fig.update_yaxes(autorange="reversed", title_text="query position q", scaleanchor="x",
                     constrain="domain", **kwargs)
    fig.update_xaxes(title_text="key position k", constrain="domain", **kwargs)


def _layout_title(lay: Layout) -> str:
    T = lay.params.get("train_length")
    return f"{lay.method}: n={lay.seq_len}, T={T}"


# -- layouts -------------------------------------------------------------------

def layout_heatmap(layout: Layout, title: str | None = None) -> go.Figure:
    """Heatmap of ``layout.relative_positions [q, k]``; masked cells are blank.

    Hover shows q, k and the relative position.  Mesa's chunk boundaries
    (``layout.chunk_plan``) are drawn as dashed lines with labels.
    """
    lay = _check_layout(layout)
    fig = go.Figure(_layout_trace(lay))
    _reverse_y(fig)
    if lay.chunk_plan is not None and len(lay.chunk_plan.chunks) > 1:
        _annotate_chunks(fig, lay.chunk_plan)
    fig.update_layout(title=title or _layout_title(lay), height=520)
    return fig


def _chunk_kinds(plan: ChunkPlan) -> list[str]:
    n = len(plan.chunks)
    if n == 1:
        return ["whole"]
    return ["first"] + ["middle"] * (n - 2) + ["last"]


def _annotate_chunks(fig: go.Figure, plan: ChunkPlan) -> None:
    """Dashed lines at each chunk start (both axes) and a label per chunk."""
    for (start, stop), kind in zip(plan.chunks, _chunk_kinds(plan)):
        if start > 0:
            for axis in ("x", "y"):
                fig.add_shape(type="line", xref="x" if axis == "x" else "paper",
                              yref="y" if axis == "y" else "paper",
                              x0=start - 0.5 if axis == "x" else 0,
                              x1=start - 0.5 if axis == "x" else 1,
                              y0=0 if axis == "x" else start - 0.5,
                              y1=1 if axis == "x" else start - 0.5,
                              line=dict(color="white", width=1, dash="dash"),
                              name=f"chunk boundary {start}")
        fig.add_annotation(x=plan.chunks[-1][1] - 0.5, xref="x", xanchor="left",
                           y=(start + stop - 1) / 2, yref="y", text=kind, showarrow=False,
                           font=dict(size=10))


def layouts_side_by_side(layouts, cols: int | None = None,
                         title: str | None = None) -> go.Figure:
    """One heatmap subplot per Layout, sharing one colour scale."""
    layouts = list(layouts)
    if not layouts:
        raise ValueError("layouts is empty: allowed a non-empty list of Layout")
    for k, lay in enumerate(layouts):
        _check_layout(lay, f"layouts[{k}]")
    cols = cols or min(4, len(layouts))
    rows = math.ceil(len(layouts) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[_layout_title(l) for l in layouts],
                        horizontal_spacing=0.04, vertical_spacing=0.08)
    vmax = max(float(np.nanmax(_masked_z(l))) for l in layouts)
    for k, lay in enumerate(layouts):
        fig.add_trace(_layout_trace(lay, coloraxis="coloraxis"), row=k // cols + 1, col=k % cols + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(coloraxis=dict(colorscale="Viridis", cmin=0, cmax=vmax,
                                     colorbar=dict(title="relative<br>position")),
                      height=300 * rows + 80, title=title or "position layouts")
    return fig


def layout_difference(a: Layout, b: Layout, title: str | None = None) -> go.Figure:
    """Heatmap of ``a - b`` (relative positions) where both see the key, and a
    second trace marking where the masks differ (seen by only one of them)."""
    a, b = _check_layout(a, "a"), _check_layout(b, "b")
    if a.seq_len != b.seq_len:
        raise ValueError(f"seq_len differs: a has {a.seq_len}, b has {b.seq_len}; "
                         "allowed: layouts of the same length")
    s = _stride(a.seq_len, MAX_LAYOUT_SIDE)
    idx = np.arange(0, a.seq_len, s)
    za, zb = _masked_z(a)[::s, ::s], _masked_z(b)[::s, ::s]
    diff = za - zb
    only = np.where(a.mask[::s, ::s] & ~b.mask[::s, ::s], 1.0,
                    np.where(b.mask[::s, ::s] & ~a.mask[::s, ::s], -1.0, np.nan))
    lim = max(1.0, float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 1.0)
    fig = go.Figure([
        go.Heatmap(z=diff, x=idx, y=idx, name="difference", colorscale="RdBu", zmid=0,
                   zmin=-lim, zmax=lim, colorbar=dict(title=f"{a.method}<br>- {b.method}"),
                   hovertemplate="q=%{y}<br>k=%{x}<br>difference=%{z}<extra></extra>"),
        go.Heatmap(z=only, x=idx, y=idx, name="mask differs", showscale=False, zmin=-1, zmax=1,
                   colorscale=[[0, "#7b3294"], [1, "#fdb863"]],
                   hovertemplate="q=%{y}<br>k=%{x}<br>%{text}<extra></extra>",
                   text=np.where(only == 1, f"only {a.method} sees it",
                                 np.where(only == -1, f"only {b.method} sees it", ""))),
    ])
    _reverse_y(fig)
    fig.update_layout(title=title or f"{a.method} - {b.method} (n={a.seq_len}); "
                      "orange: only first sees the key, purple: only second",
                      height=520)
    return fig


def _as_plan(layout_or_plan, seq_len) -> tuple[ChunkPlan, str]:
    if isinstance(layout_or_plan, Layout):
        if layout_or_plan.chunk_plan is None:
            raise ValueError(f"method {layout_or_plan.method!r} has no chunk plan: "
                             "allowed a Mesa layout, a ChunkPlan or (start, stop) pairs")
        return layout_or_plan.chunk_plan, f"{layout_or_plan.method}, n={layout_or_plan.seq_len}"
    if isinstance(layout_or_plan, ChunkPlan):
        plan = layout_or_plan
    else:
        try:
            plan = ChunkPlan(tuple((int(a), int(b)) for a, b in layout_or_plan))
        except (TypeError, ValueError) as err:
            raise ValueError(f"layout_or_plan={layout_or_plan!r}: allowed a Layout, a "
                             "ChunkPlan or a list of (start, stop) pairs") from err
    _check_plan(plan, seq_len)
    return plan, f"n={plan.chunks[-1][1]}" if plan.chunks else ""


def _check_plan(plan: ChunkPlan, seq_len) -> None:
    if not plan.chunks:
        raise ValueError("chunk plan is empty: allowed at least one (start, stop) pair")
    expected = 0
    for start, stop in plan.chunks:
        if start != expected or stop <= start:
            raise ValueError(f"chunk ({start}, {stop}) is invalid: chunks must be non-empty, "
                             f"contiguous and start at 0 (expected start {expected})")
        expected = stop
    if seq_len is not None and expected != seq_len:
        raise ValueError(f"chunk plan ends at {expected} but seq_len={seq_len}")


def chunk_plan_figure(layout_or_plan, seq_len: int | None = None,
                      title: str | None = None) -> go.Figure:
    """Mesa's chunk plan as horizontal bars (first / middle / last chunks).

    ``layout_or_plan``: a Mesa Layout, a ChunkPlan or ``(start, stop)`` pairs;
    ``seq_len`` (optional) is checked against the plan's end.
    """
    plan, what = _as_plan(layout_or_plan, seq_len)
    kinds = _chunk_kinds(plan)
    fig = go.Figure()
    for kind, color in _CHUNK_COLORS:
        sel = [(k, c) for k, (c, kk) in enumerate(zip(plan.chunks, kinds)) if kk == kind]
        if not sel:
            continue
        fig.add_trace(go.Bar(
            orientation="h", name=kind, marker_color=color,
            y=[f"chunk {k}" for k, _ in sel], base=[c[0] for _, c in sel],
            x=[c[1] - c[0] for _, c in sel],
            customdata=[[c[0], c[1], c[1] - c[0]] for _, c in sel],
            hovertemplate="%{y} (" + kind + ")<br>tokens [%{customdata[0]}, "
                          "%{customdata[1]})<br>%{customdata[2]} tokens<extra></extra>"))
    fig.update_yaxes(autorange="reversed", categoryorder="array",
                     categoryarray=[f"chunk {k}" for k in range(len(plan.chunks))])
    fig.update_xaxes(title_text="token position")
    fig.update_layout(title=title or f"Mesa chunk plan ({what})", barmode="overlay",
                      height=140 + 22 * len(plan.chunks))
    return fig


# -- attention -----------------------------------------------------------------

def _check_attn(attn) -> np.ndarray:
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


def _check_window(window, width: int) -> tuple[int, int]:
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
                      max_rows: int = MAX_ROWS, row_title: str = "query position q"
                      ) -> go.Figure:
    """Attention rows ``attn [q_row, k_pos]`` as a heatmap that renders at any width.

    The key axis is block-downsampled (``reduce`` = ``"max"`` or ``"mean"``)
    to at most ``max_columns`` columns (``block`` forces a block size), the
    query axis likewise to ``max_rows``.  ``window=(k_start, k_stop)`` draws
    exact values of those keys (no downsampling up to ``max_columns`` keys).
    ``log_color`` colours by ``log10(max(p, floor))``.  ``marks``: name ->
    ``(k_start, k_stop)`` drawn as shaded spans (e.g. the passkey needle);
    ``train_length`` draws a vertical line at that key position.  Rows are
    labelled by ``query_rows`` (any labels; ``row_title`` names them).  The
    block sizes used are in ``fig.layout.meta``.
    """
    a = _check_attn(attn)
    rows = _check_rows(query_rows, a.shape[0])
    k0, k1 = (0, a.shape[1]) if window is None else _check_window(window, a.shape[1])
    a = a[:, k0:k1]
    kb = block if block is not None else _stride(a.shape[1], max_columns)
    a = downsample(a, kb, axis=1, reduce=reduce)
    qb = _stride(a.shape[0], max_rows)
    a = downsample(a, qb, axis=0, reduce=reduce)
    z = np.log10(np.maximum(a, floor)) if log_color else a
    x = np.arange(k0, k1, kb)
    y = rows[::qb]
    fig = go.Figure(go.Heatmap(
        z=z, x=x, y=[str(r) for r in y], customdata=a, name="attention",
        colorscale="Magma", reversescale=False,
        colorbar=dict(title="log10 p" if log_color else "p"),
        hovertemplate=("%{y}<br>k=%{x}" + (f" (block of {kb}, {reduce})" if kb > 1 else "")
                       + "<br>p=%{customdata:.3g}<extra></extra>")))
    _mark_spans(fig, marks or {}, k0, k1)
    if train_length is not None and k0 <= train_length < k1:
        fig.add_vline(x=train_length - 0.5, line=dict(color="cyan", dash="dash"),
                      annotation_text=f"T={train_length}", annotation_position="bottom right",
                      name="train_length")
    fig.update_yaxes(autorange="reversed", title_text=row_title, type="category")
    fig.update_xaxes(title_text="key position k", range=[k0 - 0.5, k1 - 0.5])
    fig.update_layout(title=title or _attn_title(kb, reduce, window),
                      meta=dict(key_block=kb, query_block=qb, reduce=reduce,
                                window=[k0, k1]),
                      height=max(300, min(700, 140 + 18 * len(y))))
    return fig


def _attn_title(kb: int, reduce: str, window) -> str:
    what = "attention" if window is None else f"attention, keys [{window[0]}, {window[1]})"
    return what + (f" ({reduce} over blocks of {kb} keys)" if kb > 1 else "")


def _mark_spans(fig: go.Figure, marks: dict, k0: int, k1: int) -> None:
    for k, (name, span) in enumerate(marks.items()):
        s0, s1 = _check_window(span, 10 ** 12)
        if s1 <= k0 or s0 >= k1:
            continue
        fig.add_vrect(x0=max(s0, k0) - 0.5, x1=min(s1, k1) - 0.5,
                      fillcolor=_PALETTE[(k + 2) % len(_PALETTE)], opacity=0.25,
                      line_width=1, annotation_text=str(name),
                      annotation_position="top left", name=str(name))


def _log_vline(fig: go.Figure, train_length) -> None:
    """A dashed vertical line at ``train_length`` on a log x axis (shape
    coordinates on log axes are log10 values)."""
    if train_length is None:
        return
    if train_length <= 0:
        raise ValueError(f"train_length={train_length}: allowed a positive number")
    fig.add_vline(x=math.log10(train_length), line=dict(dash="dash"),
                  annotation_text=f"T={train_length}", name="train_length")


def _distance_edges(bins, max_d: int) -> np.ndarray:
    if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
        if bins < 1:
            raise ValueError(f"bins={bins}: allowed an integer >= 1 or bin edges")
        inner = np.round(np.geomspace(1, max_d + 1, bins)).astype(int)
        return np.unique(np.concatenate([[0], inner, [max_d + 1]]))
    edges = np.asarray(bins, dtype=float).reshape(-1)
    if edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins={bins!r}: allowed an integer or increasing edges (>= 2)")
    return edges


def attention_by_distance(attn, query_rows, bins=24, mean: bool = False,
                          train_length: int | None = None, title: str | None = None,
                          names=None) -> go.Figure:
    """Attention mass against relative distance ``d = q - k`` in log-spaced bins.

    ``attn [q_row, k_pos]``; ``query_rows [q_row]`` the query positions.
    One line per query row (``names`` labels them; default ``q=<row>``), or
    their mean (``mean=True``).  ``bins``: a number of log-spaced bins or
    explicit increasing edges (``[lo, hi)``).
    """
    a = _check_attn(attn)
    rows = _check_rows(query_rows, a.shape[0])
    if rows.min() < 0 or rows.max() >= a.shape[1]:
        raise ValueError(f"query_rows must lie in [0, {a.shape[1] - 1}] (key positions), "
                         f"got [{rows.min()}, {rows.max()}]")
    edges = _distance_edges(bins, int(rows.max()))
    d = rows[:, None] - np.arange(a.shape[1])[None, :]
    which = np.searchsorted(edges, d, side="right") - 1
    ok = (d >= 0) & (which >= 0) & (which < len(edges) - 1)
    mass = np.zeros((a.shape[0], len(edges) - 1))
    for r in range(a.shape[0]):
        np.add.at(mass[r], which[r, ok[r]], a[r, ok[r]])
    x = np.maximum(edges[:-1], 0.5)
    if names is not None and len(names) != len(rows):
        raise ValueError(f"names has {len(names)} entries: allowed one per row ({len(rows)})")
    names = [f"q={q}" for q in rows] if names is None else [str(n) for n in names]
    curves = {"mean": mass.mean(axis=0)} if mean else dict(zip(names, mass))
    fig = go.Figure([go.Scatter(x=x, y=m, name=name, mode="lines+markers",
                                customdata=np.stack([edges[:-1], edges[1:]], axis=1),
                                hovertemplate="d in [%{customdata[0]}, %{customdata[1]})"
                                              "<br>mass=%{y:.3g}<extra>%{fullData.name}</extra>")
                     for name, m in curves.items()])
    _log_vline(fig, train_length)
    fig.update_xaxes(type="log", title_text="relative distance q - k (bin start)")
    fig.update_yaxes(title_text="attention mass in bin")
    fig.update_layout(title=title or "attention mass by distance", height=380)
    return fig


# -- hidden states ---------------------------------------------------------------

def _envelope(x: np.ndarray, y: np.ndarray, max_points: int):
    """Keep each block's min and max (in position order) so spikes survive."""
    if len(y) <= max_points:
        return x, y
    b = _stride(len(y), max_points // 2)
    n = len(y) // b * b
    xb, yb = x[:n].reshape(-1, b), y[:n].reshape(-1, b)
    lo, hi = np.nanargmin(yb, axis=1), np.nanargmax(yb, axis=1)
    first, second = np.minimum(lo, hi), np.maximum(lo, hi)
    r = np.arange(len(yb))
    xs = np.stack([xb[r, first], xb[r, second]], axis=1).reshape(-1)
    ys = np.stack([yb[r, first], yb[r, second]], axis=1).reshape(-1)
    return np.concatenate([xs, x[n:]]), np.concatenate([ys, y[n:]])


def smooth_values(y: np.ndarray, window) -> np.ndarray:
    """Trailing moving average: position ``p`` averages ``p - window + 1 .. p``
    (never the future), as the threshold finder smooths."""
    y = np.asarray(y, dtype=float)
    if window is None or window == 1:
        return y
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"smooth={window!r}: allowed None or an integer window >= 1")
    c = np.cumsum(y)
    out = c.copy()
    out[window:] = c[window:] - c[:-window]
    return out / np.minimum(np.arange(len(y)) + 1, window)


def hidden_state_figure(values_by_method: dict, train_length: int, threshold: float | None = None,
                        positions=None, smooth: int | None = None, title: str | None = None,
                        max_points: int = MAX_POINTS) -> go.Figure:
    """Hidden-state value against position for one (layer, dim), methods overlaid
    (the paper's Figure 2).

    ``values_by_method``: name -> ``[pos]`` array; ``positions`` (``[pos]``)
    default to ``0..len-1``.  A vertical line marks ``train_length`` and a
    horizontal one ``threshold`` (the value reached at ``train_length``).
    ``smooth``: trailing moving-average window.  Curves longer than ``max_points`` keep
    each block's min and max.
    """
    if not values_by_method:
        raise ValueError("values_by_method is empty: allowed a dict name -> [pos] array")
    fig = go.Figure()
    for name, values in values_by_method.items():
        y = np.asarray(values, dtype=float)
        if y.ndim != 1:
            raise ValueError(f"values_by_method[{name!r}] has shape {y.shape}: allowed [pos]")
        x = np.arange(len(y)) if positions is None else np.asarray(positions)
        if len(x) != len(y):
            raise ValueError(f"positions has {len(x)} entries but values_by_method[{name!r}] "
                             f"has {len(y)}: allowed equal lengths")
        x, y = _envelope(x, smooth_values(y, smooth), max_points)
        fig.add_trace(go.Scatter(x=x, y=y, name=str(name), mode="lines",
                                 line=dict(color=method_color(name), width=1.2),
                                 hovertemplate="pos=%{x}<br>value=%{y:.4g}<extra>%{fullData.name}"
                                               "</extra>"))
    fig.add_vline(x=train_length, line=dict(color="black", dash="dash"),
                  annotation_text=f"T={train_length}", name="train_length")
    if threshold is not None:
        fig.add_hline(y=float(threshold), line=dict(color="red", dash="dot"),
                      annotation_text=f"threshold {float(threshold):.3g}", name="threshold")
    fig.update_xaxes(title_text="position")
    fig.update_yaxes(title_text="hidden-state value")
    fig.update_layout(title=title or "hidden state against position", height=420)
    return fig


# -- passkey and bench sweeps ----------------------------------------------------

def _check_row_keys(rows, keys, what: str) -> list[dict]:
    rows = list(rows)
    if not rows:
        raise ValueError(f"{what} rows are empty: allowed a non-empty list of dicts")
    for k, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{what} row {k} is {type(row).__name__}: allowed dict")
        missing = [key for key in keys if key not in row]
        if missing:
            raise ValueError(f"{what} row {k} lacks {missing}: allowed rows with {list(keys)}")
    return rows


def _methods_in(rows) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


def _accuracy_grid(rows, lengths, depths) -> tuple[np.ndarray, np.ndarray]:
    hits, counts = defaultdict(float), defaultdict(int)
    for r in rows:
        hits[r["length"], r["depth"]] += bool(r["correct"])
        counts[r["length"], r["depth"]] += 1
    acc = np.full((len(depths), len(lengths)), np.nan)
    n = np.zeros_like(acc, dtype=int)
    for i, d in enumerate(depths):
        for j, L in enumerate(lengths):
            if counts[L, d]:
                acc[i, j], n[i, j] = hits[L, d] / counts[L, d], counts[L, d]
    return acc, n


def passkey_heatmap(rows, title: str | None = None, cols: int | None = None) -> go.Figure:
    """Passkey accuracy, depth x length, one subplot per method.

    ``rows``: dicts with at least ``method, length, depth, correct``.
    """
    rows = _check_row_keys(rows, ("method", "length", "depth", "correct"), "passkey")
    methods = _methods_in(rows)
    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    cols = cols or min(3, len(methods))
    nrows = math.ceil(len(methods) / cols)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=methods,
                        horizontal_spacing=0.06, vertical_spacing=0.12)
    for k, m in enumerate(methods):
        acc, n = _accuracy_grid([r for r in rows if r["method"] == m], lengths, depths)
        fig.add_trace(go.Heatmap(
            z=acc, x=[str(L) for L in lengths], y=[f"{d:g}" for d in depths], name=m,
            coloraxis="coloraxis", customdata=n, text=np.where(np.isnan(acc), "", np.vectorize(
                lambda v: f"{v:.0%}")(np.nan_to_num(acc))), texttemplate="%{text}",
            hovertemplate=m + "<br>length=%{x}<br>depth=%{y}<br>accuracy=%{z:.0%} "
                          "(n=%{customdata})<extra></extra>"), row=k // cols + 1, col=k % cols + 1)
    fig.update_xaxes(title_text="length (tokens)", type="category")
    fig.update_yaxes(title_text="depth", type="category")
    fig.update_layout(coloraxis=dict(colorscale="RdYlGn", cmin=0, cmax=1,
                                     colorbar=dict(title="accuracy")),
                      title=title or "passkey retrieval accuracy", height=280 * nrows + 80)
    return fig


def passkey_accuracy_lines(rows, train_length: int | None = None,
                           title: str | None = None) -> go.Figure:
    """Passkey accuracy against length, one line per method (all depths pooled)."""
    rows = _check_row_keys(rows, ("method", "length", "correct"), "passkey")
    fig = go.Figure()
    for m in _methods_in(rows):
        by_len = defaultdict(list)
        for r in rows:
            if r["method"] == m:
                by_len[r["length"]].append(bool(r["correct"]))
        lengths = sorted(by_len)
        fig.add_trace(go.Scatter(
            x=lengths, y=[np.mean(by_len[L]) for L in lengths], name=m,
            mode="lines+markers", line=dict(color=method_color(m)),
            customdata=[len(by_len[L]) for L in lengths],
            hovertemplate=m + "<br>length=%{x}<br>accuracy=%{y:.0%} (n=%{customdata})"
                              "<extra></extra>"))
    _log_vline(fig, train_length)
    fig.update_xaxes(title_text="length (tokens)", type="log")
    fig.update_yaxes(title_text="accuracy", range=[-0.05, 1.05], tickformat=".0%")
    fig.update_layout(title=title or "passkey accuracy against length", height=400)
    return fig


def _num(v):
    return None if v is None else float(v)


def bench_figure(rows, title: str | None = None) -> go.Figure:
    """Peak memory (bars grouped by length, one colour per method), prefill time
    and decode time per token (lines), like the paper's memory/latency figure.

    ``rows``: dicts with ``method, length, prefill_s, peak_mem_bytes,
    decode_ms_per_token`` and optionally ``oom: true`` (measurements null) with
    ``predicted_mem_bytes``; OOM rows are drawn as "OOM" markers.  Rows of
    another ``kind`` than ``"point"`` (the machine line) and ``skipped`` rows
    are left out.
    """
    rows = [r for r in rows if not isinstance(r, dict) or r.get("kind", "point") == "point"]
    rows = _check_row_keys(rows, ("method", "length"), "bench")
    rows = [r for r in rows if not r.get("skipped")]
    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        "peak memory (GiB)", "prefill time (s)", "decode time (ms/token)"),
        horizontal_spacing=0.07)
    lengths = sorted({r["length"] for r in rows})
    for m in _methods_in(rows):
        mine = sorted((r for r in rows if r["method"] == m), key=lambda r: r["length"])
        _bench_method(fig, m, mine)
    fig.update_xaxes(title_text="length (tokens)")
    fig.update_xaxes(type="category", categoryorder="array",
                     categoryarray=[str(L) for L in lengths], row=1, col=1)
    fig.update_xaxes(type="log", row=1, col=2)
    fig.update_xaxes(type="log", row=1, col=3)
    fig.update_layout(barmode="group", title=title or "memory and latency against length",
                      height=430, legend=dict(orientation="h", y=-0.25))
    return fig


def _bench_method(fig: go.Figure, m: str, rows: list[dict]) -> None:
    color = method_color(m)
    ok = [r for r in rows if not r.get("oom")]
    oom = [r for r in rows if r.get("oom")]
    gib = 2.0 ** 30
    mem = [None if r.get("peak_mem_bytes") is None else r["peak_mem_bytes"] / gib for r in ok]
    fig.add_trace(go.Bar(x=[str(r["length"]) for r in ok], y=mem, name=m, legendgroup=m,
                         marker_color=color,
                         hovertemplate=m + "<br>length=%{x}<br>%{y:.3f} GiB<extra></extra>"),
                  row=1, col=1)
    for col, key in ((2, "prefill_s"), (3, "decode_ms_per_token")):
        fig.add_trace(go.Scatter(x=[r["length"] for r in ok], y=[_num(r.get(key)) for r in ok],
                                 name=m, legendgroup=m, showlegend=False, mode="lines+markers",
                                 line=dict(color=color),
                                 hovertemplate=m + "<br>length=%{x}<br>%{y:.4g}<extra></extra>"),
                      row=1, col=col)
    if oom:
        pred = [r.get("predicted_mem_bytes") for r in oom]
        fig.add_trace(go.Scatter(
            x=[str(r["length"]) for r in oom],
            y=[0 if p is None else p / gib for p in pred], name=f"{m} OOM", legendgroup=m,
            mode="markers+text", text=["OOM"] * len(oom), textposition="top center",
            marker=dict(symbol="x", size=11, color=color), showlegend=False,
            hovertemplate=m + "<br>length=%{x}<br>out of memory<br>predicted %{y:.2f} GiB"
                              "<extra></extra>"), row=1, col=1)


# -- output ----------------------------------------------------------------------

def load_rows(rows_or_path) -> list[dict]:
    """Result rows from a list of dicts or a ``.jsonl`` / ``.json`` / ``.csv`` file
    (CSV cells parsed as None, bool, int, float or text)."""
    if not isinstance(rows_or_path, (str, Path)):
        return list(rows_or_path)
    path = Path(rows_or_path)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".json":
        return list(json.loads(path.read_text()))
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [{k: _csv_value(v) for k, v in row.items()} for row in csv.DictReader(f)]
    raise ValueError(f"{path}: allowed a .jsonl, .json or .csv file")


def _csv_value(text: str):
    if text in ("", "None", "null"):
        return None
    if text in ("True", "true", "False", "false"):
        return text in ("True", "true")
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def save_html(fig_or_figs, path, title: str = "mesa_viz report") -> Path:
    """Write one self-contained offline HTML page (plotly.js inlined once).

    ``fig_or_figs``: a Figure, or a list of Figures and HTML strings (section
    headings, paragraphs) in page order.  Returns the path written.
    """
    items = [fig_or_figs] if isinstance(fig_or_figs, go.Figure) else list(fig_or_figs)
    if not items:
        raise ValueError("fig_or_figs is empty: allowed a Figure or a list of Figures/HTML strings")
    parts, first = [], True
    for k, item in enumerate(items):
        if isinstance(item, go.Figure):
            parts.append(item.to_html(full_html=False, include_plotlyjs=first,
                                      div_id=f"fig{k}", config={"displaylogo": False}))
            first = False
        elif isinstance(item, str):
            parts.append(item)
        else:
            raise ValueError(f"fig_or_figs[{k}] is {type(item).__name__}: allowed "
                             "plotly Figure or str (HTML)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_PAGE.format(title=html.escape(title), body="\n".join(parts)),
                    encoding="utf-8")
    log.info("wrote %s (%d items)", path, len(items))
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}}
h1,h2{{font-weight:500}} .note{{color:#555}}</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""


# == theory: the paper's constructions run (mesa_viz.theory; issue 14) =============

__all__ += ["theorem_figure", "recovered_position_figure"]

#: NoPE and the plain relative PE have no method entry; the weave PEs keep theirs.
_THEORY_COLORS = {"nope": "#7f7f7f", "relative": method_color("origin")}

def _check_curves(curves: dict, t, what: str) -> np.ndarray:
    """The shared x-axis ``t [n]`` (default ``1..n``), checked against every ``[n]`` curve."""
    if not curves:
        raise ValueError(f"{what} is empty: allowed a dict name -> [t] array")
    n = len(np.asarray(next(iter(curves.values()))))
    x = np.arange(1, n + 1) if t is None else np.asarray(t)
    for name, y in curves.items():
        if np.asarray(y).shape != x.shape:
            raise ValueError(f"{what}[{name!r}] has shape {np.asarray(y).shape} but t has "
                             f"{x.shape}: allowed equal 1-d lengths")
    return x


def _theory_traces(fig: go.Figure, curves: dict, x: np.ndarray, closed: bool = False) -> None:
    for name, y in curves.items():
        y = np.asarray(y, dtype=float)
        ok = np.isfinite(y)                     # closed forms hold on a prefix of t only
        xs, ys = _envelope(x[ok], y[ok], MAX_POINTS)
        fig.add_trace(go.Scatter(
            x=xs, y=ys, name=f"{name} (closed form)" if closed else str(name), mode="lines",
            legendgroup=str(name), showlegend=not closed, opacity=0.6 if closed else 1.0,
            line=dict(color=_THEORY_COLORS.get(name, method_color(name)),
                      width=3 if closed or name == "nope" else 1.6,   # NoPE under the relative PE
                      dash="dot" if closed else None),
            hovertemplate="t=%{x}<br>%{y:.6g}<extra>%{fullData.name}</extra>"))


def theorem_figure(values_by_pe: dict, M: int, H: float, t=None, closed_forms: dict | None = None,
                   log_x: bool = True, title: str | None = None) -> go.Figure:
    """The construction's value at the threshold dimension against ``t`` (keys
    seen = position + 1), one line per PE, with ``H`` (horizontal) and ``M``
    (vertical) marked: Theorems 3.1-3.3 and Corollary 4.1 as curves.

    ``values_by_pe``: name -> ``[t]``; ``closed_forms``: name -> ``[t]`` drawn
    dotted (NaN where no closed form is derived).  The y-axis spans
    ``[H - 1, H + min(M - 1, 2.5)]`` (every value lies in ``[H - 1, H - 1 + M]``).
    (On a log axis plotly places the ``M`` line in data units but its label in
    ``log10`` units.)
    """
    x = _check_curves(values_by_pe, t, "values_by_pe")
    if not (isinstance(M, (int, np.integer)) and M >= 1):
        raise ValueError(f"M={M!r}: allowed an integer >= 1")
    if not np.isfinite(H):
        raise ValueError(f"H={H!r}: allowed a finite number")
    fig = go.Figure()
    _theory_traces(fig, values_by_pe, x)
    if closed_forms:
        _check_curves(closed_forms, x, "closed_forms")
        _theory_traces(fig, closed_forms, x, closed=True)
    fig.add_hline(y=float(H), line=dict(color="red", dash="dot"), name="H",
                  annotation_text=f"H = {float(H):.3g}")
    fig.add_vline(x=int(M), line=dict(color="black", dash="dash"), name="M")
    fig.add_annotation(x=math.log10(M) if log_x else int(M), y=1, xref="x", yref="paper",
                       text=f"M = {int(M)}", showarrow=False, xanchor="left", yanchor="top")
    fig.update_xaxes(title_text="t (keys seen = position + 1)", type="log" if log_x else "linear")
    fig.update_yaxes(title_text="o_t at the threshold dimension",
                     range=[H - 1.05, H + min(M - 1, 2.5) + 0.05])
    fig.update_layout(title=dict(text=title or "the constructions of Appendix E against t",
                                 font=dict(size=14)), height=370, margin=dict(t=45, b=45),
                      legend_title_text="dotted: closed form" if closed_forms else None)
    return fig


def recovered_position_figure(positions_by_pe: dict, t=None, log_x: bool = True,
                              title: str | None = None) -> go.Figure:
    """The position layer 1 hands to layer 2 (``H^(1)`` dim 3, Equ.33/46) against
    ``t``, one line per PE, beside the true ``t`` (dashed)."""
    x = _check_curves(positions_by_pe, t, "positions_by_pe")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=x, name="t (exact recovery)", mode="lines",
                             line=dict(color="#bbbbbb", dash="dash")))
    _theory_traces(fig, positions_by_pe, x)
    axis = "log" if log_x else "linear"
    fig.update_xaxes(title_text="t (keys seen = position + 1)", type=axis)
    fig.update_yaxes(title_text="recovered position p_t", type=axis)
    fig.update_layout(title=title or "layer 1: the position recovered from o_t (Equ.32/45)",
                      height=360, legend=dict(orientation="h", y=-0.25))
    return fig
