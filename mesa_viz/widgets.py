"""Interactive explorers for Jupyter: controls plus plotly figures.

The only module that imports ipywidgets.  Each function returns an
:class:`Explorer` holding the widget box (displayed by Jupyter when the
Explorer is the cell's value), ``controls`` (name -> widget), ``figures``
(name -> ``go.Figure``, the figure drawn, updated in place) and ``outputs``
(name -> label widget), so code and tests can drive it::

    ex = layout_explorer()
    ex.controls["method"].value = "rerope"
    ex.figures["layout"].data[0].z        # redrawn

Each figure is shown in an ``Output`` widget (``Explorer.views``) as a static
plotly figure, drawn afresh on every change.  (A ``FigureWidget`` syncs
changes instead: assigning its layout reaches the browser as one
``Plotly.relayout`` of the new keys, so shapes, annotations, titles and
sizes the new figure lacks stayed drawn from the old one; its browser view
could also lose updates sent while it was being created, and drew a subtitle
above its title.)

Every explorer has ``outputs["status"]`` (``Explorer.status``): while a
callback computes something slow (a trace of the model, a theory run) it says
so with a progress bar and the figures are greyed with a title saying what
is being computed; and ``outputs["message"]`` (``Explorer.message``): an
error raised inside a callback is shown there (``invalid:`` for a
``ValueError``, else its type and a folded traceback), not only in
JupyterLab's log console.

Figures come from :mod:`mesa_viz.plots`; models are only touched through
``mesa_viz.trace`` (attention_explorer).
"""

from __future__ import annotations

import dataclasses
import html
import logging
import json
import re
import textwrap
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from . import plots
from .layouts import layout
from .methods import METHODS
from .results import needle_share
from .thresholds import crossings, order_pairs, smooth

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
#: How the attention explorer reduces over heads, besides showing one head.
HEAD_REDUCTIONS = (("max over heads", "max"), ("mean over heads", "mean"))


@dataclass
class Explorer:
    """A widget box with named ``controls``, ``figures`` (``go.Figure``,
    updated in place), the ``views`` showing them and ``outputs``.

    ``redraw()`` recomputes the figures from the controls' current values
    (controls call it themselves when changed); an error it raises is shown in
    :attr:`message`, not raised.
    """

    box: W.Box
    controls: dict
    figures: dict
    outputs: dict = field(default_factory=dict)
    redraw: object = None
    cache: dict = field(default_factory=dict)
    views: dict = field(default_factory=dict)

    def _repr_mimebundle_(self, **kwargs):
        return self.box._repr_mimebundle_(**kwargs)

    @property
    def message(self) -> str:
        """Text of the message/error label (HTML tags stripped)."""
        return _label_text(self.outputs.get("message"))

    @property
    def status(self) -> str:
        """Text of the busy label: empty unless a callback is computing."""
        return _label_text(self.outputs.get("status"))


def _label_text(label) -> str:
    return "" if label is None else _strip_tags(label.value)


def _strip_tags(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", text))


# -- drawing, busy state, errors ---------------------------------------------------

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


def _fold_subtitle(fig: go.Figure, width: int = 95) -> go.Figure:
    """The subtitle as smaller lines of the title, for a ``FigureWidget``: its
    browser view, created with a subtitle, draws it above the title."""
    sub = fig.layout.title.subtitle.text
    if not sub:
        return fig
    lines = textwrap.wrap(sub, width) or [""]
    text = "<br>".join(f"<span style='font-size:12px'>{html.escape(line)}</span>" for line in lines)
    fig.update_layout(title_text=f"{fig.layout.title.text or ''}<br>{text}",
                      title_subtitle_text=None,
                      margin_t=max(fig.layout.margin.t or 0, 70 + 18 * len(lines)))
    return fig


def _set_figure(fw: go.FigureWidget, fig: go.Figure) -> None:
    """Replace the traces and layout of the ``FigureWidget`` ``fw`` (explorers
    that need one, e.g. for click callbacks) with those of ``fig``, in Python
    and in every browser view.

    Assigning ``fw.layout`` replaces the Python layout but reaches the browser
    as one ``Plotly.relayout`` of the new layout's keys: a key the new layout
    lacks (``shapes``, ``annotations``, ``title``, ``width``...) would stay
    drawn from the old figure.  Such keys are first reset (``None``), so the
    browser draws exactly ``fig``.  (The explorers here draw static figures
    instead, :class:`_Figures`.)
    """
    fig = _fold_subtitle(_json_safe(fig))
    new = set(fig.layout.to_plotly_json())
    stale = {k: None for k in fw.layout.to_plotly_json() if k not in new}
    if stale:
        fw.plotly_relayout(stale)
    with fw.batch_update():
        fw.data = ()
        fw.layout = fig.layout
        fw.add_traces(fig.data)


class _Figures(dict):
    """name -> ``go.Figure`` (the figure drawn, updated in place), each shown
    in an ``Output`` widget, ``views[name]``."""

    def __init__(self, *names: str):
        super().__init__((name, go.Figure()) for name in names)
        self.views = {name: W.Output() for name in names}

    def show(self, name: str, fig: go.Figure) -> None:
        """Make ``self[name]`` the figure ``fig`` and draw it."""
        old = self[name]
        with old.batch_update():
            old.data = ()
            old.layout = fig.layout
        old.add_traces(fig.data)
        self.render(name)

    def render(self, name: str) -> None:
        """Draw ``self[name]`` in its view as a static plotly figure: a new plot
        in the browser each time, nothing kept from the one before."""
        data = json.loads(pio.to_json(self[name], validate=False))
        data["config"] = {"displaylogo": False}
        self.views[name].outputs = ({"output_type": "display_data", "metadata": {}, "data": {
            "application/vnd.plotly.v1+json": data,
            "text/plain": f"<figure {name}: {self[name].layout.title.text or ''}>"}},)


def _blank(text: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=html.escape(text), showarrow=False, x=0.5, y=0.5,
                       xref="paper", yref="paper")
    fig.update_layout(height=200, xaxis_visible=False, yaxis_visible=False)
    return fig


def _error_html(err: BaseException) -> str:
    """A ``ValueError`` as ``invalid: ...`` (bad input); anything else with its
    type and a folded traceback."""
    if isinstance(err, ValueError):
        return f"<span style='color:#b00020'><b>invalid:</b> {html.escape(str(err))}</span>"
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-8:])
    return (f"<div style='color:#b00020'><b>error: {type(err).__name__}:</b> "
            f"{html.escape(str(err))}<details><summary>traceback</summary>"
            f"<pre style='font-size:85%;white-space:pre-wrap'>{html.escape(tb)}</pre>"
            "</details></div>")


def _info_html(text: str) -> str:
    return f"<span style='color:#333'>{html.escape(text)}</span>"


def _busy_html(what: str) -> str:
    return (f"<div style='color:#8a4b00'><progress style='width:9em;vertical-align:middle'>"
            f"</progress> <b>{html.escape(what)}…</b> (started {time.strftime('%H:%M:%S')}; "
            "the figures are greyed until it is done)</div>")


def _restyle(figures: dict, name: str, title: str, opacity: float) -> None:
    fig = figures[name]
    with fig.batch_update():
        fig.update_layout(title_text=title)
        fig.update_traces(opacity=opacity)
    if isinstance(figures, _Figures):
        figures.render(name)


@contextmanager
def _computing(outputs: dict, figures: dict, what: str):
    """While the block runs: ``what`` in the status line with a progress bar,
    every figure greyed and titled ``busy: what…``.  If it raises, the figures
    are restored and titled as not redrawn (the error goes on up).
    ``figures``: a :class:`_Figures`, or name -> ``FigureWidget``."""
    titles = {k: fig.layout.title.text or "" for k, fig in figures.items()}
    outputs["status"].value = _busy_html(what)
    for name in figures:
        _restyle(figures, name, f"busy: {what}… (greyed: the previous figure)", 0.3)
    t0 = time.perf_counter()
    try:
        yield
    except BaseException:
        for name in figures:
            _restyle(figures, name, f"{titles[name]} · not redrawn: {what} failed", 1.0)
        raise
    finally:
        outputs["status"].value = ""
    log.info("%s: %.1f s", what, time.perf_counter() - t0)


def _guarded(draw, outputs: dict):
    """``draw`` as a callback: the message line cleared, then any exception
    shown in it (and logged) instead of raised into the widget machinery."""
    def redraw():
        outputs["message"].value = ""
        try:
            draw()
        except Exception as err:                      # shown in the widget, see _error_html
            log.warning("explorer callback failed: %s", err, exc_info=True)
            outputs["message"].value = _error_html(err)
    return redraw


def _observe(controls: dict, callback) -> None:
    for w in controls.values():
        w.observe(lambda change: callback(), names="value")


def _explorer(head: list, body: list, controls: dict, figures: dict, outputs: dict, draw,
              cache: dict | None = None, observe: bool = True) -> Explorer:
    """The Explorer: ``head`` (control rows), the status and message lines,
    then ``body`` (widgets; the figures' views); ``draw`` guarded, wired to
    every control (``observe``) and run once."""
    for name in ("status", "message"):
        outputs.setdefault(name, W.HTML())
    redraw = _guarded(draw, outputs)
    if observe:
        _observe(controls, redraw)
    box = W.VBox([*head, outputs["status"], outputs["message"], *body])
    ex = Explorer(box=box, controls=controls, figures=figures, outputs=outputs, redraw=redraw,
                  cache={} if cache is None else cache, views=getattr(figures, "views", {}))
    redraw()
    return ex


# -- layout explorer -------------------------------------------------------------

def _method_fields(method: str) -> set[str]:
    return {f.name for f in dataclasses.fields(METHODS[method])}


def _param_controls(params: dict) -> dict:
    controls = {}
    for name, lo, hi, step in LAYOUT_PARAMS:
        cls = W.FloatSlider if isinstance(step, float) else W.IntSlider
        value = params.get(name, lo)
        controls[name] = cls(value=value, min=lo, max=max(hi, value), step=step,
                             description=name, continuous_update=False,
                             style={"description_width": "90px"})
        controls[name + "_auto"] = W.Checkbox(value=name not in params, description="auto",
                                              indent=False, layout=W.Layout(width="70px"))
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


def _figure1_view() -> tuple[int, int, dict]:
    """``(seq_len, train_length, params)`` of Figure 1's Mesa layout."""
    _, n, params = plots.FIGURE_1[0]
    params = dict(params)
    return n, params.pop("train_length"), params


def layout_explorer(method: str = "mesa", compare: str = "origin", seq_len: int | None = None,
                    train_length: int | None = None, params: dict | None = None) -> Explorer:
    """Explore every method's position layout, no model needed.

    Controls: ``method`` and ``compare`` (all of ``METHODS``), ``seq_len``,
    ``train_length`` and each parameter in ``LAYOUT_PARAMS`` with an ``auto``
    checkbox (``<name>_auto``): on auto the slider is disabled and shows the
    default derived from ``train_length``; uncheck it to set the value.
    ``params``: parameters set by hand at the start (their auto unchecked).
    With none of ``seq_len``, ``train_length``, ``params`` given it opens on
    the paper's Figure 1 (``plots.FIGURE_1``: Mesa on 13 tokens, ``T = 8``,
    first chunk 2, middle chunks of 3, last chunk 2, stair from 2 in steps of
    2); otherwise ``seq_len`` defaults to 40 and ``train_length`` to 16.
    Figures: ``layout`` (heatmap), ``difference`` (method - compare),
    ``chunk_plan``.  Invalid combinations show the ValueError in
    ``outputs["message"]`` and keep the figures.
    """
    names = list(METHODS)
    for arg, value in (("method", method), ("compare", compare)):
        if value not in names:
            raise ValueError(f"{arg}={value!r}: allowed {names}")
    if seq_len is None and train_length is None and params is None:
        seq_len, train_length, params = _figure1_view()
    params = dict(params or {})
    unknown = sorted(set(params) - {p[0] for p in LAYOUT_PARAMS})
    if unknown:
        raise ValueError(f"params {unknown}: allowed {[p[0] for p in LAYOUT_PARAMS]}")
    controls = {
        "method": W.Dropdown(options=names, value=method, description="method"),
        "compare": W.Dropdown(options=names, value=compare, description="minus"),
        "seq_len": W.IntSlider(value=seq_len or 40, min=2, max=256, description="seq_len",
                               continuous_update=False),
        "train_length": W.IntSlider(value=train_length or 16, min=2, max=256,
                                    description="train_length", continuous_update=False),
        **_param_controls(params),
    }
    figures = _Figures("layout", "difference", "chunk_plan")
    outputs: dict = {}
    busy = {"on": False}

    def draw():
        if busy["on"]:              # slider echoes while auto values are synced
            return
        busy["on"] = True
        try:
            _draw_layouts(controls, figures, outputs)
        finally:
            busy["on"] = False

    views = figures.views
    body = [W.Box([views["layout"], views["difference"]],
                  layout=W.Layout(display="flex", flex_flow="row wrap")), views["chunk_plan"]]
    return _explorer([_layout_control_box(controls)], body, controls, figures, outputs, draw)


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
    lay = layout(method, n, **_layout_params(controls, method))
    other = layout(compare, n, **_layout_params(controls, compare))
    _sync_auto(controls, lay.params)
    T = lay.params["train_length"]
    top = lay.max_relative_position
    outputs["message"].value = _info_html(
        f"{method}: largest relative position {top:g} "
        f"({'beyond' if top >= T else 'within'} train_length={T}); params {lay.params}")
    figures.show("layout", plots.layout_heatmap(lay).update_layout(width=560))
    figures.show("difference", plots.layout_difference(lay, other).update_layout(
        width=560, title=f"{method} - {compare}: orange = only {method} sees the key, "
                         f"purple = only {compare}", title_font_size=12))
    figures.show("chunk_plan", plots.chunk_plan_figure(lay) if lay.chunk_plan
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
                       layers=None, heads=None, query_rows=None, method_params=None, *,
                       method: str | None = None, layer: int | None = None, head="auto",
                       trace=None, **trace_kwargs) -> Explorer:
    """Attention rows of ``model`` on ``input_ids`` under each method.

    Traces once per method, when it is first shown (cached in
    ``explorer.cache``); meanwhile the status line says so and the figures are
    greyed, and a failed trace is shown in ``outputs["message"]``.
    ``method``: the one shown first (default ``methods[0]``).  ``needle=(start,
    stop)`` marks the passkey tokens and reports their share of attention.
    ``query_rows`` default to the last position.  ``head``: ``"auto"`` (with a
    needle, the (layer, head) whose share of the last query row's attention on
    the needle is largest under ``method``, else the max over heads), ``"max"``
    or ``"mean"`` over heads, or a head; ``layer``: default as ``head`` chooses
    it (the needle's best layer, else the first).  ``method_params``: method ->
    extra parameters; ``trace_kwargs`` (e.g. ``train_length``) go to every
    trace (hidden states are not captured unless ``hidden_layers`` is given).
    ``trace``: ``trace(model, input_ids, method, **kwargs) -> Trace``
    (default ``mesa_viz.trace``), e.g. one that loads saved traces.

    Controls: ``method``, ``layer``, ``head`` (a head or ``"max"``/``"mean"``
    over heads), ``row`` (a query position or ``"all"``), ``reduce`` (over
    key blocks), ``log``, ``zoom`` (key range).  Figures: ``attention``
    (``T`` marked per row at distance ``q - T``), ``distance``; outputs:
    ``needle`` (its share), ``info`` (length and parameters, at the bottom).
    """
    ids = _ids_1d(input_ids)
    n = len(ids)
    trace_kwargs.setdefault("hidden_layers", [])        # attention only: no hidden states
    methods = list(methods)
    if not methods:
        raise ValueError("methods is empty: allowed a list of method names")
    method = methods[0] if method is None else method
    if method not in methods:
        raise ValueError(f"method={method!r}: allowed one of methods {methods}")
    rows = [n - 1] if query_rows is None else [int(r) for r in query_rows]
    if needle is not None and not (0 <= needle[0] < needle[1] <= n):
        raise ValueError(f"needle={needle!r}: allowed (start, stop) with 0 <= start < stop <= {n}")
    if trace is None:
        from .probes import trace
    cache: dict = {}

    def get_trace(name):
        if name not in cache:
            params = dict(trace_kwargs, **(method_params or {}).get(name, {}))
            log.info("tracing %s on %d tokens", name, n)
            cache[name] = trace(model, ids, name, layers=layers, heads=heads, query_rows=rows,
                                tokenizer=tokenizer, **params)
        return cache[name]

    first = get_trace(method)
    view = _start_view(first, needle, layer, head)
    controls = _attention_controls(methods, method, first, n, view)
    figures = _Figures("attention", "distance")
    outputs = {"needle": W.HTML(), "info": W.HTML()}

    def draw():
        name = controls["method"].value
        if name not in cache:
            with _computing(outputs, figures, f"computing {name}: tracing {n} tokens"):
                get_trace(name)
        _draw_attention(cache[name], controls, figures, outputs, needle)

    head_rows = [W.HBox([controls[k] for k in ("method", "layer", "head", "row")]),
                 W.HBox([controls[k] for k in ("reduce", "log", "zoom")])]
    body = [outputs["needle"], figures.views["attention"], figures.views["distance"],
            outputs["info"]]
    return _explorer(head_rows, body, controls, figures, outputs, draw, cache)


def _start_view(tr, needle, layer, head) -> tuple[int, object]:
    """The ``(layer, head)`` shown first (see :func:`attention_explorer`)."""
    reductions = [v for _, v in HEAD_REDUCTIONS]
    if head != "auto" and head not in reductions and head not in tr.heads:
        raise ValueError(f"head={head!r}: allowed 'auto', {reductions} or one of {tr.heads}")
    if layer is not None and layer not in tr.layers:
        raise ValueError(f"layer={layer!r}: allowed one of {tr.layers}")
    if needle is None:
        return (tr.layers[0] if layer is None else layer), ("max" if head == "auto" else head)
    share = tr.needle_share(needle)                        # [layer, head], last query row
    if head == "auto" and layer is None:
        li, hi = np.unravel_index(np.argmax(share), share.shape)
        return tr.layers[li], tr.heads[hi]
    per_layer = _reduce_heads(share, "max" if head == "auto" else head, tr.heads, axis=1)
    li = int(np.argmax(per_layer)) if layer is None else tr.layers.index(layer)
    if head == "auto":
        head = tr.heads[int(np.argmax(share[li]))]
    return tr.layers[li], head


def _reduce_heads(a: np.ndarray, head, heads, axis: int = 0) -> np.ndarray:
    """``a`` with heads on ``axis``: one ``head``, or the ``"max"``/``"mean"``
    over heads."""
    if head == "max":
        return a.max(axis=axis)
    if head == "mean":
        return a.mean(axis=axis)
    return np.take(a, list(heads).index(head), axis=axis)


def _attention_controls(methods, method, tr, n: int, view) -> dict:
    layer, head = view
    head_options = [*HEAD_REDUCTIONS, *[(f"head {h}", h) for h in tr.heads]]
    return {
        "method": W.Dropdown(options=methods, value=method, description="method"),
        "layer": W.Dropdown(options=list(tr.layers), value=layer, description="layer",
                            layout=W.Layout(width="170px")),
        "head": W.Dropdown(options=head_options, value=head, description="head",
                           layout=W.Layout(width="250px")),
        "row": W.Dropdown(options=[*tr.query_rows, "all"], value=tr.query_rows[-1],
                          description="query row"),
        "reduce": W.Dropdown(options=["max", "mean"], value="max", description="key blocks",
                             layout=W.Layout(width="190px")),
        "log": W.Checkbox(value=True, description="log colour"),
        "zoom": W.IntRangeSlider(value=(0, n), min=0, max=n, description="keys",
                                 continuous_update=False, layout=W.Layout(width="50%")),
    }


def _head_text(head) -> str:
    return f"{head} over heads" if head in ("max", "mean") else f"head {head}"


def _draw_attention(tr, controls: dict, figures: dict, outputs: dict, needle) -> None:
    c = {k: w.value for k, w in controls.items()}
    li = tr.layers.index(c["layer"])
    rows = list(tr.query_rows) if c["row"] == "all" else [c["row"]]
    picked = [tr.query_rows.index(r) for r in rows]
    per_head = tr.attention[li][:, picked]                     # [head, q_row, k_pos]
    attn = _reduce_heads(per_head, c["head"], tr.heads)         # [q_row, k_pos]
    k0, k1 = c["zoom"]
    window = None if (k0, k1) == (0, tr.seq_len) or k1 <= k0 else (k0, k1)
    marks = {"needle": tuple(needle)} if needle is not None else None
    title = f"{tr.method}: layer {c['layer']}, {_head_text(c['head'])} (T={tr.train_length})"
    figures.show("attention", plots.attention_heatmap(
        attn, rows, reduce=c["reduce"], log_color=c["log"], window=window, marks=marks,
        train_length=tr.train_length, title=title, query_positions=rows).update_layout(
        height=min(600, 170 + 30 * len(rows)), margin=dict(t=60, b=45)))
    figures.show("distance", plots.attention_by_distance(
        attn, rows, train_length=tr.train_length, title=f"{title}: mass by distance"))
    outputs["info"].value = _info_html(f"{tr.seq_len} tokens, {tr.method} parameters {tr.params}")
    if needle is not None:
        outputs["needle"].value = _needle_html(per_head, rows, needle, c, tr)


def _needle_html(per_head: np.ndarray, rows, needle, c: dict, tr) -> str:
    """The needle's share of each drawn row (``per_head [head, q_row, k_pos]``):
    of the head shown, the mean over heads, or the largest over heads and
    which head has it."""
    share = needle_share(per_head, needle)                     # [head, q_row]
    head = c["head"]
    if head == "max":
        parts = [f"q={r}: {share[b, k]:.2%} (head {tr.heads[b]})"
                 for k, (r, b) in enumerate(zip(rows, share.argmax(axis=0)))]
    else:
        parts = [f"q={r}: {v:.2%}" for r, v in zip(rows, _reduce_heads(share, head, tr.heads))]
    what = f"{tr.method}, layer {c['layer']}, {_head_text(head)}"
    return (f"<b>needle share</b> (tokens [{needle[0]}, {needle[1]})) {html.escape(what)}: "
            + html.escape(", ".join(parts)))


# -- threshold explorer ----------------------------------------------------------

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
    shown = f" · {order_by} past T: {past:.0%}" if past is not None else ""
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
    figures = _Figures("hidden")
    outputs = {"crossings": W.HTML()}

    def draw():
        _draw_thresholds(pairs[controls["pair"].value], traces, T, controls, figures, outputs)

    return _explorer([W.HBox(list(controls.values()))],
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
    figures.show("hidden", plots.hidden_state_figure(
        values, T, threshold=thr, smooth=w, zoom=controls["zoom"].value, relative=relative,
        correlation=r, title=f"hidden state, layer {layer}, dim {dim} (trailing mean over {w} "
                             "tokens)").update_layout(height=350))
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


# -- sweep viewer ------------------------------------------------------------------

def _measured(rows) -> list[dict]:
    """The measurement rows of a results file: not the machine line (no method)
    nor rows of another ``kind`` than ``"point"``."""
    return [r for r in rows if isinstance(r, dict) and r.get("method") is not None
            and r.get("kind", "point") == "point"]


def sweep_viewer(rows, kind: str = "passkey", train_length: int | None = None) -> Explorer:
    """Redraw saved passkey or bench results (rows or a results file).

    Controls: ``methods`` (which to show: the methods measured; the bench's
    machine line is no method) and, for passkey, ``view`` (``"heatmap"`` or
    ``"lines"``).  Figure: ``main``.
    """
    if kind not in ("passkey", "bench"):
        raise ValueError(f"kind={kind!r}: allowed 'passkey' or 'bench'")
    rows = _measured(plots.load_rows(rows))
    if not rows:
        raise ValueError("rows are empty: allowed a non-empty list of result rows or file "
                         "(rows with a method)")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    controls = {"methods": W.SelectMultiple(options=methods, value=tuple(methods),
                                            description="methods", rows=min(8, len(methods)))}
    if kind == "passkey":
        controls["view"] = W.ToggleButtons(options=["heatmap", "lines"], value="heatmap",
                                           description="view")
    figures = _Figures("main")

    def draw():
        chosen = [r for r in rows if r["method"] in controls["methods"].value]
        if not chosen:
            figures.show("main", _blank("no method selected"))
        elif kind == "bench":
            figures.show("main", plots.bench_figure(chosen))
        elif controls["view"].value == "heatmap":
            figures.show("main", plots.passkey_heatmap(chosen, train_length=train_length))
        else:
            figures.show("main", plots.passkey_accuracy_lines(
                chosen, train_length=train_length))

    return _explorer([W.HBox(list(controls.values()))], [figures.views["main"]], controls,
                     figures, {}, draw)


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
    figures = _Figures("value", "position")
    outputs = {"statements": W.HTML()}
    cache: dict = {}

    def key(pe: str, v: dict):
        return pe, tuple(sorted(_theorem_kwargs(pe, v).items()))

    def draw():
        v = {k: c.value for k, c in controls.items()}
        todo = [pe for pe in theory.PES if key(pe, v) not in cache]
        if todo:
            with _computing(outputs, figures, f"running {', '.join(todo)} to t={v['length']}"):
                for pe in todo:
                    cache[key(pe, v)] = theory.run(pe, **_theorem_kwargs(pe, v))
        runs = {pe: cache[key(pe, v)] for pe in theory.PES}
        _draw_theorems(theory, runs, v, figures)
        outputs["statements"].value = "<div style='line-height:1.35'>" + "<br>".join(
            _statement_html(r.statement()) for r in runs.values()) + "</div>"

    head = [W.HBox(list(controls.values()), layout=W.Layout(flex_flow="row wrap"))]
    body = [figures.views["value"], outputs["statements"], figures.views["position"]]
    return _explorer(head, body, controls, figures, outputs, draw, cache)


def _draw_theorems(theory, runs: dict, v: dict, figures: dict) -> None:
    t = runs["nope"].t
    closed = None
    if v["closed_form"]:
        closed = {pe: theory.closed_form(pe, v["M"], float(v["H"]), v["length"], N=v["N"],
                                         layer2=v["layer2"], recovery=v["recovery"])
                  for pe in runs}
    note = " (Equ.34 as printed)" if v["layer2"] == "paper" else ""
    verdicts = " · ".join(f"{pe} {_VERDICT[r.statement().holds]}" for pe, r in runs.items())
    figures.show("value", plots.theorem_figure(
        {pe: r.value for pe, r in runs.items()}, v["M"], float(v["H"]), t, closed,
        log_x=v["log_x"], title=f"layer 2 {v['layer2']}{note}: {verdicts}"))
    figures.show("position", plots.recovered_position_figure(
        {pe: r.position for pe, r in runs.items() if r.position is not None}, t,
        log_x=v["log_x"]))


# == real-model views: hidden heat map explorer (issue 14) ==========================

__all__ += ["hidden_heatmap_explorer"]


def hidden_heatmap_explorer(traces: dict, layers=None, dims=None, columns: int = 800
                            ) -> Explorer:
    """The paper's Figures 11-16 on traces of one input (method -> Trace, e.g.
    from ``thresholds.trace_methods``): hidden layers x dims over positions,
    methods side by side.

    Controls: ``methods`` and ``layers`` (which to show), ``windows``
    (``"paper"``: around ``T`` and the end, ``thresholds.paper_windows``, or
    ``"all"`` positions), ``width`` (the paper windows' width), ``relative``
    (each value minus origin's, else the method's own, value at ``T - 1``).
    Figure: ``heatmap``; ``outputs["change"]``: ``thresholds.format_changes``
    (per method and layer, the mean ``|change|`` over the shown dims across
    ``T`` and to the end, over ``width`` positions).
    """
    from .thresholds import format_changes, hidden_view, paper_windows

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
    figures = {"heatmap": go.FigureWidget()}
    outputs = {"change": W.HTML(), "message": W.HTML()}

    def redraw():
        c = {k: w.value for k, w in controls.items()}
        chosen = {m: traces[m] for m in c["methods"]}
        if not chosen or not c["layers"]:
            _set_figure(figures["heatmap"], _blank("choose at least one method and layer"))
            return
        ref = traces.get("origin") if c["relative"] else None
        windows = paper_windows(n, T, c["width"]) if c["windows"] == "paper" else "all"
        try:
            views = [hidden_view(tr, layers=sorted(c["layers"]), dims=dims, windows=windows,
                                 columns=columns, relative_to=T - 1 if c["relative"] else None,
                                 reference=ref) for tr in chosen.values()]
            width = min(c["width"], T, n - T)
            change = format_changes(chosen, width, layers=sorted(c["layers"]), dims=dims) \
                if width >= 1 else "no position past T"
        except ValueError as err:
            outputs["message"].value = _error_html(err)
            return
        outputs["message"].value = ""
        _set_figure(figures["heatmap"], plots.hidden_heatmap(views))
        outputs["change"].value = f"<pre style='font-size:85%'>{html.escape(change)}</pre>"

    _observe(controls, redraw)
    box = W.VBox([W.HBox(list(controls.values()), layout=W.Layout(flex_flow="row wrap")),
                  outputs["message"], outputs["change"], figures["heatmap"]])
    ex = Explorer(box=box, controls=controls, figures=figures, outputs=outputs, redraw=redraw)
    redraw()
    return ex


# == why it fails: click a failed cell, see its drill-down; the whole map (issue 12) ==========

__all__ += ["failure_explorer", "attention_map_explorer", "click_cell"]

#: The figures of a drill-down (``plots.explanation_figures``), in page order.
DRILL_DOWN = ("needle", "heads", "rows", "logits", "entropy", "distance")


def click_cell(ex: Explorer, method: str, length: int, depth: float) -> None:
    """Click the heatmap cell (``method``, ``length``, ``depth``) of a
    :func:`failure_explorer` as a browser would: through the heatmap trace's
    ``on_click`` callbacks, with the point plotly sends."""
    from plotly.callbacks import InputDeviceState, Points
    fw = ex.figures["cells"]
    k = next((k for k, t in enumerate(fw.data) if t.name == method), None)
    if k is None:
        raise ValueError(f"method={method!r} has no heatmap: allowed "
                         f"{[t.name for t in fw.data]}")
    trace = fw.data[k]
    x, y = str(length), f"{depth:g}"
    if x not in list(trace.x) or y not in list(trace.y):
        raise ValueError(f"no cell length={length}, depth={depth:g}: allowed lengths "
                         f"{list(trace.x)} and depths {list(trace.y)}")
    point = list(trace.y).index(y) * len(trace.x) + list(trace.x).index(x)
    trace._dispatch_on_click(Points(point_inds=[point], xs=[x], ys=[y], trace_name=method,
                                    trace_index=k), InputDeviceState())


def _cell_rows(rows, method, x, y) -> list[dict]:
    """The rows of heatmap cell (``method``, length ``x``, depth ``y``; as drawn)."""
    return sorted((r for r in rows if r["method"] == method and str(r["length"]) == str(x)
                   and f"{r['depth']:g}" == str(y)), key=lambda r: r.get("seed", 0))


def failure_explorer(rows, model=None, tokenizer=None, *, saved=None, against=None,
                     train_length: int | None = None, top: int = 8, **explain_kwargs) -> Explorer:
    """Passkey (or needle-task) results as a heatmap; click a cell to see why it failed.

    ``rows``: result rows or their file.  A click (or :func:`click_cell`) on
    a cell picks its first failed sample (``controls["seed"]`` picks another)
    and shows its drill-down (``mesa_viz.explain`` against
    ``controls["against"]``): loaded from ``saved`` (a folder) when it holds
    it, so results redraw without the model, else run on ``model`` (and
    saved there).  Figures: ``cells`` (the clickable heatmap) and
    :data:`DRILL_DOWN`; ``outputs["summary"]`` the answers and the heads that
    carry the needle.  ``explain_kwargs`` go to ``explain``.
    """
    from pathlib import Path

    from .drilldown import Explanation, comparison_for, explain, file_name

    rows = plots.load_rows(rows)
    if not rows:
        raise ValueError("rows are empty: allowed result rows (or their file)")
    saved = None if saved is None else Path(saved)
    controls = {
        "against": W.Dropdown(options=["(default)", *METHODS], value=against or "(default)",
                              description="against"),
        "seed": W.Dropdown(options=[], description="sample"),
        "top": W.IntSlider(value=top, min=1, max=32, description="top heads",
                           continuous_update=False),
    }
    figures = {"cells": go.FigureWidget(plots.passkey_heatmap(rows, train_length=train_length)),
               **{k: go.FigureWidget() for k in DRILL_DOWN}}
    outputs = {"status": W.HTML(), "message": W.HTML(_info_html("click a cell of the heatmap")),
               "summary": W.HTML()}
    drill = {k: figures[k] for k in DRILL_DOWN}
    cache: dict = {}

    def explanation(row, vs):
        key = (row["method"], row["length"], row["depth"], row.get("seed"), vs)
        path = None if saved is None else saved / file_name(row, vs)
        if key not in cache and path is not None and Path(f"{path}.json").exists():
            cache[key] = Explanation.load(path)
        if key not in cache:
            if model is None:
                raise ValueError(f"no saved drill-down {path} and no model: pass model= "
                                 "(and tokenizer=) or saved= a folder holding it")
            with _computing(outputs, drill, f"explaining {row['method']} at {row['length']} "
                            f"tokens against {vs}"):
                cache[key] = explain(row, model, tokenizer, against=vs, **explain_kwargs)
            if path is not None:
                cache[key].save(path)
        return cache[key]

    def draw():
        row = controls["seed"].value
        if row is None:
            return
        vs = controls["against"].value
        vs = comparison_for(row["method"]) if vs == "(default)" else vs
        exp = explanation(row, vs)
        for name, fig in plots.explanation_figures(exp, top=controls["top"].value).items():
            _set_figure(figures[name], fig)
        outputs["message"].value = _info_html(f"{row['method']} at {row['length']} tokens, "
                                              f"depth {row['depth']:g}, seed {row.get('seed')}")
        outputs["summary"].value = f"<pre>{html.escape(exp.summary())}</pre>"

    def on_click(trace, points, state):
        if not points.point_inds:
            return
        cell = sorted(_cell_rows(rows, trace.name, points.xs[0], points.ys[0]),
                      key=lambda r: bool(r.get("correct")))          # failed samples first
        controls["seed"].options = [(f"seed {r.get('seed')} {'✓' if r.get('correct') else '✗'}",
                                     r) for r in cell]
        controls["seed"].value = cell[0]        # observed: a new selection redraws once

    redraw = _guarded(draw, outputs)
    for trace in figures["cells"].data:
        trace.on_click(on_click)
    _observe(controls, redraw)
    box = W.VBox([W.HBox(list(controls.values())), outputs["status"], outputs["message"],
                  figures["cells"],
                  outputs["summary"], *(figures[k] for k in DRILL_DOWN)])
    return Explorer(box=box, controls=controls, figures=figures, outputs=outputs, redraw=redraw,
                    cache=cache)


def _saved_maps(maps) -> dict:
    """``(method, layer, head) -> AttentionMap`` from maps or their saved paths."""
    from .pooling import AttentionMap
    out = {}
    for m in maps or ():
        m = m if isinstance(m, AttentionMap) else AttentionMap.load(m)
        out[m.method, m.layer, m.head] = m
    return out


def attention_map_explorer(model=None, input_ids=None, *, methods=("mesa", "origin"), maps=None,
                           layer: int = 0, head: int = 0, grid: int | None = None,
                           train_length: int | None = None,
                           method_params: dict | None = None) -> Explorer:
    """The whole attention map of one layer and head per method, pooled to at
    most ``grid x grid`` cells (default 256; a saved map's own grid), beside a
    comparison method and their difference.

    With ``model`` and ``input_ids``: each (method, layer) runs one forward
    (all heads kept, ``cache``), each head is pooled when shown.  Without:
    ``maps`` (AttentionMaps or saved paths) are what can be shown.  Controls:
    ``method``, ``compare`` (``"none"`` or a method), ``layer``, ``head``,
    ``pool``, ``log``, and ``queries`` / ``keys`` (ranges: a zoom re-pools
    that region at full resolution, from the kept queries and keys, so saved
    maps zoom without the model).  Figure: ``map``.
    """
    from .probes import capture_qk

    saved = _saved_maps(maps)
    if model is None and not saved:
        raise ValueError("no model and no maps: allowed model= with input_ids=, or maps= "
                         "(AttentionMaps or saved paths)")
    if model is not None:
        ids = _ids_1d(input_ids)
        n, L, H = len(ids), model.config.num_hidden_layers, model.config.num_attention_heads
        names = list(methods)
        layers, heads = list(range(L)), list(range(H))
    else:
        n = next(iter(saved.values())).seq_len
        names = list(dict.fromkeys(k[0] for k in saved))
        layers, heads = sorted({k[1] for k in saved}), sorted({k[2] for k in saved})
        layer, head = next(iter(saved))[1:]
    controls = {
        "method": W.Dropdown(options=names, value=names[0], description="method"),
        "compare": W.Dropdown(options=["none", *names], value=names[1] if len(names) > 1
                              else "none", description="beside"),
        "layer": W.Dropdown(options=layers, value=layer, description="layer"),
        "head": W.Dropdown(options=heads, value=head, description="head"),
        "pool": W.ToggleButtons(options=["max", "mean"], value="max", description="pool"),
        "log": W.Checkbox(value=True, description="log colour"),
        "queries": W.IntRangeSlider(value=(0, n), min=0, max=n, description="queries",
                                    continuous_update=False, layout=W.Layout(width="48%")),
        "keys": W.IntRangeSlider(value=(0, n), min=0, max=n, description="keys",
                                 continuous_update=False, layout=W.Layout(width="48%")),
    }
    figures = {"map": go.FigureWidget()}
    outputs = {"status": W.HTML(), "message": W.HTML()}
    cache: dict = {}

    def get_map(method, lay, hd, pool, region):
        key = (method, lay, hd, pool, region)
        if key in cache:
            return cache[key]
        if model is not None:
            if (method, lay) not in cache:
                params = (method_params or {}).get(method, {})
                with _computing(outputs, figures, f"running {method} to layer {lay} on {n} "
                                "tokens"):
                    cache[method, lay] = capture_qk(model, ids, method, layer=lay,
                                                    train_length=train_length, **params)
            amap = cache[method, lay].map(hd, grid=min(grid or 256, n), pool=pool,
                                          region=region, progress=False)
        elif (method, lay, hd) not in saved:
            raise ValueError(f"no saved map of {method}, layer {lay}, head {hd}: allowed "
                             f"{sorted(saved)}")
        else:
            base = saved[method, lay, hd]
            same = region is None and pool == base.pool and base.region == [0, n, 0, n]
            amap = base if same else base.zoom(region, grid=grid or base.grid, pool=pool)
        cache[key] = amap
        return amap

    def draw():
        v = {k: c.value for k, c in controls.items()}
        region = (*v["queries"], *v["keys"])
        region = None if region == (0, n, 0, n) else region
        shown = [v["method"]] + ([v["compare"]] if v["compare"] not in ("none", v["method"])
                                 else [])
        amaps = [get_map(m, v["layer"], v["head"], v["pool"], region) for m in shown]
        fig = plots.attention_maps_figure(amaps, log_color=v["log"]) if len(amaps) > 1 else \
            plots.attention_map_figure(amaps[0], log_color=v["log"])
        _set_figure(figures["map"], fig)
        took = ", ".join(f"{a.method} {sum(a.seconds.values()):.1f} s" for a in amaps)
        outputs["message"].value = _info_html(f"{n} tokens; {took}")

    redraw = _guarded(draw, outputs)
    _observe(controls, redraw)
    box = W.VBox([W.HBox([controls[k] for k in ("method", "compare", "layer", "head")]),
                  W.HBox([controls[k] for k in ("pool", "log")]),
                  W.HBox([controls["queries"], controls["keys"]]), outputs["status"],
                  outputs["message"], figures["map"]])
    ex = Explorer(box=box, controls=controls, figures=figures, outputs=outputs, redraw=redraw,
                  cache=cache)
    redraw()
    return ex
# == long-context evaluation viewer (perplexity, RULER; issue 11) =====================

__all__ += ["eval_viewer"]


def eval_viewer(ppl_rows=None, task_rows=None, train_length: int | None = None) -> Explorer:
    """Redraw saved perplexity rows (``mesa_viz.perplexity``) and RULER task
    rows (``mesa_viz.lm_eval_model.evaluate``): rows or results files.

    Controls: ``methods`` (which to show) and ``length`` (which perplexity
    run).  Figures: ``ppl`` (NLL by position, ``T`` marked) and ``tasks``
    (score against length).
    """
    sets = {k: plots.load_rows(v) if v is not None else [] for k, v in
            (("ppl", ppl_rows), ("tasks", task_rows))}
    if not any(sets.values()):
        raise ValueError("no rows: allowed perplexity rows, task rows, or both (lists or files)")
    methods = list(dict.fromkeys(r["method"] for rows in sets.values() for r in rows))
    lengths = sorted({r["length"] for r in sets["ppl"]})
    controls = {"methods": W.SelectMultiple(options=methods, value=tuple(methods),
                                            description="methods", rows=min(8, len(methods))),
                "length": W.Dropdown(options=lengths or [0], value=(lengths or [0])[-1],
                                     description="ppl length", disabled=not lengths)}
    figures = {k: go.FigureWidget() for k, rows in sets.items() if rows}
    outputs = {"message": W.HTML()}

    def redraw():
        chosen = controls["methods"].value
        for kind, fw in figures.items():
            rows = [r for r in sets[kind] if r["method"] in chosen]
            if not rows:
                _set_figure(fw, _blank("no method selected"))
            elif kind == "ppl":
                _set_figure(fw, plots.ppl_by_position(rows, train_length=train_length,
                                                      length=controls["length"].value))
            else:
                _set_figure(fw, plots.task_scores(rows, train_length=train_length))
        outputs["message"].value = _info_html(
            f"{len(sets['ppl'])} perplexity rows, {len(sets['tasks'])} task samples")

    _observe(controls, redraw)
    box = W.VBox([W.HBox(list(controls.values())), outputs["message"], *figures.values()])
    ex = Explorer(box=box, controls=controls, figures=figures, outputs=outputs, redraw=redraw)
    redraw()
    return ex
