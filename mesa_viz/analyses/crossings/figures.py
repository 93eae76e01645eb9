"""Does crossing predict failure?  Crossing measures against passkey accuracy and
perplexity past ``T``, one point per (method, length).
"""

from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...viz.grid import check_row_keys, methods_in
from ...viz.style import method_color

from ...runs.stats import wilson_interval
from .compute import X_MEASURES

__all__ = ["crossing_scatter"]


_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star", "pentagon", "hexagon")


def crossing_scatter(rows, x: str = "crossed_fraction", title: str | None = None,
                     subtitle: str | None = None, jitter: float = 0.012) -> go.Figure:
    """Does crossing predict failure?  One point per (method, length): x the
    crossing measure ``x`` (:data:`.compute.X_MEASURES`), y passkey accuracy (95 %
    Wilson bars) and, in a second panel, perplexity past ``T`` when rows have
    it.  Colour by method, symbol by length; hover gives every measure.

    ``rows``: :func:`.compute.join` rows.  ``jitter``: points are offset on x by up
    to ``±jitter`` per method so equal values stay visible (hover: exact).
    """
    if x not in X_MEASURES:
        raise ValueError(f"x={x!r}: allowed one of {list(X_MEASURES)}")
    rows = check_row_keys(rows, ("method", "length", x, "crossed", "pairs"), "crossing")
    panels = [(k, t) for k, t in (("accuracy", "passkey accuracy"), ("ppl_past_t", "ppl past T"))
              if any(r.get(k) is not None for r in rows)]
    if not panels:
        raise ValueError("no row has accuracy or ppl_past_t: allowed rows joined with passkey "
                         "or perplexity results (failure.join)")
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for _, t in panels],
                        horizontal_spacing=0.1)
    methods, lengths = methods_in(rows), sorted({int(r["length"]) for r in rows})
    for k, m in enumerate(methods):
        shift = jitter * (2 * k / max(1, len(methods) - 1) - 1) if len(methods) > 1 else 0.0
        mine = [r for r in rows if r["method"] == m]
        for col, (key, _) in enumerate(panels, start=1):
            pts = [r for r in mine if r.get(key) is not None]
            if pts:
                fig.add_trace(_crossing_points(m, pts, x, key, shift, lengths, col == 1),
                              row=1, col=col)
    label = x.replace("_", " ")
    fig.update_xaxes(title_text=f"{label} (threshold pairs past T)")
    if panels[0][0] == "accuracy":
        fig.update_yaxes(title_text="accuracy (95% Wilson interval)", range=[-0.05, 1.05],
                         tickformat=".0%", row=1, col=1)
    if panels[-1][0] == "ppl_past_t":
        fig.update_yaxes(title_text="perplexity past T", type="log", row=1, col=len(panels))
    symbols = ", ".join(f"{_SYMBOLS[i % len(_SYMBOLS)]} {L}" for i, L in enumerate(lengths))
    fig.update_layout(title=title or "does crossing predict failure?", height=460,
                      title_subtitle_text=(subtitle + "<br>" if subtitle else "")
                      + f"symbol = length: {symbols}; x offset ±{jitter:g} per method",
                      margin=dict(t=135 if subtitle else 115))
    return fig


def _crossing_points(m: str, pts: list, x: str, key: str, shift: float, lengths: list,
                     legend: bool) -> go.Scatter:
    xs = [float(r[x]) + shift for r in pts]
    ys = [float(r[key]) for r in pts]
    error = None
    if key == "accuracy":
        ci = np.array([wilson_interval(r["passkey_correct"], r["passkey_n"]) for r in pts])
        error = dict(type="data", symmetric=False, array=ci[:, 1] - ys, arrayminus=ys - ci[:, 0],
                     thickness=1, width=3)
    hover = [_crossing_hover(r, x) for r in pts]
    return go.Scatter(
        x=xs, y=ys, mode="markers", name=str(m), legendgroup=str(m), showlegend=legend,
        marker=dict(color=method_color(m), size=11, line=dict(width=1, color="#333"),
                    symbol=[_SYMBOLS[lengths.index(int(r["length"])) % len(_SYMBOLS)]
                            for r in pts]),
        error_y=error, text=hover, hovertemplate="%{text}<extra></extra>")


def _crossing_hover(r: dict, x: str) -> str:
    first = "none" if r.get("first_crossing") is None else r["first_crossing"]
    lines = [f"<b>{html.escape(str(r['method']))}</b>, {r['length']} tokens",
             f"{x.replace('_', ' ')}: {float(r[x]):.3f}",
             f"pairs crossed past T: {r['crossed']} / {r['pairs']} (first at {first})",
             f"still crossed at the end: {r.get('crossed_at_end', '?')}, turned back: "
             f"{r.get('turned_back', '?')}",
             f"sum of past fractions: {float(r.get('past_fraction_sum', math.nan)):.3f}"]
    if r.get("accuracy") is not None:
        lines.append(f"passkey: {r['accuracy']:.0%} ({r['passkey_correct']}/{r['passkey_n']})")
    if r.get("ppl_past_t") is not None:
        lines.append(f"ppl past T: {r['ppl_past_t']:.3f} ({r['ppl_tokens']} tokens)")
    return "<br>".join(lines)
