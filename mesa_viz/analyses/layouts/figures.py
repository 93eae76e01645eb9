"""Figures of position layouts: a layout's ``[q, k]`` heatmap, layouts side by side,
the paper's Figure 1, the difference of two layouts, Mesa's chunk plan.
"""

from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...viz.marks import (ABOVE, add_marker_items, axis_info, marker_items)
from ...viz.reduce import (MAX_LAYOUT_SIDE, stride)
from ...viz.style import (CHUNK_COLORS, CHUNK_LINE)

from ...methods import ChunkPlan
from ...methods.layouts import Layout, layout

__all__ = ["layout_heatmap", "layouts_side_by_side", "layout_difference",
           "chunk_plan_figure", "FIGURE_1", "figure1_layouts", "figure1"]


def _check_layout(obj, name="layout") -> Layout:
    if not isinstance(obj, Layout):
        raise ValueError(f"{name} must be a mesa_viz.Layout, got {type(obj).__name__}")
    return obj


def _masked_z(lay: Layout) -> np.ndarray:
    """``[q, k]`` float relative positions, NaN where masked."""
    return np.where(lay.mask, lay.relative_positions, np.nan).astype(float)


def _layout_trace(lay: Layout, coloraxis: str | None = None) -> go.Heatmap:
    """Heatmap trace of ``lay.relative_positions [q, k]``, stride-sampled if large."""
    s = stride(lay.seq_len, MAX_LAYOUT_SIDE)
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


def _annotate_chunks(fig: go.Figure, plan: ChunkPlan, max_labels: int = 8,
                     row: int | None = None, col: int | None = None) -> None:
    """Dashed lines at each chunk start (keys and queries) and a label per
    chunk over its keys, above the plot (off the cells: ``first`` would cover
    cell (0, 0)); past
    ``max_labels`` chunks only the first, the central middle chunk
    (``middle ×n``) and the last are labelled.  ``row, col``: the subplot."""
    kinds = _chunk_kinds(plan)
    n_mid = kinds.count("middle")
    x, y = axis_info(fig, "x", row, col), axis_info(fig, "y", row, col)
    items = []
    for k, ((start, stop), kind) in enumerate(zip(plan.chunks, kinds)):
        if start > 0:
            items += [marker_items(x, y.ref, start - 0.5, name=f"chunk boundary {start}",
                                   color=CHUNK_LINE),
                      marker_items(y, x.ref, start - 0.5, name=f"chunk boundary {start}",
                                   color=CHUNK_LINE)]
        if len(kinds) <= max_labels or kind != "middle" or k == len(kinds) // 2:
            text = kind if len(kinds) <= max_labels or kind != "middle" else f"middle ×{n_mid}"
            items.append(marker_items(x, y.ref, start - 0.5, to=stop - 0.5, label=text,
                                      name=f"chunk {kind} {start}", fill_opacity=0.0,
                                      color=dict(CHUNK_COLORS)[kind], label_at=ABOVE))
    add_marker_items(fig, items)


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
        fig.add_trace(_layout_trace(lay, coloraxis="coloraxis"),
                      row=k // cols + 1, col=k % cols + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(coloraxis=dict(colorscale="Viridis", cmin=0, cmax=vmax,
                                     colorbar=dict(title="relative<br>position")),
                      height=300 * rows + 80, title=title or "position layouts")
    return fig


#: The paper's Figure 1: Mesa on 13 tokens (first chunk 2, middle chunks of 3,
#: last chunk 2, Stair PE from 2 in steps of 2) and Stair PE with ``N = 4, E = 2``
#: on 10 tokens, both with ``T = 8``: ``(method, seq_len, parameters)``.
FIGURE_1 = (
    ("mesa", 13, (("train_length", 8), ("first_chunk", 2), ("chunk_size", 3),
                  ("last_chunk", 2), ("stair_start", 2), ("stair_width", 2))),
    ("stair", 10, (("train_length", 8), ("stair_start", 4), ("stair_width", 2))),
)


def figure1_layouts() -> list[Layout]:
    """The two layouts of the paper's Figure 1 (:data:`FIGURE_1`)."""
    return [layout(method, n, **dict(params)) for method, n, params in FIGURE_1]


def figure1(layouts=None, title: str | None = None) -> go.Figure:
    """The paper's Figure 1: layouts side by side (default
    :func:`figure1_layouts`: Mesa left, Stair PE right) with square cells, each
    cell's relative position written in it and Mesa's chunk boundaries."""
    layouts = figure1_layouts() if layouts is None else list(layouts)
    fig = layouts_side_by_side(layouts, cols=len(layouts), title=title or (
        "Figure 1: Mesa (chunks: first, middle, last with Stair PE) and Stair PE "
        "(P(t) = t below N, then one position per E tokens)"))
    fig.update_annotations(yshift=22)          # subplot titles over the chunk labels
    for k, lay in enumerate(layouts):
        sub = dict(row=1, col=k + 1)
        if lay.chunk_plan is not None and len(lay.chunk_plan.chunks) > 1:
            _annotate_chunks(fig, lay.chunk_plan, **sub)
        fig.update_yaxes(scaleanchor=axis_info(fig, "x", **sub).ref, constrain="domain",
                         title_text="query q" if k == 0 else None, **sub)
        fig.update_xaxes(constrain="domain", title_text="key k", **sub)
    fig.update_traces(texttemplate="%{z:.1~f}", textfont_size=11)
    fig.update_layout(height=420, title_font_size=13, margin=dict(t=100, b=50))
    return fig


def layout_difference(a: Layout, b: Layout, title: str | None = None) -> go.Figure:
    """Heatmap of ``a - b`` (relative positions) where both see the key, and a
    second trace marking where the masks differ (seen by only one of them)."""
    a, b = _check_layout(a, "a"), _check_layout(b, "b")
    if a.seq_len != b.seq_len:
        raise ValueError(f"seq_len differs: a has {a.seq_len}, b has {b.seq_len}; "
                         "allowed: layouts of the same length")
    s = stride(a.seq_len, MAX_LAYOUT_SIDE)
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
    for kind, color in CHUNK_COLORS:
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
