"""Task scores against length (RULER through lm-eval): one line per method, one
panel per task and one for the mean, samples and intervals in the hover.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...viz.grid import check_row_keys, length_ticks, methods_in, outer_axis_titles, subplot_grid
from ...viz.marks import mark_T
from ...viz.style import method_color

from ...runs.stats import wilson_interval
from .rows import needle_cuts

__all__ = ["task_scores"]


def task_scores(rows, train_length: int | None = None, title: str | None = None) -> go.Figure:
    """Mean task score against length, one line per method, one subplot per
    task (and one for the mean over tasks), ``T`` marked; the hover gives the
    sample count and, for 0/1 scores, the 95 % Wilson interval.

    ``rows``: one per sample, with ``method, task, length, score`` (0..1).
    """
    rows = check_row_keys(rows, ("method", "task", "length", "score"), "task")
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    panels = tasks + (["mean over tasks"] if len(tasks) > 1 else [])
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    grid = subplot_grid(nrows, row_px=260)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=panels, horizontal_spacing=0.06,
                        vertical_spacing=grid["vertical_spacing"])
    methods = methods_in(rows)
    for k, panel in enumerate(panels):
        for i, m in enumerate(methods):
            mine = [r for r in rows if r["method"] == m and (r["task"] == panel or k == len(tasks))]
            if mine:
                fig.add_trace(_score_line(m, mine, tasks, show=k == 0,
                                          width=_under_width(i, len(methods))),
                              row=k // cols + 1, col=k % cols + 1)
    lengths = sorted({r["length"] for r in rows})
    fig.update_xaxes(type="log", **length_ticks(lengths))
    fig.update_yaxes(range=[-0.05, 1.05], tickformat=".0%")
    outer_axis_titles(fig, len(panels), cols, "length (tokens)", "score")
    cut = any(needle_cuts(r) for r in rows)
    fig.update_layout(title=title or "task score against length" + (
        " (✂: the layout cut a needle of some sample there)" if cut else ""),
        height=grid["height"], margin=grid["margin"])
    mark_T(fig, train_length, len(panels), cols)     # after the title: T is in its subtitle
    return fig


def _under_width(i: int, n: int) -> float:
    """Line width of the ``i``-th of ``n`` methods drawn on one panel: the
    first widest, so methods with the same scores show as nested stripes
    instead of the last one drawn hiding the others (2 px for the last, at
    most 10 for the first)."""
    return 2.0 + (n - 1 - i) * min(2.0, 8.0 / max(1, n - 1))


def _score_line(method: str, rows: list[dict], tasks: list, show: bool,
                width: float = 2.0) -> go.Scatter:
    """Mean score per length (over the rows given, each task weighted
    equally), drawn ``width`` wide; ✂ on a point where the layout cut a
    needle of some sample (its :func:`~.rows.needle_cuts`), the
    hover says in how many."""
    by = defaultdict(lambda: defaultdict(list))
    cut = defaultdict(list)
    for r in rows:
        by[r["length"]][r["task"]].append(float(r["score"]))
        cuts_here = needle_cuts(r)
        cut[r["length"]].append(None if cuts_here is None else bool(cuts_here))
    lengths = sorted(by)
    mean = [float(np.mean([np.mean(v) for v in by[L].values()])) for L in lengths]
    counts = [sum(len(v) for v in by[L].values()) for L in lengths]
    ci = [_binary_interval([s for v in by[L].values() for s in v]) for L in lengths]
    cuts = [_cut_note(cut[L]) for L in lengths]
    cutting = [any(c is True for c in cut[L]) for L in lengths]
    return go.Scatter(
        x=lengths, y=mean, name=str(method), legendgroup=str(method), showlegend=show,
        mode="lines+markers+text", line=dict(color=method_color(method), width=width),
        cliponaxis=False, marker=dict(symbol=["x" if c else "circle" for c in cutting],
                                      size=[width + 9 if c else width + 4 for c in cutting]),
        text=["✂" if c else "" for c in cutting], textposition="top left",
        textfont=dict(color=method_color(method), size=16),
        customdata=[[n, c, k] for n, c, k in zip(counts, ci, cuts)],
        hovertemplate=f"{method}<br>length=%{{x}}<br>score %{{y:.0%}} over %{{customdata[0]}} "
                      "samples%{customdata[1]}%{customdata[2]}<extra></extra>")


def _cut_note(cuts: list) -> str:
    """``<br>needle cut by a chunk boundary: k of n`` over the samples whose
    rows say (empty when none of them has needles)."""
    known = [c for c in cuts if c is not None]
    return f"<br>needle cut by a chunk boundary: {sum(known)} of {len(known)}" if known else ""


def _binary_interval(scores: list[float]) -> str:
    """`` (95% CI [a, b])`` when every score is 0 or 1, else empty."""
    if not scores or any(s not in (0.0, 1.0) for s in scores):
        return ""
    lo, hi = wilson_interval(int(sum(scores)), len(scores))
    return f" (95% CI [{lo:.0%}, {hi:.0%}])"
