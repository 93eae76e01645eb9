"""Figures of whole attention maps (pooled ``AttentionMap`` s): one map, or maps side
by side on one colour scale with their difference; queries past ``T``, the
diagonal at distance ``T`` and chunk boundaries marked.
"""

from __future__ import annotations


import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...viz.grid import colorbar_under, wrap_title
from ...viz.marks import (add_marker_items, axis_info, mark, marker_items)
from ...viz.style import (CHUNK_LINE, DIVERGING, LEGEND_BELOW, MARK_COLOR_ON_DARK)

__all__ = ["attention_map_figure", "attention_maps_figure"]


def _map_z(amap, log_color: bool, floor: float | None) -> tuple[np.ndarray, float]:
    v = np.asarray(amap.values, dtype=float)
    if not log_color:
        return v, 0.0
    lo = floor if floor is not None else max(1e-12, float(v[v > 0].min()) if (v > 0).any() else 1)
    return np.log10(np.maximum(v, lo)), lo


def _map_trace(amap, z: np.ndarray, coloraxis: str, name: str) -> go.Heatmap:
    qe, ke = np.asarray(amap.q_edges), np.asarray(amap.k_edges)
    return go.Heatmap(
        z=z, x=ke - 0.5, y=qe - 0.5, name=name, coloraxis=coloraxis,
        customdata=np.asarray(amap.values, dtype=float),
        hovertemplate="q≈%{y:.0f}, k≈%{x:.0f}<br>" + f"{amap.pool} p=" + "%{customdata:.3g}"
                      "<extra>%{fullData.name}</extra>")


def _mark_map(fig: go.Figure, amap, row: int | None = None, col: int | None = None) -> None:
    """``T`` (queries past it; keys at distance ``T``) and the chunk boundaries."""
    q0, q1, k0, k1 = (int(v) for v in amap.region)
    T = int(amap.train_length)
    if T < q1:
        d0, d1 = max(q0, k0 + T), min(q1 - 1, k1 - 1 + T)
        if d0 <= d1:
            fig.add_trace(go.Scatter(x=[d0 - T, d1 - T], y=[d0, d1], mode="lines",
                                     name="distance = T", showlegend=col in (None, 1),
                                     line=dict(color=MARK_COLOR_ON_DARK, dash="dot", width=1.5),
                                     hoverinfo="skip"), row=row, col=col)
        mark(fig, T - 0.5, axis="y", name="train_length", label=f"q ≥ T={T}", row=row, col=col,
             color=MARK_COLOR_ON_DARK, label_at=0.02)
    starts = [c[0] for c in (amap.chunk_plan or [])[1:]]
    if starts:
        x, y = axis_info(fig, "x", row, col), axis_info(fig, "y", row, col)
        add_marker_items(fig, [marker_items(ax, other, s - 0.5, name="chunk boundary",
                                            color=CHUNK_LINE, width=1, dash="dot")
                               for s in starts for ax, other in ((x, y.ref), (y, x.ref))])


def _map_axes(fig: go.Figure, amap, row: int | None = None, col: int | None = None) -> None:
    q0, q1, k0, k1 = (int(v) for v in amap.region)
    fig.update_xaxes(range=[k0 - 0.5, k1 - 0.5], title_text="key position k", row=row, col=col)
    fig.update_yaxes(range=[q1 - 0.5, q0 - 0.5], title_text="query position q", row=row, col=col)


def _map_title(amap) -> str:
    q0, q1, k0, k1 = (int(v) for v in amap.region)
    full = [q0, q1, k0, k1] == [0, amap.seq_len, 0, amap.seq_len]
    where = "" if full else f", q [{q0}, {q1}) × k [{k0}, {k1})"
    cells = "x".join(str(s) for s in np.shape(amap.values))
    return f"{amap.method}: layer {amap.layer}, head {amap.head}, {amap.seq_len} tokens{where} " \
           f"({amap.pool} over {cells} cells)"


def attention_map_figure(amap, log_color: bool = True, floor: float | None = None,
                         title: str | None = None) -> go.Figure:
    """One pooled attention map (an ``AttentionMap`` of ``mesa_viz.attention_map``,
    or anything with its fields) as a heatmap: query rows down, keys across,
    each cell over the positions it covers; ``log_color``: ``log10 p`` (from
    ``floor``, default the smallest positive cell).  Marked: queries past
    ``T``, the keys at distance ``T`` (dotted diagonal) and chunk boundaries."""
    z, lo = _map_z(amap, log_color, floor)
    fig = go.Figure(_map_trace(amap, z, "coloraxis", amap.method))
    _map_axes(fig, amap)
    _mark_map(fig, amap)
    fig.update_layout(coloraxis=dict(colorscale="Magma",
                                     colorbar=dict(title="log10 p" if log_color else "p")),
                      title=title or _map_title(amap), height=660, width=680,
                      legend=LEGEND_BELOW, meta=dict(floor=lo, log_color=log_color))
    return fig


def attention_maps_figure(maps, log_color: bool = True, difference: bool = True,
                          floor: float | None = None, title: str | None = None) -> go.Figure:
    """Pooled maps side by side (the same window and grid; e.g. mesa beside
    origin) on one colour scale, and, with ``difference``, the first minus the
    second (``log10`` ratio with ``log_color``)."""
    maps = list(maps)
    if not maps:
        raise ValueError("maps is empty: allowed one or more AttentionMaps")
    shapes = {(tuple(np.asarray(m.q_edges)), tuple(np.asarray(m.k_edges))) for m in maps}
    if len(shapes) > 1:
        raise ValueError("maps cover different cells: allowed maps of the same seq_len, "
                         "window and grid (zoom them alike)")
    difference = difference and len(maps) >= 2
    lo = floor if floor is not None else min(_map_z(m, log_color, None)[1] for m in maps)
    zs = [_map_z(m, log_color, lo)[0] for m in maps]
    titles = [f"{m.method}, L{m.layer}H{m.head}" for m in maps]
    titles += [f"{maps[0].method} − {maps[1].method}" + (" (log10 ratio)" if log_color else "")] \
        if difference else []
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.07)
    for c, (m, z) in enumerate(zip(maps, zs), start=1):
        fig.add_trace(_map_trace(m, z, "coloraxis", m.method), row=1, col=c)
    if difference:
        d = zs[0] - zs[1]
        fig.add_trace(_map_trace(maps[0], d, "coloraxis2", "difference"), row=1, col=len(titles))
        top = max(1e-9, float(np.abs(d).max()))
    for c in range(1, len(titles) + 1):
        _map_axes(fig, maps[0], row=1, col=c)
        _mark_map(fig, maps[min(c, len(maps)) - 1], row=1, col=c)
    for c in range(2, len(titles) + 1):               # "query position q" once, at the left
        fig.update_yaxes(title_text="", row=1, col=c)
    width, height, margin = min(920, 440 * len(titles)), 600, dict(t=110, b=150, r=30)
    plot_px = height - margin["t"] - margin["b"]
    fig.update_layout(
        coloraxis=dict(colorscale="Magma", colorbar=colorbar_under(
            fig, range(1, len(maps) + 1), "log10 p" if log_color else "p", plot_px)),
        title=wrap_title(title or _map_title(maps[0]).split(":")[0] + " vs " + ", ".join(
            m.method for m in maps[1:]) + ": " + _map_title(maps[0]).split(": ", 1)[1], width),
        height=height, width=width, margin=margin,                       # fits a notebook
        showlegend=False, title_subtitle_text="dotted diagonal: keys at distance T" if any(
            t.name == "distance = T" for t in fig.data) else None,
        meta=dict(floor=lo, log_color=log_color))
    if difference:
        fig.update_layout(coloraxis2=dict(colorscale=DIVERGING, cmin=-top, cmax=top,
                                          colorbar=colorbar_under(fig, [len(titles)],
                                                                  "difference", plot_px)))
    return fig
