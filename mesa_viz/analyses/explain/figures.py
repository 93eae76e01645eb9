"""Figures of a drill-down (:class:`~.compute.Explanation`): the needle's attention
mass by layer, the heads that carry it, the answer step's rows, logits, entropy
and distance profiles.
"""

from __future__ import annotations


import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...viz.grid import check_row_keys, colorbar_under, wrap_title
from ...viz.marks import (mark, positive)
from ...viz.style import (DIVERGING, method_color)

from ..attention.figures import (attention_by_distance, attention_heatmap, bin_centres,
                                 check_attn, distance_edges, distance_mass)

__all__ = ["needle_mass_figure", "retrieval_heads_figure",
           "distance_profile_figure", "explanation_figures"]


def needle_mass_figure(mass, names, title: str | None = None) -> go.Figure:
    """Attention on the needle per layer and head, ``mass [method, layer, head]``,
    one heatmap per method (``names``) and the first minus the second."""
    mass = np.asarray(mass, dtype=float)
    if mass.ndim != 3 or len(names) != mass.shape[0] or mass.shape[0] < 1:
        raise ValueError(f"mass has shape {mass.shape} for names {list(names)}: allowed "
                         "[method, layer, head] with one name per method")
    diff = mass.shape[0] >= 2
    titles = [str(n) for n in names] + ([f"{names[0]} − {names[1]}"] if diff else [])
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.06)
    layers, heads = np.arange(mass.shape[1]), np.arange(mass.shape[2])
    hover = "layer %{y}, head %{x}<br>needle mass %{z:.3f}<extra>%{fullData.name}</extra>"
    for k, name in enumerate(names):
        fig.add_trace(go.Heatmap(z=mass[k], x=heads, y=layers, name=str(name),
                                 coloraxis="coloraxis", hovertemplate=hover), row=1, col=k + 1)
    if diff:
        d = mass[0] - mass[1]
        fig.add_trace(go.Heatmap(z=d, x=heads, y=layers, name="difference", coloraxis="coloraxis2",
                                 hovertemplate=hover), row=1, col=len(titles))
    top = float(np.abs(mass[0] - mass[1]).max()) if diff else 1.0
    height, margin = max(360, 200 + 14 * mass.shape[1]), dict(t=110, b=130)
    plot_px = height - margin["t"] - margin["b"]
    fig.update_layout(
        coloraxis=dict(colorscale="Viridis", cmin=0, cmax=max(1e-9, float(mass.max())),
                       colorbar=colorbar_under(fig, range(1, len(names) + 1), "needle mass",
                                               plot_px)),
        title=wrap_title(title or "attention of the answer step on the needle, per layer and "
                                  "head"),
        height=height, margin=margin)
    if diff:
        fig.update_layout(coloraxis2=dict(
            colorscale=DIVERGING, cmin=-max(top, 1e-9), cmax=max(top, 1e-9),
            colorbar=colorbar_under(fig, [len(titles)], f"difference ({titles[-1]})",
                                    plot_px)))
    fig.update_xaxes(title_text="head", dtick=1)
    fig.update_yaxes(autorange="reversed", dtick=1 if mass.shape[1] <= 16 else None)
    fig.update_yaxes(title_text="layer", col=1)
    return fig


def retrieval_heads_figure(heads: list, names, title: str | None = None) -> go.Figure:
    """What the heads that carry the needle do under each method (``names``):
    bars of their mass on the needle, on the first tokens (sinks) and at
    distance ``>= T``.  ``heads``: ``Explanation.retrieval_heads()`` dicts
    (``layer, head, needle, sinks, far``: method -> mass)."""
    heads = check_row_keys(heads, ("layer", "head", "needle", "sinks", "far"), "heads")
    labels = [f"L{h['layer']}H{h['head']}" for h in heads]
    parts = (("needle", "on the needle"), ("sinks", "on the first tokens (sinks)"),
             ("far", "at distance ≥ T"))
    fig = make_subplots(rows=len(parts), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[p[1] for p in parts])
    for r, (key, _) in enumerate(parts):
        for name in names:
            fig.add_trace(go.Bar(x=labels, y=[h[key][name] for h in heads], name=str(name),
                                 marker_color=method_color(name), legendgroup=str(name),
                                 showlegend=r == 0,
                                 hovertemplate=f"%{{x}}: %{{y:.3f}} {key}<extra>{name}</extra>"),
                          row=r + 1, col=1)
        fig.update_yaxes(title_text="mass", range=[0, 1], row=r + 1, col=1)
    fig.update_xaxes(type="category", title_text="layer, head (most needle mass first)",
                     row=len(parts), col=1)
    fig.update_layout(barmode="group", height=560, title=title or
                      f"the heads that carry the needle under {names[0]}, under each method")
    return fig


def _distance_max(a: np.ndarray, rows: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``[q_row, bin]`` largest value of ``a [q_row, k_pos]`` by distance bin (NaN if none)."""
    d = rows[:, None] - np.arange(a.shape[1])[None, :]
    which = np.searchsorted(edges, d, side="right") - 1
    ok = (d >= 0) & (which >= 0) & (which < len(edges) - 1) & np.isfinite(a)
    out = np.full((a.shape[0], len(edges) - 1), -np.inf)
    for r in range(a.shape[0]):
        np.maximum.at(out[r], which[r, ok[r]], a[r, ok[r]])
    return np.where(np.isfinite(out), out, np.nan)


def distance_profile_figure(rows: dict, query_row: int, stat: str = "max", bins=24,
                            train_length: int | None = None, y_title: str | None = None,
                            title: str | None = None, log_x: bool = True) -> go.Figure:
    """One line per name of ``rows`` (name -> ``[k_pos]`` values of the query at
    ``query_row``) against distance ``q - k`` in log-spaced bins: the bin's
    largest value (``stat="max"``, e.g. attention logits: LM-Infinite's
    logit explosion) or its sum (``"sum"``, e.g. entropy terms ``-p log p``).
    ``train_length`` is a bin edge, marked, with the bins past it shaded."""
    if stat not in ("max", "sum"):
        raise ValueError(f"stat={stat!r}: allowed 'max' or 'sum'")
    if not rows:
        raise ValueError("rows is empty: allowed a dict name -> [k_pos] values")
    a = np.stack([check_attn(v)[0] for v in rows.values()])
    q = np.full(a.shape[0], int(query_row))
    if not 0 <= query_row < a.shape[1]:
        raise ValueError(f"query_row={query_row}: allowed 0..{a.shape[1] - 1}")
    T = None if train_length is None else positive(train_length, "train_length")
    edges = distance_edges(bins, int(query_row), T)
    values = _distance_max(a, q, edges) if stat == "max" else distance_mass(
        np.nan_to_num(a, neginf=0.0), q, edges)
    x = bin_centres(edges, log_x)
    fig = go.Figure([go.Scatter(x=x, y=v, name=str(name), mode="lines+markers",
                                line_color=method_color(name),
                                customdata=np.stack([edges[:-1], edges[1:]], axis=1),
                                hovertemplate="d in [%{customdata[0]}, %{customdata[1]})<br>"
                                              "%{y:.3g}<extra>%{fullData.name}</extra>")
                     for name, v in zip(rows, values)])
    fig.update_xaxes(type="log" if log_x else "linear",
                     title_text="relative distance q - k (middle of bin)")
    fig.update_yaxes(title_text=y_title or ("largest value in bin" if stat == "max"
                                            else "sum in bin"))
    fig.update_layout(title=title or f"{stat} by distance", height=380)
    if T is not None:
        mark(fig, T, name="train_length", label=f"T={T}")
        far = edges[:-1] >= T
        if far.any():
            mark(fig, T, to=float(x[far].max()), name="distance >= T", color="#d62728",
                 fill_opacity=0.08)
    return fig


def explanation_figures(exp, top: int = 8) -> dict:
    """The drill-down of an ``Explanation`` (``mesa_viz.explain``) as figures:
    ``needle`` (mass per layer and head, both methods and their difference),
    ``heads`` (the heads that carry the needle under the method that answers,
    under each method), ``rows`` (those heads' attention rows, the needle
    shaded), ``distance`` (mass by distance), ``logits`` (largest logit by
    distance) and ``entropy`` (entropy terms by distance)."""
    names, q, T = list(exp.methods), int(exp.query_row), int(exp.train_length)
    a, _ = exp.order()
    heads = exp.retrieval_heads(top)
    tag = f"{exp.seq_len} tokens, T={T}, answer step q={q}"
    needle = {f"needle {k}" if len(exp.needle) > 1 else "needle": tuple(s)
              for k, s in enumerate(exp.needle)}
    best = heads[0]
    rows = [exp.attention[k, best["layer"], best["head"]] for k in range(len(names))]
    p = exp.attention.astype(float)
    ent = -(p * np.log(np.where(p > 0, p, 1.0)))
    return {
        "needle": needle_mass_figure(exp.needle_mass(), names, title=f"attention on the needle "
                                     f"per layer and head ({tag})"),
        "heads": retrieval_heads_figure(heads, [names[a]] + [m for m in names if m != names[a]]),
        "rows": attention_heatmap(np.stack(rows), query_rows=names, marks=needle, train_length=T,
                                  query_positions=np.full(len(names), q), row_title="method",
                                  title=f"L{best['layer']}H{best['head']} (carries the needle "
                                        f"under {names[a]}): attention of the answer step"),
        "distance": attention_by_distance(
            exp.attention.mean(axis=(1, 2)), [q] * len(names), names=names, train_length=T,
            title=f"attention mass by distance, mean over layers and heads ({tag})"),
        "logits": distance_profile_figure(
            {m: exp.logits[k].max(axis=(0, 1)) for k, m in enumerate(names)}, q, "max",
            train_length=T, y_title="largest attention logit", title="largest attention logit "
            f"by distance, over layers and heads ({tag})"),
        "entropy": distance_profile_figure(
            {m: ent[k].mean(axis=(0, 1)) for k, m in enumerate(names)}, q, "sum",
            train_length=T, y_title="entropy terms −p log p (nats)",
            title="where the attention entropy comes from, by distance (mean over layers and "
                  "heads; entropy " + ", ".join(f"{m} {e:.2f}" for m, e in
                                                zip(names, exp.entropy().mean(axis=(1, 2))))
                  + " nats)"),
    }
