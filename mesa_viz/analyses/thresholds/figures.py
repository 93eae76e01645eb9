"""Figures of hidden states: a threshold dimension's value against position, methods
overlaid (the paper's Figure 2), and heat maps of layers x dims around and past
``T`` (Figures 11-16).
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...viz.grid import subplot_grid
from ...viz.marks import (ABOVE, mark, positive)
from ...viz.reduce import (MAX_POINTS, envelope)
from ...viz.style import (DIVERGING, method_color)

from .compute import crossings, smooth

__all__ = ["hidden_state_figure", "hidden_heatmap", "trend_range", "smooth_values"]


def smooth_values(y: np.ndarray, window) -> np.ndarray:
    """Trailing moving average (``None`` or 1: the values themselves), the
    threshold finder's own :func:`mesa_viz.thresholds.smooth`."""
    if window is None or window == 1:
        return np.asarray(y, dtype=float)
    return smooth(y, window)


def hidden_state_figure(values_by_method: dict, train_length: int, threshold: float | None = None,
                        positions=None, smooth: int | None = None, title: str | None = None,
                        max_points: int = MAX_POINTS, *, zoom: bool = True,
                        relative: bool = False, correlation: float | None = None,
                        log_x: bool = False) -> go.Figure:
    """Hidden-state value against position for one (layer, dim), methods overlaid
    (the paper's Figure 2).

    ``values_by_method``: name -> ``[pos]`` array; ``positions`` (``[pos]``)
    default to ``0..len-1``.  ``train_length`` and ``threshold`` (the value
    reached at ``train_length``) are marked.  ``smooth``: trailing
    moving-average window.  Curves longer than ``max_points`` keep each
    block's min and max.

    ``zoom`` (default): the y axis spans the trend, not the start transient:
    the 0.5..99.5 percentiles of each curve after its first ``smooth``
    positions (first position if unsmoothed), widened to the threshold, plus
    a 5 % margin; how many points it clips is said in the subtitle (the
    modebar's autoscale shows them).  ``relative``: plot
    ``(value - threshold) * sign(correlation)`` so that "past the threshold"
    is always up (> 0), with 0 marked; ``correlation`` (the pair's r with
    log position) gives the sign (+1 when None).  ``log_x``: log position axis.
    """
    curves = _hidden_curves(values_by_method, positions, smooth)
    past = None if threshold is None else _past_note(curves, train_length, float(threshold),
                                                     correlation)
    if relative:
        if threshold is None:
            raise ValueError("relative=True needs a threshold: allowed relative=False or a "
                             "threshold value")
        sign = -1.0 if correlation is not None and correlation < 0 else 1.0
        curves = {n: (x, (y - float(threshold)) * sign) for n, (x, y) in curves.items()}
    level = None if threshold is None else (0.0 if relative else float(threshold))
    fig = go.Figure()
    for name, (x, y) in curves.items():
        xe, ye = envelope(x, y, max_points)
        fig.add_trace(go.Scatter(x=xe, y=ye, name=str(name), mode="lines",
                                 line=dict(color=method_color(name), width=1.2),
                                 hovertemplate="pos=%{x}<br>value=%{y:.4g}<extra>%{fullData.name}"
                                               "</extra>"))
    fig.update_xaxes(title_text="position", type="log" if log_x else "linear")
    fig.update_yaxes(title_text=_hidden_y_title(relative, correlation))
    fig.update_layout(title=title or "hidden state against position", height=440)
    if zoom:
        _zoom_to_trend(fig, [y for _, y in curves.values()], max(1, smooth or 1), level)
    if past:
        sub = fig.layout.title.subtitle.text
        fig.update_layout(title_subtitle_text=past + (f"<br>{sub}" if sub else ""),
                          margin_t=135 if sub else 110)     # T's label under it, off the data
    mark(fig, positive(train_length, "train_length"), name="train_length",
         label=f"T={train_length}", label_at=ABOVE)
    if level is not None:
        mark(fig, level, axis="y", name="threshold", color="#d62728", dash="dot",
             label="threshold (0): above it is past it" if relative
             else f"threshold {level:.3g}", label_at=0.01)
    return fig


def _hidden_curves(values_by_method: dict, positions, smooth) -> dict:
    """name -> ``(positions [pos], smoothed values [pos])``, checked."""
    if not values_by_method:
        raise ValueError("values_by_method is empty: allowed a dict name -> [pos] array")
    curves = {}
    for name, values in values_by_method.items():
        y = np.asarray(values, dtype=float)
        if y.ndim != 1:
            raise ValueError(f"values_by_method[{name!r}] has shape {y.shape}: allowed [pos]")
        x = np.arange(len(y)) if positions is None else np.asarray(positions)
        if len(x) != len(y):
            raise ValueError(f"positions has {len(x)} entries but values_by_method[{name!r}] "
                             f"has {len(y)}: allowed equal lengths")
        curves[name] = (x, smooth_values(y, smooth))
    return curves


def _past_note(curves: dict, T: int, threshold: float, correlation) -> str:
    """What the "past T" fractions count, per method: the positions ``>= T``
    (their smoothed value) past the threshold in the direction the value
    grows, and the first of them (:func:`.compute.crossings`)."""
    r = 1.0 if correlation is None else float(correlation)
    parts = []
    for name, (x, y) in curves.items():
        n = int(np.sum(np.asarray(x) >= T))
        if n == 0:
            continue
        hit = crossings(y, int(np.searchsorted(x, T)), threshold, r)
        parts.append(f"{name} {hit.count}/{n} ({hit.fraction:.0%})"
                     + (f" from {int(x[hit.first])}" if hit.first is not None else ""))
    if not parts:
        return ""
    side = "above" if r >= 0 else "below"
    return f"positions ≥ T {side} the threshold (smoothed): " + ", ".join(parts)


def _hidden_y_title(relative: bool, correlation) -> str:
    if not relative:
        return "hidden-state value"
    if correlation is None:
        return "value − threshold"
    return "(value − threshold)·sign(r)"


def trend_range(curves, skip: int, include: float | None = None) -> tuple[float, float, int]:
    """``(lo, hi, clipped)``: a y range for ``curves`` (``[pos]`` arrays) that
    ignores their first ``skip`` values (the start transient) and isolated
    spikes: the 0.5..99.5 percentiles of the rest of each curve, widened to
    ``include``, plus a 5 % margin; ``clipped`` counts the values outside it."""
    tails = [y[skip:][np.isfinite(y[skip:])] for y in map(np.asarray, curves)]
    tails = [t for t in tails if t.size]
    if not tails:
        raise ValueError(f"no finite values after the first {skip} positions: allowed "
                         "curves longer than the smoothing window")
    lo = min(float(np.percentile(t, 0.5)) for t in tails)
    hi = max(float(np.percentile(t, 99.5)) for t in tails)
    if include is not None:
        lo, hi = min(lo, include), max(hi, include)
    pad = 0.05 * (hi - lo) or 0.05 * max(abs(hi), 1e-12)
    lo, hi = lo - pad, hi + pad
    clipped = sum(int(np.sum((y < lo) | (y > hi))) for y in map(np.asarray, curves))
    return lo, hi, clipped


def _zoom_to_trend(fig: go.Figure, curves: list, skip: int, level) -> None:
    """Set the trend range when it clips something; curves no longer than the
    smoothing window keep the full range."""
    if all(len(y) <= skip for y in curves):
        return
    lo, hi, clipped = trend_range(curves, skip, level)
    if not clipped:
        return
    total = sum(len(y) for y in curves)
    fig.update_yaxes(range=[lo, hi])
    fig.update_layout(title_subtitle_text=(
        f"y zoomed past the first {skip} positions: {clipped} of {total} values clipped "
        "(e.g. the start transient); autoscale shows all"), margin_t=110)


def _check_views(views) -> list:
    """The views (``thresholds.HiddenView``), checked to share layers, dims,
    windows, pooling and ``T``."""
    views = list(views.values()) if isinstance(views, dict) else list(views)
    if not views:
        raise ValueError("views is empty: allowed thresholds.hidden_view results")
    first = views[0]
    for v in views[1:]:
        keys = ("layers", "dims", "windows", "pool", "train_length", "relative_to")
        differ = [k for k in keys if getattr(v, k) != getattr(first, k)]
        if differ:
            raise ValueError(f"views of {first.method!r} and {v.method!r} differ in {differ}: "
                             "allowed views made alike from traces of one input")
    return views


def _color_limit(views, li: int, percentile: float) -> float:
    """The ``percentile`` of ``|value|`` of layer row ``li`` over every view
    and window (colours saturate beyond it, so one outlier dim does not wash
    the rest out)."""
    a = np.concatenate([np.abs(w[li]).ravel() for v in views for w in v.values])
    a = a[np.isfinite(a)]
    return float(np.percentile(a, percentile)) if a.size and a.max() > 0 else 1.0


def hidden_heatmap(views, title: str | None = None, percentile: float = 99.0,
                   row_px: int | None = None) -> go.Figure:
    """The paper's Figures 11-16: hidden-state values, dims x positions, one
    row of heat maps per hidden layer, one column per (method, window), methods
    side by side (origin beside a weave method).

    ``views``: ``thresholds.hidden_view`` results (list, or dict method ->
    view) made alike.  Colour: red > 0 > blue (the paper's), one scale per
    layer shared by every method and window, saturating at the
    ``percentile`` of ``|value|`` (hover gives exact values).  ``T`` is marked
    in every panel whose window holds it.  With ``relative_to`` views the
    values are minus that position's (pooled) value.
    """
    views = _check_views(views)
    v0 = views[0]
    nl, nw = len(v0.layers), len(v0.windows)
    widths = [b - a for a, b in v0.windows] * len(views)
    row_px = row_px or max(70, 7 * len(v0.dims) + 20)
    grid = subplot_grid(nl, row_px=row_px, gap_px=14)
    fig = make_subplots(rows=nl, cols=nw * len(views), shared_yaxes=True, shared_xaxes=True,
                        column_widths=[w / sum(widths) for w in widths],
                        horizontal_spacing=min(0.02, 0.3 / max(1, nw * len(views))),
                        vertical_spacing=grid["vertical_spacing"],
                        subplot_titles=[_panel_title(v.method, a, b, v0.train_length)
                                        for v in views for a, b in v.windows])
    fig.update_annotations(font_size=12)            # the panel titles, two short lines
    dims = [str(d) for d in v0.dims]
    for li, layer in enumerate(v0.layers):
        limit, axis = _color_limit(views, li, percentile), f"coloraxis{li + 1}"
        for k, v in enumerate(views):
            for w, edges in enumerate(v.edges):
                fig.add_trace(go.Heatmap(
                    z=v.values[w][li], x=edges, y=dims, coloraxis=axis, name=v.method,
                    hovertemplate=f"{html.escape(v.method)}, layer {layer}<br>dim %{{y}}<br>"
                                  f"position %{{x:.0f}} (mean of {v.pool})<br>"
                                  "value %{z:.4g}<extra></extra>"),
                              row=li + 1, col=k * nw + w + 1)
        _layer_colorbar(fig, li, layer, limit, axis)
    fig.update_yaxes(type="category")                  # dims labelled in the first column
    for li, layer in enumerate(v0.layers):
        fig.update_yaxes(title_text=f"layer {layer}<br>dim", row=li + 1, col=1)
    fig.update_xaxes(title_text=f"position ({v0.pool} a column)" if v0.pool > 1 else "position",
                     row=nl)
    _mark_train_length(fig, v0, nl, nw * len(views))
    what = _relative_note(views)
    fig.update_layout(
        title=title or f"hidden states around and past T={v0.train_length}",
        title_subtitle_text=f"black line: T={v0.train_length}<br>colour: {what}, red > 0 > "
                            f"blue, per layer saturating at the {percentile:g}th percentile "
                            "of |value|",
        height=grid["height"] + 60, margin=dict(grid["margin"], t=150, r=90))
    return fig


def _panel_title(method: str, a: int, b: int, T: int) -> str:
    """A panel's title on two short lines (six panels fit side by side in a
    notebook): the method, then its positions (``T`` is named in the
    subtitle, so no label box covers the top rows)."""
    return f"{method}<br>{a}-{b - 1}"


def _relative_note(views) -> str:
    """What the colour shows: the value, or minus whose value at which position."""
    at = views[0].relative_to
    if at is None:
        return "value"
    refs = {v.reference for v in views}
    whose = f"{refs.pop()}'s" if len(refs) == 1 else "each method's own"
    return f"value minus {whose} value at {at}"


def _layer_colorbar(fig: go.Figure, li: int, layer: int, limit: float, axis: str) -> None:
    """Layer row ``li``'s colour axis, its bar beside the row."""
    lo, hi = fig.get_subplot(li + 1, 1).yaxis.domain
    fig.update_layout({axis: dict(
        colorscale=DIVERGING, cmin=-limit, cmax=limit, cmid=0,
        colorbar=dict(y=(lo + hi) / 2, len=(hi - lo) * 0.95, thickness=10, x=1.01,
                      title=dict(text=f"L{layer}", side="right"), tickfont=dict(size=9)))})


def _mark_train_length(fig: go.Figure, view, rows: int, cols: int) -> None:
    """``T`` in every panel whose window holds it (named in the subtitle, not
    in a box over the data)."""
    T = view.train_length
    for c in range(cols):
        a, b = view.windows[c % len(view.windows)]
        if a <= T <= b:
            for r in range(rows):
                mark(fig, T, name="train_length", row=r + 1, col=c + 1, color="#000000",
                     width=2)
