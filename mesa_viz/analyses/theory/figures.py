"""Figures of the paper's Appendix E constructions: the value at the threshold
dimension against ``t`` per PE, and the position layer 1 recovers.
"""

from __future__ import annotations


import numpy as np
import plotly.graph_objects as go

from ...viz.marks import ABOVE, mark
from ...viz.reduce import (MAX_POINTS, envelope)
from ...viz.style import method_color

__all__ = ["theorem_figure", "recovered_position_figure"]


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
        xs, ys = envelope(x[ok], y[ok], MAX_POINTS)
        fig.add_trace(go.Scatter(
            x=xs, y=ys, name=f"{name} (closed form)" if closed else str(name), mode="lines",
            legendgroup=str(name), showlegend=not closed, opacity=0.6 if closed else 1.0,
            line=dict(color=_THEORY_COLORS.get(name, method_color(name)),
                      width=3 if closed or name == "nope" else 1.6,   # NoPE under the relative PE
                      dash="dot" if closed else None),
            hovertemplate="t=%{x}<br>%{y:.6g}<extra>%{fullData.name}</extra>"))


def _value_range(values_by_pe: dict, closed_forms, H: float, M: int) -> list[float]:
    """``[H - 1, H + min(M - 1, 2.5)]`` (where every value of the corrected
    constructions lies) widened to every finite value drawn, so no curve is
    hidden off the plot (Equ.34 as printed runs far above it)."""
    lo, hi = H - 1.0, H + min(M - 1, 2.5)
    for y in [*values_by_pe.values(), *(closed_forms or {}).values()]:
        y = np.asarray(y, dtype=float)
        y = y[np.isfinite(y)]
        if y.size:
            lo, hi = min(lo, float(y.min())), max(hi, float(y.max()))
    pad = 0.02 * (hi - lo)
    return [lo - pad, hi + pad]


def theorem_figure(values_by_pe: dict, M: int, H: float, t=None, closed_forms: dict | None = None,
                   log_x: bool = True, title: str | None = None) -> go.Figure:
    """The construction's value at the threshold dimension against ``t`` (keys
    seen = position + 1), one line per PE, with ``H`` (horizontal) and ``M``
    (vertical) marked: Theorems 3.1-3.3 and Corollary 4.1 as curves.

    ``values_by_pe``: name -> ``[t]``; ``closed_forms``: name -> ``[t]`` drawn
    dotted (NaN where no closed form is derived).  The y-axis spans
    ``[H - 1, H + min(M - 1, 2.5)]`` (every value lies in ``[H - 1, H - 1 + M]``)
    widened to every value drawn.
    ``H`` and ``M`` are marked with :func:`mark` (``M`` beyond the inputs' ``t``
    is noted at the plot's edge).
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
    fig.update_xaxes(title_text="t (keys seen = position + 1)", type="log" if log_x else "linear")
    fig.update_yaxes(title_text="o_t at the threshold dimension",
                     range=_value_range(values_by_pe, closed_forms, float(H), int(M)))
    mark(fig, float(H), axis="y", name="H", label=f"H = {float(H):.3g}", color="red", dash="dot",
         label_at=0.99)
    mark(fig, int(M), name="M", label=f"M = {int(M)}", label_at=ABOVE)
    fig.update_layout(title=dict(text=title or "the constructions of Appendix E against t",
                                 font=dict(size=14)), height=400, margin=dict(t=80, b=45),
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
