"""Figures of passkey results: accuracy heat maps (depth x length, one panel per
method, needles cut by a chunk boundary marked) and accuracy against length.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...viz.grid import check_row_keys, length_ticks, methods_in, outer_axis_titles, subplot_grid
from ...viz.marks import (ABOVE, category_boundary, mark, mark_T, positive)
from ...viz.style import method_color

from ...runs.stats import wilson_interval
from .rows import needle_cuts

__all__ = ["passkey_heatmap", "passkey_accuracy_lines"]


def _accuracy_grid(rows, lengths, depths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[depth, length]`` accuracy, sample count and samples whose layout
    cut the needle (:func:`mesa_viz.passkey.needle_cuts`: the row's field, or
    worked out from its params for older rows)."""
    hits, counts, cut = defaultdict(float), defaultdict(int), defaultdict(int)
    for r in rows:
        hits[r["length"], r["depth"]] += bool(r["correct"])
        counts[r["length"], r["depth"]] += 1
        cut[r["length"], r["depth"]] += bool(needle_cuts(r))
    acc = np.full((len(depths), len(lengths)), np.nan)
    n = np.zeros_like(acc, dtype=int)
    k = np.zeros_like(n)
    for i, d in enumerate(depths):
        for j, L in enumerate(lengths):
            if counts[L, d]:
                acc[i, j], n[i, j] = hits[L, d] / counts[L, d], counts[L, d]
                k[i, j] = cut[L, d]
    return acc, n, k


def _accuracy_text(acc: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """Cell labels: the accuracy, with a pair of scissors where a needle was cut."""
    text = [["" if np.isnan(a) else f"{a:.0%}" + (" ✂" if c else "") for a, c in zip(ra, rc)]
            for ra, rc in zip(acc, cut)]
    return np.array(text, dtype=object)


def passkey_heatmap(rows, title: str | None = None, cols: int | None = None,
                    train_length: int | None = None) -> go.Figure:
    """Passkey accuracy, depth x length, one subplot per method.

    ``rows``: dicts with at least ``method, length, depth, correct``.  Cells
    show the accuracy, hover adds the sample count; a cell where rows say the
    layout cut the needle (``needle_cuts``, or worked out from ``params`` and
    ``needle_span``: a Mesa chunk boundary inside it) carries ✂ and hover
    says in how many samples.  Cells no row ran are grey and say "not run"
    (one more trace, after the methods', and a legend entry).
    ``train_length`` marks, in every subplot, the boundary between lengths
    ``<= T`` and ``> T`` (named in the subtitle).
    """
    rows = check_row_keys(rows, ("method", "length", "depth", "correct"), "passkey")
    methods = methods_in(rows)
    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    cols = cols or min(3, len(methods))
    nrows = math.ceil(len(methods) / cols)
    grid = subplot_grid(nrows, row_px=250)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=[str(m) for m in methods],
                        shared_yaxes=True, horizontal_spacing=0.04,
                        vertical_spacing=grid["vertical_spacing"])
    missing = []
    for k, m in enumerate(methods):
        acc, n, cut = _accuracy_grid([r for r in rows if r["method"] == m], lengths, depths)
        fig.add_trace(go.Heatmap(
            z=acc, x=[str(L) for L in lengths], y=[f"{d:g}" for d in depths], name=str(m),
            coloraxis="coloraxis", customdata=np.stack([n, cut], axis=-1),
            text=_accuracy_text(acc, cut), texttemplate="%{text}",
            hovertemplate=f"{m}<br>length=%{{x}}<br>depth=%{{y}}<br>accuracy=%{{z:.0%}} "
                          "(n=%{customdata[0]})<br>needle cut by a chunk boundary: "
                          "%{customdata[1]} of %{customdata[0]}<extra></extra>"),
                      row=k // cols + 1, col=k % cols + 1)
        if np.isnan(acc).any():
            missing.append((k, acc))
    for k, acc in missing:                              # after the methods' own traces
        fig.add_trace(_not_run_trace(acc, lengths, depths), row=k // cols + 1,
                      col=k % cols + 1)
    fig.update_xaxes(type="category", tickangle=0)
    fig.update_yaxes(type="category")
    outer_axis_titles(fig, len(methods), cols, "length (tokens)", "depth")
    fig.update_yaxes(ticklabelstandoff=6)              # depth labels clear of the cells
    _not_run_key(fig)
    fig.update_layout(coloraxis=dict(colorscale="RdYlGn", cmin=0, cmax=1,
                                     colorbar=dict(title="accuracy")),
                      title=title or "passkey retrieval accuracy", height=grid["height"],
                      margin=grid["margin"])
    if train_length is not None:
        mark_T(fig, train_length, len(methods), cols,
               at=category_boundary(lengths, positive(train_length, "train_length")))
    return fig


#: Cells of the grid no sample was run for: grey, with a legend entry.
NOT_RUN = "#c8c8c8"


def _not_run_trace(acc: np.ndarray, lengths, depths) -> go.Heatmap:
    """The ``[depth, length]`` cells never run, grey and saying so (not the
    background, which reads as "no data drawn")."""
    missing = np.where(np.isnan(acc), 0.0, np.nan)
    return go.Heatmap(z=missing, x=[str(L) for L in lengths], y=[f"{d:g}" for d in depths],
                      name="not run", colorscale=[[0, NOT_RUN], [1, NOT_RUN]], showscale=False,
                      text=np.where(np.isnan(acc), "not run", ""), texttemplate="%{text}",
                      textfont=dict(color="#555555", size=10),
                      hovertemplate="length=%{x}<br>depth=%{y}<br>not run<extra></extra>")


def _not_run_key(fig: go.Figure) -> None:
    """A legend entry (bottom right) for the grey "not run" cells, if any."""
    if not any(t.name == "not run" for t in fig.data):
        return
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="not run (grey)",
                             marker=dict(symbol="square", size=12, color=NOT_RUN),
                             showlegend=True, hoverinfo="skip"))
    fig.update_layout(legend=dict(orientation="h", x=1, xanchor="right", y=0,
                                  yanchor="bottom", yref="container"))


def passkey_accuracy_lines(rows, train_length: int | None = None, title: str | None = None,
                           log_x: bool = True) -> go.Figure:
    """Passkey accuracy against length, one line per method (all depths pooled),
    with 95 % Wilson intervals as error bars and the sample count in the hover.

    ``log_x``: log length axis.  ``train_length`` is marked where it lies
    inside the lengths measured (else noted at the plot's edge).
    """
    rows = check_row_keys(rows, ("method", "length", "correct"), "passkey")
    fig = go.Figure()
    for m in methods_in(rows):
        by_len = defaultdict(list)
        for r in rows:
            if r["method"] == m:
                by_len[r["length"]].append(bool(r["correct"]))
        lengths = sorted(by_len)
        hits = [sum(by_len[L]) for L in lengths]
        n = [len(by_len[L]) for L in lengths]
        acc = np.array(hits) / np.array(n)
        ci = np.array([wilson_interval(h, k) for h, k in zip(hits, n)])
        fig.add_trace(go.Scatter(
            x=lengths, y=acc, name=str(m), mode="lines+markers", line=dict(color=method_color(m)),
            error_y=dict(type="data", symmetric=False, array=ci[:, 1] - acc,
                         arrayminus=acc - ci[:, 0], thickness=1, width=3),
            customdata=np.stack([hits, n, ci[:, 0], ci[:, 1]], axis=1),
            hovertemplate=f"{m}<br>length=%{{x}}<br>accuracy=%{{y:.0%}} "
                          "(%{customdata[0]}/%{customdata[1]})<br>95% CI "
                          "[%{customdata[2]:.0%}, %{customdata[3]:.0%}]<extra></extra>"))
    fig.update_xaxes(title_text="length (tokens)", type="log" if log_x else "linear",
                     **length_ticks(r["length"] for r in rows))
    fig.update_yaxes(title_text="accuracy (95% Wilson interval)", range=[-0.05, 1.05],
                     tickformat=".0%")
    fig.update_layout(title=title or "passkey accuracy against length", height=400)
    if train_length is not None:
        mark(fig, positive(train_length, "train_length"), name="train_length",
             label=f"T={train_length}", label_at=ABOVE)
    return fig
