"""Explorers of hidden states: the threshold explorer (a threshold dimension's value
against position per method) and the heat map explorer (the paper's Figures
11-16 on traces of one input).
"""

from __future__ import annotations

import dataclasses
import html

import ipywidgets as W

from ...viz.explorer import Explorer, Figures, blank, build, controls_row
from .compute import crossings, order_pairs, smooth
from .figures import hidden_heatmap, hidden_state_figure
from .hidden import format_changes, hidden_view, paper_windows

__all__ = ["threshold_explorer", "hidden_heatmap_explorer"]


def _as_pair(p) -> dict:
    """A threshold pair (``ThresholdPair`` or dict) as a dict."""
    if dataclasses.is_dataclass(p):
        return dataclasses.asdict(p)
    if isinstance(p, dict) and {"layer", "dim"} <= set(p):
        return p
    raise ValueError(f"threshold pair {p!r}: allowed a ThresholdPair or a dict with layer, dim")


def _pair_label(p: dict, order_by: str) -> str:
    extra = f", r={p['correlation']:+.3f}" if p.get("correlation") is not None else ""
    past = (p.get("past_fraction") or {}).get(order_by)
    shown = (f" · {order_by} past T: {past:.0%} (of positions ≥ T, past the threshold)"
             if past is not None else "")
    return f"layer {p['layer']}, dim {p['dim']}{extra}{shown}"


def threshold_explorer(pairs, traces=None, train_length: int | None = None,
                       window: int = 256, *, order_by: str = "origin",
                       relative: bool = False) -> Explorer:
    """Hidden-state values of threshold dimensions against position, per method.

    ``pairs``: threshold-finder results (``ThresholdPair`` or dicts with
    ``layer, dim, threshold`` and optionally ``correlation``,
    ``past_fraction``), or the ``(pairs, traces)`` of ``thresholds.find``;
    listed by :func:`mesa_viz.thresholds.order_pairs` (the largest fraction
    past the threshold under ``order_by`` first, then ``|r|``), the first
    shown.  ``traces``: method -> Trace holding those hidden layers and dims.
    Controls: ``pair`` (index into ``explorer.cache["pairs"]``, that order),
    ``smooth`` (trailing window, default ``window`` as the finder used),
    ``zoom`` (y axis to the trend, not the start transient), ``relative``
    (plot ``(value - threshold) × sign(r)``: past it is up).  Figure:
    ``hidden``; ``outputs["crossings"]`` counts, per method, the positions
    past ``train_length`` whose smoothed value is past the threshold (in the
    direction the value grows).
    """
    if traces is None and isinstance(pairs, tuple) and len(pairs) == 2:
        pairs, traces = pairs
    pairs = order_pairs([_as_pair(p) for p in pairs], order_by)
    if not pairs:
        raise ValueError("pairs is empty: allowed threshold pairs with layer, dim, threshold")
    if not traces:
        raise ValueError("traces is empty: allowed a dict method -> Trace")
    T = train_length or next(iter(traces.values())).train_length
    controls = {
        "pair": W.Dropdown(options=[(_pair_label(p, order_by), k) for k, p in enumerate(pairs)],
                           value=0, description="(layer, dim)", layout=W.Layout(width="480px"),
                           style={"description_width": "90px"}),
        "smooth": W.IntSlider(value=window, min=1, max=max(1024, window), description="smooth",
                              continuous_update=False),
        "zoom": W.Checkbox(value=True, description="zoom to trend", indent=False,
                           layout=W.Layout(width="130px")),
        "relative": W.Checkbox(value=relative, description="value − threshold", indent=False,
                               layout=W.Layout(width="150px")),
    }
    figures = Figures("hidden")
    outputs = {"crossings": W.HTML()}

    def draw():
        _draw_thresholds(pairs[controls["pair"].value], traces, T, controls, figures, outputs)

    return build([W.HBox(list(controls.values()))],
                 [outputs["crossings"], figures.views["hidden"]], controls, figures, outputs,
                 draw, {"pairs": pairs})


def _draw_thresholds(pair, traces, T, controls, figures, outputs) -> None:
    layer, dim, thr = pair["layer"], pair["dim"], pair.get("threshold")
    try:
        values = {m: tr.hidden_values(layer, dim) for m, tr in traces.items()}
    except ValueError as err:
        raise ValueError(f"(layer {layer}, dim {dim}) not captured in the traces: {err}") from err
    w = controls["smooth"].value
    r = pair.get("correlation")
    relative = controls["relative"].value and thr is not None
    controls["relative"].disabled = thr is None
    figures.show("hidden", hidden_state_figure(
        values, T, threshold=thr, smooth=w, zoom=controls["zoom"].value, relative=relative,
        correlation=r, title=f"hidden state, layer {layer}, dim {dim} (trailing mean over {w} "
                             "tokens)").update_layout(height=390))
    if thr is None:
        outputs["crossings"].value = "no threshold for this pair"
        return
    r = 1.0 if r is None else r
    parts = []
    for m, v in values.items():
        count, frac, first = crossings(smooth(v, w), T, thr, r)
        parts.append(f"{m}: {count} positions ({frac:.0%})"
                     + (f", first at {first}" if first is not None else ""))
    outputs["crossings"].value = (
        f"<b>past T={T} and {'above' if r >= 0 else 'below'} the threshold {thr:.4g}</b>: "
        + html.escape("; ".join(parts)))


def hidden_heatmap_explorer(traces: dict, layers=None, dims=None, columns: int = 800
                            ) -> Explorer:
    """The paper's Figures 11-16 on traces of one input (method -> Trace, e.g.
    from :func:`.compute.trace_methods`): hidden layers x dims over positions,
    methods side by side.

    Controls: ``methods`` and ``layers`` (which to show), ``windows``
    (``"paper"``: around ``T`` and the end, :func:`.hidden.paper_windows`, or
    ``"all"`` positions), ``width`` (the paper windows' width), ``relative``
    (each value minus origin's, else the method's own, value at ``T - 1``).
    Figure: ``heatmap``; ``outputs["change"]``: :func:`.hidden.format_changes`
    (per method and layer, the mean ``|change|`` over the shown dims across
    ``T`` and to the end, over ``width`` positions).
    """
    if not traces:
        raise ValueError("traces is empty: allowed a dict method -> Trace")
    first = next(iter(traces.values()))
    T, n = first.train_length, first.seq_len
    if any(t.seq_len != n or t.train_length != T for t in traces.values()):
        raise ValueError("traces differ in length or T: allowed traces of one input")
    layers = list(first.hidden_layers if layers is None else layers)
    dims = list(first.dims[:16] if dims is None else dims)
    controls = {
        "methods": W.SelectMultiple(options=list(traces), value=tuple(traces),
                                    description="methods", rows=min(6, len(traces))),
        "layers": W.SelectMultiple(options=[int(l) for l in first.hidden_layers],
                                   value=tuple(int(l) for l in layers), description="layers",
                                   rows=min(6, len(first.hidden_layers))),
        "windows": W.ToggleButtons(options=["paper", "all"], value="paper",
                                   description="windows"),
        "width": W.IntSlider(value=max(1, T // 4), min=1, max=max(2, n), description="width",
                             continuous_update=False),
        "relative": W.Checkbox(value=False, description="minus the value at T - 1"),
    }
    figures = Figures("heatmap")
    outputs = {"change": W.HTML()}

    def draw():
        c = {k: w.value for k, w in controls.items()}
        chosen = {m: traces[m] for m in c["methods"]}
        if not chosen or not c["layers"]:
            figures.show("heatmap", blank("choose at least one method and layer"))
            return
        ref = traces.get("origin") if c["relative"] else None
        windows = paper_windows(n, T, c["width"]) if c["windows"] == "paper" else "all"
        views = [hidden_view(tr, layers=sorted(c["layers"]), dims=dims, windows=windows,
                             columns=columns, relative_to=T - 1 if c["relative"] else None,
                             reference=ref) for tr in chosen.values()]
        width = min(c["width"], T, n - T)
        change = format_changes(chosen, width, layers=sorted(c["layers"]), dims=dims) \
            if width >= 1 else "no position past T"
        figures.show("heatmap", hidden_heatmap(views))
        outputs["change"].value = f"<pre style='font-size:85%'>{html.escape(change)}</pre>"

    return build([controls_row(controls)], [outputs["change"], figures.views["heatmap"]],
                 controls, figures, outputs, draw)
