"""Interactive explorers for Jupyter: controls plus plotly ``FigureWidget``s.

The only module that imports ipywidgets.  Each function returns an
:class:`Explorer` holding the widget box (displayed by Jupyter when the
Explorer is the cell's value), ``controls`` (name -> widget), ``figures``
(name -> ``go.FigureWidget``) and ``outputs`` (name -> label widget), so code
and tests can drive it::

    ex = layout_explorer()
    ex.controls["method"].value = "mesa"
    ex.figures["layout"].data[0].z        # redrawn

Figures come from :mod:`mesa_viz.plots`; models are only touched through
``mesa_viz.trace`` (attention_explorer).
"""

from __future__ import annotations

import dataclasses
import html
import logging
from dataclasses import dataclass, field

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from . import plots
from .layouts import layout
from .methods import METHODS
from .results import needle_share
from .thresholds import crossings, smooth

__all__ = ["Explorer", "layout_explorer", "attention_explorer", "threshold_explorer",
           "sweep_viewer"]

log = logging.getLogger(__name__)

#: Layout parameters the layout explorer offers: name -> (min, max, step).
LAYOUT_PARAMS = (
    ("first_chunk", 1, 128, 1), ("chunk_size", 1, 128, 1), ("last_chunk", 1, 128, 1),
    ("stair_start", 0, 128, 1), ("stair_width", 1, 64, 1), ("window", 1, 256, 1),
    ("leak", 1.0, 16.0, 0.25), ("sink_tokens", 0, 64, 1),
    # issue 10: Self-Extend, Dual Chunk Attention, STRING, frequency rules
    ("group_size", 1, 64, 1), ("shifted_offset", 1, 256, 1), ("local_window", 0, 256, 1),
    ("factor", 1.0, 16.0, 0.25),
)


@dataclass
class Explorer:
    """A widget box with named ``controls``, ``figures`` and ``outputs``.

    ``redraw()`` recomputes the figures from the controls' current values
    (controls call it themselves when changed).
    """

    box: W.Box
    controls: dict
    figures: dict
    outputs: dict = field(default_factory=dict)
    redraw: object = None
    cache: dict = field(default_factory=dict)

    def _repr_mimebundle_(self, **kwargs):
        return self.box._repr_mimebundle_(**kwargs)

    @property
    def message(self) -> str:
        """Text of the status/error label (HTML tags stripped)."""
        label = self.outputs.get("message")
        return "" if label is None else _strip_tags(label.value)


def _strip_tags(text: str) -> str:
    import re
    return html.unescape(re.sub(r"<[^>]+>", "", text))


_ARRAY_ATTRS = ("x", "y", "z", "customdata", "text")


def _json_safe(fig: go.Figure) -> go.Figure:
    """NaN -> None in trace arrays: widget messages are strict JSON (NaN is
    not), and plotly draws None as a gap just as it draws NaN."""
    for tr in fig.data:
        for name in _ARRAY_ATTRS:
            value = getattr(tr, name, None) if name in tr else None
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and \
                    np.isnan(value).any():
                tr[name] = np.where(np.isnan(value), None, value).tolist()
    return fig


def _set_figure(fw: go.FigureWidget, fig: go.Figure) -> None:
    """Replace the traces and layout of ``fw`` with those of ``fig``."""
    fig = _json_safe(fig)
    with fw.batch_update():
        fw.data = ()
        fw.layout = fig.layout
        fw.add_traces(fig.data)


def _blank(text: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=html.escape(text), showarrow=False, x=0.5, y=0.5,
                       xref="paper", yref="paper")
    fig.update_layout(height=200, xaxis_visible=False, yaxis_visible=False)
    return fig


def _error_html(err: Exception) -> str:
    return f"<span style='color:#b00020'><b>invalid:</b> {html.escape(str(err))}</span>"


def _info_html(text: str) -> str:
    return f"<span style='color:#333'>{html.escape(text)}</span>"


def _observe(controls: dict, callback) -> None:
    for w in controls.values():
        w.observe(lambda change: callback(), names="value")


# -- layout explorer -------------------------------------------------------------

def _method_fields(method: str) -> set[str]:
    return {f.name for f in dataclasses.fields(METHODS[method])}


def _param_controls() -> dict:
    controls = {}
    for name, lo, hi, step in LAYOUT_PARAMS:
        cls = W.FloatSlider if isinstance(step, float) else W.IntSlider
        controls[name] = cls(value=lo, min=lo, max=hi, step=step, description=name,
                             continuous_update=False, style={"description_width": "90px"})
        controls[name + "_auto"] = W.Checkbox(value=True, description="auto", indent=False,
                                              layout=W.Layout(width="70px"))
    return controls


def _layout_params(controls: dict, method: str) -> dict:
    """Parameters for ``layout(method, ...)`` from the controls not on auto."""
    fields = _method_fields(method)
    params = {"train_length": controls["train_length"].value}
    for name, *_ in LAYOUT_PARAMS:
        if name in fields and not controls[name + "_auto"].value:
            params[name] = controls[name].value
    return params


def _sync_auto(controls: dict, resolved: dict) -> None:
    """Show the resolved default of every parameter left on auto."""
    for name, *_ in LAYOUT_PARAMS:
        value = resolved.get(name)
        if controls[name + "_auto"].value and value is not None:
            slider = controls[name]
            slider.max = max(slider.max, value)
            slider.value = value


def layout_explorer(method: str = "mesa", compare: str = "origin", seq_len: int = 40,
                    train_length: int = 16) -> Explorer:
    """Explore every method's position layout, no model needed.

    Controls: ``method`` and ``compare`` (all of ``METHODS``), ``seq_len``,
    ``train_length`` and each parameter in ``LAYOUT_PARAMS`` with an ``auto``
    checkbox (``<name>_auto``): on auto the slider is disabled and shows the
    default derived from ``train_length``; uncheck it to set the value.  Figures:
    ``layout`` (heatmap), ``difference`` (method - compare), ``chunk_plan``.
    Invalid combinations show the ValueError in ``outputs["message"]``.
    """
    names = list(METHODS)
    for arg, value in (("method", method), ("compare", compare)):
        if value not in names:
            raise ValueError(f"{arg}={value!r}: allowed {names}")
    controls = {
        "method": W.Dropdown(options=names, value=method, description="method"),
        "compare": W.Dropdown(options=names, value=compare, description="minus"),
        "seq_len": W.IntSlider(value=seq_len, min=2, max=256, description="seq_len",
                               continuous_update=False),
        "train_length": W.IntSlider(value=train_length, min=2, max=256,
                                    description="train_length", continuous_update=False),
        **_param_controls(),
    }
    figures = {k: go.FigureWidget() for k in ("layout", "difference", "chunk_plan")}
    outputs = {"message": W.HTML()}
    busy = {"on": False}

    def redraw():
        if busy["on"]:
            return
        busy["on"] = True
        try:
            _draw_layouts(controls, figures, outputs)
        finally:
            busy["on"] = False

    _wire_layout_controls(controls, redraw, busy)
    box = W.VBox([_layout_control_box(controls), outputs["message"],
                  W.Box([figures["layout"], figures["difference"]],
                        layout=W.Layout(display="flex", flex_flow="row wrap")),
                  figures["chunk_plan"]])
    ex = Explorer(box=box, controls=controls, figures=figures, outputs=outputs, redraw=redraw)
    redraw()
    return ex


def _wire_layout_controls(controls: dict, redraw, busy: dict) -> None:
    def param_moved(name):
        def handler(change):
            # a slider on auto is disabled and shows the resolved default; changes
            # to it (e.g. echoes from the browser) are ignored and resynced
            if not busy["on"]:
                redraw()
        return handler

    for name, w in controls.items():
        if name in dict((p[0], p) for p in LAYOUT_PARAMS):
            w.observe(param_moved(name), names="value")
        else:
            w.observe(lambda change: redraw(), names="value")


def _layout_control_box(controls: dict) -> W.Box:
    top = W.HBox([controls[k] for k in ("method", "compare", "seq_len", "train_length")])
    params = [W.HBox([controls[name], controls[name + "_auto"]]) for name, *_ in LAYOUT_PARAMS]
    half = (len(params) + 1) // 2
    return W.VBox([top, W.HBox([W.VBox(params[:half]), W.VBox(params[half:])])])


def _draw_layouts(controls: dict, figures: dict, outputs: dict) -> None:
    method, compare = controls["method"].value, controls["compare"].value
    n = controls["seq_len"].value
    fields = _method_fields(method)
    for name, *_ in LAYOUT_PARAMS:
        controls[name].disabled = name not in fields or controls[name + "_auto"].value
    try:
        lay = layout(method, n, **_layout_params(controls, method))
        other = layout(compare, n, **_layout_params(controls, compare))
    except ValueError as err:
        outputs["message"].value = _error_html(err)
        return
    _sync_auto(controls, lay.params)
    T = lay.params["train_length"]
    top = lay.max_relative_position
    outputs["message"].value = _info_html(
        f"{method}: largest relative position {top:g} "
        f"({'beyond' if top >= T else 'within'} train_length={T}); params {lay.params}")
    _set_figure(figures["layout"], plots.layout_heatmap(lay).update_layout(width=560))
    _set_figure(figures["difference"], plots.layout_difference(lay, other).update_layout(
        width=560, title=f"{method} - {compare}: orange = only {method} sees the key, "
                         f"purple = only {compare}", title_font_size=12))
    _set_figure(figures["chunk_plan"], plots.chunk_plan_figure(lay) if lay.chunk_plan
                else _blank(f"{method} has no chunk plan (Mesa only)"))


# -- attention explorer ----------------------------------------------------------

def _ids_1d(input_ids) -> np.ndarray:
    ids = np.asarray(input_ids.detach().cpu() if hasattr(input_ids, "detach") else input_ids)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1:
        raise ValueError(f"input_ids has shape {ids.shape}: allowed [pos] or [1, pos]")
    return ids


def attention_explorer(model, tokenizer, input_ids, methods=("origin", "mesa"), needle=None,
                       layers=None, heads=None, query_rows=None, method_params=None,
                       **trace_kwargs) -> Explorer:
    """Attention rows of ``model`` on ``input_ids`` under each method.

    Runs ``mesa_viz.trace`` once per method (cached in ``explorer.cache``).
    ``needle=(start, stop)`` marks the passkey tokens and reports their share
    of attention.  ``query_rows`` default to the last position.
    ``method_params``: method -> extra parameters; ``trace_kwargs`` (e.g.
    ``train_length``) go to every trace (hidden states are not captured
    unless ``hidden_layers`` is given).  Controls: ``method``, ``layer``,
    ``head``, ``row`` (a query position or ``"all"``), ``reduce``, ``log``,
    ``zoom`` (key range).  Figures: ``attention``, ``distance``.
    """
    ids = _ids_1d(input_ids)
    n = len(ids)
    trace_kwargs.setdefault("hidden_layers", [])        # attention only: no hidden states
    methods = list(methods)
    if not methods:
        raise ValueError("methods is empty: allowed a list of method names")
    rows = [n - 1] if query_rows is None else [int(r) for r in query_rows]
    if needle is not None and not (0 <= needle[0] < needle[1] <= n):
        raise ValueError(f"needle={needle!r}: allowed (start, stop) with 0 <= start < stop <= {n}")
    cache: dict = {}

    def get_trace(method):
        if method not in cache:
            from . import trace
            params = dict(trace_kwargs, **(method_params or {}).get(method, {}))
            log.info("tracing %s on %d tokens", method, n)
            cache[method] = trace(model, ids, method=method, layers=layers, heads=heads,
                                  query_rows=rows, tokenizer=tokenizer, **params)
        return cache[method]

    first = get_trace(methods[0])
    controls = _attention_controls(methods, first, n)
    figures = {"attention": go.FigureWidget(), "distance": go.FigureWidget()}
    outputs = {"message": W.HTML(), "needle": W.HTML()}

    def redraw():
        _draw_attention(get_trace(controls["method"].value), controls, figures, outputs, needle)

    _observe(controls, redraw)
    box = W.VBox([W.HBox([controls[k] for k in ("method", "layer", "head", "row")]),
                  W.HBox([controls[k] for k in ("reduce", "log", "zoom")]),
                  outputs["needle"], outputs["message"], figures["attention"],
                  figures["distance"]])
    ex = Explorer(box=box, controls=controls, figures=figures, outputs=outputs,
                  redraw=redraw, cache=cache)
    redraw()
    return ex


def _attention_controls(methods, tr, n: int) -> dict:
    return {
        "method": W.Dropdown(options=methods, value=methods[0], description="method"),
        "layer": W.Dropdown(options=list(tr.layers), value=tr.layers[0], description="layer"),
        "head": W.Dropdown(options=list(tr.heads), value=tr.heads[0], description="head"),
        "row": W.Dropdown(options=[*tr.query_rows, "all"], value=tr.query_rows[-1],
                          description="query row"),
        "reduce": W.ToggleButtons(options=["max", "mean"], value="max",
                                  description="downsample"),
        "log": W.Checkbox(value=True, description="log colour"),
        "zoom": W.IntRangeSlider(value=(0, n), min=0, max=n, description="keys",
                                 continuous_update=False, layout=W.Layout(width="60%")),
    }


def _draw_attention(tr, controls: dict, figures: dict, outputs: dict, needle) -> None:
    c = {k: w.value for k, w in controls.items()}
    try:
        li, hi = tr.layers.index(c["layer"]), tr.heads.index(c["head"])
    except ValueError as err:
        outputs["message"].value = _error_html(err)
        return
    rows = list(tr.query_rows) if c["row"] == "all" else [c["row"]]
    attn = tr.attention[li, hi][[tr.query_rows.index(r) for r in rows]]   # [q_row, k_pos]
    k0, k1 = c["zoom"]
    window = None if (k0, k1) == (0, tr.seq_len) or k1 <= k0 else (k0, k1)
    marks = {"needle": tuple(needle)} if needle is not None else None
    title = f"{tr.method}: layer {c['layer']}, head {c['head']} (T={tr.train_length})"
    _set_figure(figures["attention"], plots.attention_heatmap(
        attn, rows, reduce=c["reduce"], log_color=c["log"], window=window, marks=marks,
        train_length=tr.train_length, title=title))
    _set_figure(figures["distance"], plots.attention_by_distance(
        attn, rows, train_length=tr.train_length, title=f"{title}: mass by distance"))
    outputs["message"].value = _info_html(f"{tr.seq_len} tokens, method params {tr.params}")
    if needle is not None:
        shares = ", ".join(f"q={r}: {needle_share(a, needle):.2%}" for r, a in zip(rows, attn))
        outputs["needle"].value = (f"<b>needle share</b> (tokens [{needle[0]}, {needle[1]})): "
                                   f"{html.escape(shares)}")


# -- threshold explorer ----------------------------------------------------------

def _as_pair(p) -> dict:
    """A threshold pair (``ThresholdPair`` or dict) as a dict."""
    if dataclasses.is_dataclass(p):
        return dataclasses.asdict(p)
    if isinstance(p, dict) and {"layer", "dim"} <= set(p):
        return p
    raise ValueError(f"threshold pair {p!r}: allowed a ThresholdPair or a dict with layer, dim")


def _pair_label(p: dict) -> str:
    extra = f", r={p['correlation']:+.3f}" if p.get("correlation") is not None else ""
    return f"layer {p['layer']}, dim {p['dim']}{extra}"


def threshold_explorer(pairs, traces=None, train_length: int | None = None,
                       window: int = 256) -> Explorer:
    """Hidden-state values of threshold dimensions against position, per method.

    ``pairs``: threshold-finder results (``ThresholdPair`` or dicts with
    ``layer, dim, threshold`` and optionally ``correlation``), or the
    ``(pairs, traces)`` of ``thresholds.find``.  ``traces``:
    method -> Trace holding those hidden layers and dims.  Controls: ``pair``
    (index into pairs), ``smooth`` (trailing window, default ``window`` as the
    finder used).  Figure: ``hidden``; ``outputs["crossings"]`` counts, per
    method, the positions past ``train_length`` whose smoothed value is past
    the threshold (in the direction the value grows).
    """
    if traces is None and isinstance(pairs, tuple) and len(pairs) == 2:
        pairs, traces = pairs
    pairs = [_as_pair(p) for p in pairs]
    if not pairs:
        raise ValueError("pairs is empty: allowed threshold pairs with layer, dim, threshold")
    if not traces:
        raise ValueError("traces is empty: allowed a dict method -> Trace")
    T = train_length or next(iter(traces.values())).train_length
    controls = {
        "pair": W.Dropdown(options=[(_pair_label(p), k) for k, p in enumerate(pairs)], value=0,
                           description="(layer, dim)", layout=W.Layout(width="420px"),
                           style={"description_width": "90px"}),
        "smooth": W.IntSlider(value=window, min=1, max=max(1024, window), description="smooth",
                              continuous_update=False),
    }
    figures = {"hidden": go.FigureWidget()}
    outputs = {"crossings": W.HTML(), "message": W.HTML()}

    def redraw():
        _draw_thresholds(pairs[controls["pair"].value], traces, T, controls, figures, outputs)

    _observe(controls, redraw)
    box = W.VBox([W.HBox(list(controls.values())), outputs["crossings"], outputs["message"],
                  figures["hidden"]])
    ex = Explorer(box=box, controls=controls, figures=figures, outputs=outputs, redraw=redraw)
    redraw()
    return ex


def _draw_thresholds(pair, traces, T, controls, figures, outputs) -> None:
    layer, dim, thr = pair["layer"], pair["dim"], pair.get("threshold")
    try:
        values = {m: tr.hidden_values(layer, dim) for m, tr in traces.items()}
    except ValueError as err:
        outputs["message"].value = _error_html(ValueError(
            f"(layer {layer}, dim {dim}) not captured in the traces: {err}"))
        return
    w = controls["smooth"].value
    outputs["message"].value = ""
    _set_figure(figures["hidden"], plots.hidden_state_figure(
        values, T, threshold=thr, smooth=w,
        title=f"hidden state, layer {layer}, dim {dim} (trailing mean over {w} tokens)"))
    if thr is None:
        outputs["crossings"].value = "no threshold for this pair"
        return
    r = 1.0 if pair.get("correlation") is None else pair["correlation"]
    parts = []
    for m, v in values.items():
        count, frac, first = crossings(smooth(v, w), T, thr, r)
        parts.append(f"{m}: {count} positions ({frac:.0%})"
                     + (f", first at {first}" if first is not None else ""))
    outputs["crossings"].value = (
        f"<b>past T={T} and {'above' if r >= 0 else 'below'} the threshold {thr:.4g}</b>: "
        + html.escape("; ".join(parts)))


# -- sweep viewer ------------------------------------------------------------------

def sweep_viewer(rows, kind: str = "passkey", train_length: int | None = None) -> Explorer:
    """Redraw saved passkey or bench results (rows or a results file).

    Controls: ``methods`` (which to show) and, for passkey, ``view``
    (``"heatmap"`` or ``"lines"``).  Figure: ``main``.
    """
    if kind not in ("passkey", "bench"):
        raise ValueError(f"kind={kind!r}: allowed 'passkey' or 'bench'")
    rows = plots.load_rows(rows)
    if not rows:
        raise ValueError("rows are empty: allowed a non-empty list of result rows or file")
    methods = list(dict.fromkeys(r.get("method") for r in rows))
    controls = {"methods": W.SelectMultiple(options=methods, value=tuple(methods),
                                            description="methods", rows=min(8, len(methods)))}
    if kind == "passkey":
        controls["view"] = W.ToggleButtons(options=["heatmap", "lines"], value="heatmap",
                                           description="view")
    figures = {"main": go.FigureWidget()}
    outputs = {"message": W.HTML()}

    def redraw():
        chosen = [r for r in rows if r.get("method") in controls["methods"].value]
        if not chosen:
            _set_figure(figures["main"], _blank("no method selected"))
            return
        if kind == "bench":
            fig = plots.bench_figure(chosen)
        elif controls["view"].value == "heatmap":
            fig = plots.passkey_heatmap(chosen)
        else:
            fig = plots.passkey_accuracy_lines(chosen, train_length=train_length)
        _set_figure(figures["main"], fig)

    _observe(controls, redraw)
    box = W.VBox([W.HBox(list(controls.values())), outputs["message"], figures["main"]])
    ex = Explorer(box=box, controls=controls, figures=figures, outputs=outputs, redraw=redraw)
    redraw()
    return ex


# == theory: theorem explorer (mesa_viz.theory; issue 14) ============================

__all__ += ["theorem_explorer"]

#: Theorem explorer sliders: name -> (min, max, step); ``length``'s max is an argument.
THEOREM_PARAMS = (("M", 2, 256, 1), ("H", -2.0, 2.0, 0.05), ("N", 1, 255, 1), ("E", 1, 64, 1))


def _theorem_controls(values: dict, max_length: int) -> dict:
    controls = {}
    for name, lo, hi, step in THEOREM_PARAMS + (("length", 2, max_length, 1),):
        if not lo <= values[name] <= hi:
            raise ValueError(f"{name}={values[name]!r}: allowed [{lo}, {hi}]")
        cls = W.FloatSlider if isinstance(step, float) else W.IntSlider
        controls[name] = cls(value=values[name], min=lo, max=hi, step=step, description=name,
                             continuous_update=False, layout=W.Layout(width="280px"),
                             style={"description_width": "50px"})
    small = dict(layout=W.Layout(width="190px"), style={"description_width": "60px"})
    controls["layer2"] = W.Dropdown(options=["corrected", "paper"], value="corrected",
                                    description="layer 2", **small)
    controls["recovery"] = W.Dropdown(options=["round", "exact"], value="round",
                                      description="position", **small)
    for name, text in (("log_x", "log t"), ("closed_form", "closed forms")):
        controls[name] = W.Checkbox(value=True, description=text, indent=False,
                                    layout=W.Layout(width="120px"))
    return controls


def _theorem_kwargs(pe: str, v: dict) -> dict:
    """``theory.run`` arguments for ``pe`` from the control values ``v``."""
    kw = dict(M=v["M"], H=float(v["H"]), length=v["length"])
    if pe != "nope":
        kw.update(layer2=v["layer2"], recovery=v["recovery"], N=None, E=None)
    if pe in ("rerope", "stair"):
        kw["N"] = v["N"]
    if pe == "stair":
        kw["E"] = v["E"]
    return kw


_VERDICT = {True: "holds", False: "fails", None: "untested"}


def _statement_html(st) -> str:
    color = {True: "#1a7f37", False: "#b00020", None: "#666"}[st.holds]
    return f"<span style='color:{color};font-size:90%'>{html.escape(st.text)}</span>"


def theorem_explorer(M: int = 16, H: float = 0.5, N: int = 3, E: int = 4, length: int = 1024,
                     max_length: int = 8192) -> Explorer:
    """The constructions of Appendix E run live (:mod:`mesa_viz.theory`): NoPE
    (Theorem 3.1), the relative PE (3.2), the ReRoPE clamp (3.3) and Stair PE
    (Corollary 4.1).

    Controls: sliders ``M, H, N, E, length``; ``layer2`` (``"corrected"`` or
    ``"paper"``: Equ.34 as printed); ``recovery`` (``"round"`` or
    ``"exact"``: how the layer-1 MLP returns the position); ``log_x`` and
    ``closed_form`` (dotted closed forms where the proofs derive one).
    Figures: ``value`` (``o_t`` against ``t`` with ``H`` and ``M``) and
    ``position`` (the recovered position). ``outputs["statements"]`` has one
    line per PE saying whether its statement holds. Invalid parameters (e.g.
    ``N >= M``) show the ValueError in ``outputs["message"]`` and keep the
    figures. ``cache`` keeps runs by parameters.
    """
    from . import theory

    controls = _theorem_controls(dict(M=M, H=H, N=N, E=E, length=length), max_length)
    figures = {"value": go.FigureWidget(), "position": go.FigureWidget()}
    outputs = {"statements": W.HTML(), "message": W.HTML()}
    cache: dict = {}

    def run(pe: str, v: dict):
        kw = _theorem_kwargs(pe, v)
        key = (pe, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = theory.run(pe, **kw)
        return cache[key]

    def redraw():
        v = {k: c.value for k, c in controls.items()}
        try:
            runs = {pe: run(pe, v) for pe in theory.PES}
        except ValueError as err:
            outputs["message"].value = _error_html(err)
            return
        outputs["message"].value = ""
        _draw_theorems(theory, runs, v, figures)
        outputs["statements"].value = "<div style='line-height:1.35'>" + "<br>".join(
            _statement_html(r.statement()) for r in runs.values()) + "</div>"

    _observe(controls, redraw)
    box = W.VBox([W.HBox(list(controls.values()), layout=W.Layout(flex_flow="row wrap")),
                  outputs["message"], figures["value"], outputs["statements"], figures["position"]])
    ex = Explorer(box=box, controls=controls, figures=figures, outputs=outputs, redraw=redraw,
                  cache=cache)
    redraw()
    return ex


def _draw_theorems(theory, runs: dict, v: dict, figures: dict) -> None:
    t = runs["nope"].t
    closed = None
    if v["closed_form"]:
        closed = {pe: theory.closed_form(pe, v["M"], float(v["H"]), v["length"], N=v["N"],
                                         layer2=v["layer2"], recovery=v["recovery"])
                  for pe in runs}
    note = " (Equ.34 as printed)" if v["layer2"] == "paper" else ""
    verdicts = " · ".join(f"{pe} {_VERDICT[r.statement().holds]}" for pe, r in runs.items())
    _set_figure(figures["value"], plots.theorem_figure(
        {pe: r.value for pe, r in runs.items()}, v["M"], float(v["H"]), t, closed,
        log_x=v["log_x"], title=f"layer 2 {v['layer2']}{note}: {verdicts}"))
    _set_figure(figures["position"], plots.recovered_position_figure(
        {pe: r.position for pe, r in runs.items() if r.position is not None}, t,
        log_x=v["log_x"]))
