"""The memory and latency figure: peak memory, prefill time and decode time per
token against length, one colour per method, out-of-memory points marked.
"""

from __future__ import annotations


import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...viz.grid import check_row_keys, length_ticks, methods_in
from ...viz.style import method_color

__all__ = ["bench_figure"]


def _num(v):
    return None if v is None else float(v)


def bench_figure(rows, title: str | None = None) -> go.Figure:
    """Peak memory (bars grouped by length, one colour per method), prefill time
    and decode time per token (lines), like the paper's memory/latency figure.

    ``rows``: dicts with ``method, length, prefill_s, peak_mem_bytes,
    decode_ms_per_token`` and optionally ``oom: true`` (measurements null) with
    ``predicted_mem_bytes``; OOM rows are drawn as labelled "OOM" markers (at
    the predicted memory, else at 0) in every panel.  Rows without a method
    (the machine line), of another ``kind`` than ``"point"`` and ``skipped``
    rows are left out.
    """
    rows = [r for r in rows if not isinstance(r, dict)
            or (r.get("kind", "point") == "point" and r.get("method") is not None)]
    rows = check_row_keys(rows, ("method", "length"), "bench")
    rows = [r for r in rows if not r.get("skipped")]
    if not rows:
        raise ValueError("every bench row is skipped: allowed at least one measured or OOM row")
    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        "peak memory (GiB)", "prefill time (s)", "decode time (ms/token)"),
        horizontal_spacing=0.08)
    lengths = sorted({r["length"] for r in rows})
    for m in methods_in(rows):
        mine = sorted((r for r in rows if r["method"] == m), key=lambda r: r["length"])
        _bench_method(fig, str(m), mine)
    fig.update_xaxes(title_text="length (tokens)")
    fig.update_xaxes(type="category", categoryorder="array",
                     categoryarray=[str(L) for L in lengths], row=1, col=1)
    for col in (2, 3):
        fig.update_xaxes(type="log", row=1, col=col, **length_ticks(lengths))
    fig.update_layout(barmode="group", title=title or "memory and latency against length",
                      height=470, margin=dict(t=90, b=130),
                      legend=dict(orientation="h", y=-0.3, yanchor="top", x=0))
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
            textfont=dict(color=color, size=13, family="sans-serif"), cliponaxis=False,
            marker=dict(symbol="x-thin", size=12, color=color, line=dict(width=2, color=color)),
            showlegend=False,
            hovertemplate=m + "<br>length=%{x}<br>out of memory<br>predicted %{y:.2f} GiB"
                              "<extra></extra>"), row=1, col=1)
