"""The layout explorer: every method's position layout, no model needed, with a
control for every parameter each method declares (``methods.parameters``)."""

from __future__ import annotations

from functools import cache

import ipywidgets as W

from ...methods import METHODS, Choice, Derived, Slider, Toggle, parameters
from ...methods.layouts import layout
from ...viz.explorer import Explorer, Figures, blank, build, info_html
from .figures import FIGURE_1, chunk_plan_figure, layout_difference, layout_heatmap

__all__ = ["layout_explorer", "parameter_controls", "SEQ_LEN_MAX"]

#: The largest sequence the explorer's ``seq_len`` slider reaches (its
#: ``train_length`` slider: the base field's declared range).
SEQ_LEN_MAX = 4096
#: The drop-down entry for a parameter left to the method (``None``): a value of its own,
#: since a drop-down whose value is None shows no entry at all.
_DEFAULT = "(method default)"


@cache
def _merged_controls() -> dict:
    """Parameter name -> control, over every method (a name several methods
    declare gets the widest range: one slider serves them all)."""
    merged: dict = {}
    for name in METHODS:
        for pname, control in parameters(name).items():
            if pname == "train_length" or isinstance(control, Derived):
                continue
            merged[pname] = _wider(merged.get(pname), control, pname)
    return merged


def _wider(a, b, name: str):
    if a is None:
        return b
    if type(a) is not type(b):
        raise ValueError(f"parameter {name!r} is declared as {type(a).__name__} by one method "
                         f"and {type(b).__name__} by another: allowed one kind a name")
    if isinstance(a, Slider):
        return Slider(min(a.lo, b.lo), max(a.hi, b.hi), min(a.step, b.step))
    if isinstance(a, Choice):
        return Choice(tuple(dict.fromkeys(a.options + b.options)))
    return a


def _widget(name: str, control, value):
    style = {"description_width": "120px"}
    if isinstance(control, Slider):
        cls = W.FloatSlider if isinstance(control.step, float) else W.IntSlider
        value = control.lo if value is None else value
        return cls(value=value, min=control.lo, max=max(control.hi, value), step=control.step,
                   description=name, continuous_update=False, style=style)
    if isinstance(control, Choice):
        return W.Dropdown(options=[_DEFAULT, *control.options],
                          value=_DEFAULT if value is None else value, description=name,
                          style=style, layout=W.Layout(width="300px"))
    if isinstance(control, Toggle):
        return W.Checkbox(value=bool(value), description=name, indent=False,
                          layout=W.Layout(width="210px"))
    raise ValueError(f"parameter {name!r}: no explorer widget for {control!r}")


def parameter_controls(params: dict) -> dict:
    """A widget per method parameter (every method's, :func:`_merged_controls`)
    and its ``<name>_auto`` check box: on auto the method's own default is
    shown (disabled); ``params``: values set by hand (auto unchecked)."""
    controls = {}
    for name, control in _merged_controls().items():
        controls[name] = _widget(name, control, params.get(name))
        controls[name + "_auto"] = W.Checkbox(value=name not in params, description="auto",
                                              indent=False, layout=W.Layout(width="70px"))
    return controls


def _layout_params(controls: dict, method: str) -> dict:
    """Parameters for ``layout(method, ...)`` from the controls not on auto."""
    fields = set(parameters(method))
    params = {"train_length": controls["train_length"].value}
    for name in _merged_controls():
        value = controls[name].value
        if name in fields and not controls[name + "_auto"].value and value != _DEFAULT:
            params[name] = value
    return params


def _sync_auto(controls: dict, resolved: dict) -> None:
    """Show the resolved default of every parameter left on auto."""
    for name in _merged_controls():
        value = resolved.get(name)
        widget = controls[name]
        if not controls[name + "_auto"].value or value is None:
            continue
        if isinstance(widget, (W.IntSlider, W.FloatSlider)):   # a default past either end
            widget.max, widget.min = max(widget.max, value), min(widget.min, value)
        widget.value = value


def _figure1_view() -> tuple[int, int, dict]:
    """``(seq_len, train_length, params)`` of Figure 1's Mesa layout."""
    _, n, params = FIGURE_1[0]
    params = dict(params)
    return n, params.pop("train_length"), params


def layout_explorer(method: str = "mesa", compare: str = "origin", seq_len: int | None = None,
                    train_length: int | None = None, params: dict | None = None) -> Explorer:
    """Explore every method's position layout, no model needed.

    Controls: ``method`` and ``compare`` (all of ``METHODS``), ``seq_len``,
    ``train_length`` and every parameter the methods declare
    (``methods.parameters``: sliders, drop-downs such as ``stair`` and
    ``preset``, check boxes), each with an ``auto`` check box
    (``<name>_auto``): on auto the control is disabled and shows the default
    the method derives; uncheck it to set the value.  ``params``: parameters
    set by hand at the start (their auto unchecked), e.g. ``{"stair":
    "anchored"}`` or ``{"preset": "authors-code"}`` (with ``train_length``
    above 512).  With none of ``seq_len``, ``train_length``, ``params`` given
    it opens on the paper's Figure 1 (Mesa on 13 tokens, ``T = 8``);
    otherwise ``seq_len`` defaults to 40 and ``train_length`` to 16.
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
    allowed = _merged_controls()
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"params {unknown}: allowed {sorted(allowed)}")
    T = parameters("origin")["train_length"]
    controls = {
        "method": W.Dropdown(options=names, value=method, description="method"),
        "compare": W.Dropdown(options=names, value=compare, description="minus"),
        "seq_len": W.IntSlider(value=seq_len or 40, min=2, max=max(SEQ_LEN_MAX, seq_len or 0),
                               description="seq_len", continuous_update=False),
        "train_length": W.IntSlider(value=train_length or 16, min=T.lo,
                                    max=max(T.hi, train_length or 0),
                                    description="train_length", continuous_update=False),
        **parameter_controls(params),
    }
    figures = Figures("layout", "difference", "chunk_plan")
    outputs: dict = {}
    syncing = {"on": False}

    def draw():
        if syncing["on"]:              # control echoes while auto values are synced
            return
        syncing["on"] = True
        try:
            _draw_layouts(controls, figures, outputs)
        finally:
            syncing["on"] = False

    body = [W.Box([figures.views["layout"], figures.views["difference"]],
                  layout=W.Layout(display="flex", flex_flow="row wrap")),
            figures.views["chunk_plan"]]
    return build([_control_box(controls)], body, controls, figures, outputs, draw)


def _control_box(controls: dict) -> W.Box:
    top = W.HBox([controls[k] for k in ("method", "compare", "seq_len", "train_length")])
    rows = [W.HBox([controls[name], controls[name + "_auto"]]) for name in _merged_controls()]
    half = (len(rows) + 1) // 2
    return W.VBox([top, W.HBox([W.VBox(rows[:half]), W.VBox(rows[half:])])])


def _draw_layouts(controls: dict, figures: Figures, outputs: dict) -> None:
    method, compare = controls["method"].value, controls["compare"].value
    n = controls["seq_len"].value
    fields = set(parameters(method))
    for name in _merged_controls():
        controls[name].disabled = name not in fields or controls[name + "_auto"].value
    lay = layout(method, n, **_layout_params(controls, method))
    other = layout(compare, n, **_layout_params(controls, compare))
    _sync_auto(controls, lay.params)
    T = lay.params["train_length"]
    top = lay.max_relative_position
    outputs["message"].value = info_html(
        f"{method}: largest relative position {top:g} "
        f"({'beyond' if top >= T else 'within'} train_length={T}); params {lay.params}")
    figures.show("layout", layout_heatmap(lay).update_layout(width=560))
    figures.show("difference", layout_difference(lay, other).update_layout(
        width=560, title=f"{method} - {compare}: orange = only {method} sees the key, "
                         f"purple = only {compare}", title_font_size=12))
    figures.show("chunk_plan", chunk_plan_figure(lay) if lay.chunk_plan
                 else blank(f"{method} has no chunk plan (Mesa only)"))
