"""The report's threshold sections: the finder's pairs and crossings (Figure 2), and
the hidden states around and past ``T`` (Figures 11-16).
"""

from __future__ import annotations

import dataclasses
import html
import json

from ...viz.page import NO_MODEL, Section, missing, note
from .compute import find_thresholds, measure_crossings, order_pairs
from .figures import hidden_heatmap, hidden_state_figure
from .hidden import format_changes, hidden_view

__all__ = ["SECTIONS"]


def thresholds_section(ctx) -> list:
    """The threshold finder on origin's trace and each method's crossings."""
    if ctx.model is None:
        return missing(*NO_MODEL)
    if ctx.n < ctx.T:
        return missing(f"the prompt has {ctx.n} tokens, fewer than T={ctx.T}",
                       "give a length >= T")
    window = ctx.smoothing
    traces = {m: ctx.trace(m) for m in dict.fromkeys(["origin", *ctx.methods])}
    pairs = find_thresholds(traces["origin"], min_correlation=ctx.min_correlation,
                            window=window)
    measure_crossings(pairs, traces, window)
    pairs = [dataclasses.asdict(p) for p in order_pairs(pairs)]
    (ctx.data / "thresholds.json").write_text(json.dumps(pairs, indent=1, default=float))
    if not pairs:
        return [note(_no_pairs(ctx, window))]
    items = [note(f"(layer, dim) pairs whose value follows log(position) inside T (|r| >= "
                  f"{ctx.min_correlation}), smoothed over {window} tokens; the horizontal line "
                  "is the value reached at T. The theory: origin passes it beyond T, a weave PE "
                  f"stays inside. {len(pairs)} pairs found; shown first those origin crosses "
                  "most often past T (then by |r|); the y axis spans the trend after the first "
                  "smoothing window (the start transient is clipped).")]
    for p in pairs[:4]:
        values = {m: tr.hidden_values(p["layer"], p["dim"]) for m, tr in traces.items()}
        items.append(hidden_state_figure(       # its subtitle: positions >= T past it, per method
            values, ctx.T, threshold=p["threshold"], smooth=window,
            correlation=p["correlation"],
            title=f"layer {p['layer']}, dim {p['dim']}, r={p['correlation']:+.3f}"))
    return items


def _no_pairs(ctx, window: int) -> str:
    """Why the finder found nothing, and what to change."""
    return (f"0 (layer, dim) pairs found, so no figure: no hidden dimension of origin's "
            f"trace of this {ctx.n}-token passkey prompt follows log(position) over positions "
            f"[{window}, T={ctx.T}) with |r| >= {ctx.min_correlation} (smoothed over {window} "
            "tokens). To find some: lower --min-correlation (e.g. 0.95), or smooth more "
            f"(--window, e.g. {2 * window}). --length does not change which pairs are found "
            "(they are read inside T), only how many positions past T are checked for "
            "crossings; `mesa-viz thresholds --text word` traces the paper's repeated word.")


def hidden_heatmap_section(ctx) -> list:
    """The paper's Figures 11-16 on the report's prompt: the first 16 dims of
    the finder's hidden layers around ``T`` and at the end, each method beside
    origin, as values and minus origin's value at ``T - 1``."""
    if ctx.model is None:
        return missing(*NO_MODEL)
    if ctx.n <= ctx.T:
        return missing(f"the prompt has {ctx.n} tokens, no more than T={ctx.T}",
                       "give a length > T")
    traces = {m: ctx.trace(m) for m in dict.fromkeys(["origin", *ctx.methods])}
    dims = traces["origin"].dims[:16]
    views = [hidden_view(tr, dims=dims) for tr in traces.values()]
    relative = [hidden_view(tr, dims=dims, relative_to=ctx.T - 1, reference=traces["origin"])
                for tr in traces.values()]
    change = format_changes(traces, min(ctx.smoothing, ctx.n - ctx.T), dims=dims)
    (ctx.data / "hidden_heatmap.txt").write_text(change + "\n")
    return [note(f"Hidden layers {views[0].layers}, dims {dims[0]}-{dims[-1]}, positions "
                 f"{views[0].windows} of the passkey prompt (the paper uses a word repeated: "
                 "mesa-viz hidden-map, notebook 03). The paper sees colour jumps past T under "
                 "origin and none under a weave PE."),
            hidden_heatmap(views),
            hidden_heatmap(relative, title="minus origin's value at T - 1"),
            f"<pre>{html.escape(change)}</pre>"]


SECTIONS = (Section("Hidden-state thresholds (Figure 2)", thresholds_section, "thresholds"),
            Section("Hidden states around and past T (Figures 11-16)", hidden_heatmap_section,
                    "thresholds"))
