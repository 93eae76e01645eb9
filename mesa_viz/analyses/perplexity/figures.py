"""Perplexity by position: mean NLL per position bucket, a step line per method,
one panel per text, ``T`` marked.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...viz.grid import check_row_keys, methods_in
from ...viz.marks import mark_T
from ...viz.style import method_color

__all__ = ["ppl_by_position"]


def _at_length(rows: list[dict], length, what: str) -> tuple[list[dict], int]:
    """The rows at ``length`` (default the longest there is)."""
    lengths = sorted({r["length"] for r in rows})
    length = lengths[-1] if length is None else length
    if length not in lengths:
        raise ValueError(f"length={length!r}: {what} rows have lengths {lengths}")
    return [r for r in rows if r["length"] == length], int(length)


def ppl_by_position(rows, train_length: int | None = None, length: int | None = None,
                    title: str | None = None) -> go.Figure:
    """Mean NLL (nats per token) of each position bucket against position, a
    step line per method (flat over its bucket), one subplot per text, ``T``
    marked.

    ``rows``: ``mesa_viz.perplexity`` rows (``method, length, text,
    bucket_start, bucket_end, tokens, nll``); ``length``: which run to draw
    (default the longest); ``train_length``: default the rows' own.
    """
    rows = check_row_keys(rows, ("method", "length", "text", "bucket_start", "bucket_end",
                                 "tokens", "nll"), "perplexity")
    rows, length = _at_length(rows, length, "perplexity")
    texts = list(dict.fromkeys(r["text"] for r in rows))
    cols = min(2, len(texts))
    fig = make_subplots(rows=math.ceil(len(texts) / cols), cols=cols,
                        subplot_titles=[str(t) for t in texts], horizontal_spacing=0.08)
    for k, text in enumerate(texts):
        for m in methods_in(rows):
            mine = sorted((r for r in rows if r["text"] == text and r["method"] == m),
                          key=lambda r: r["bucket_start"])
            if mine:
                fig.add_trace(_nll_steps(m, mine, show=k == 0), row=k // cols + 1,
                              col=k % cols + 1)
    fig.update_xaxes(title_text="position (tokens)")
    fig.update_yaxes(title_text="NLL (nats / token)", col=1)
    T = train_length if train_length is not None else rows[0].get("train_length")
    fig.update_layout(title=title or f"negative log-likelihood by position ({length} tokens)",
                      height=420 * math.ceil(len(texts) / cols))
    mark_T(fig, T, len(texts), cols)                 # after the title: T is in its subtitle
    return fig


def _nll_steps(method: str, rows: list[dict], show: bool) -> go.Scatter:
    """One method's buckets as a step line: flat from each bucket's start to its end."""
    x = [r["bucket_start"] for r in rows] + [rows[-1]["bucket_end"]]
    y = [r["nll"] for r in rows] + [rows[-1]["nll"]]
    info = [[r["bucket_start"], r["bucket_end"], r["tokens"], math.exp(r["nll"])] for r in rows]
    return go.Scatter(
        x=x, y=y, name=str(method), legendgroup=str(method), showlegend=show,
        mode="lines+markers", line=dict(shape="hv", color=method_color(method)),
        customdata=info + [info[-1]],
        hovertemplate=f"{method}<br>positions [%{{customdata[0]}}, %{{customdata[1]}}) "
                      "(%{customdata[2]} tokens)<br>NLL %{y:.4f}, perplexity "
                      "%{customdata[3]:.3g}<extra></extra>")
