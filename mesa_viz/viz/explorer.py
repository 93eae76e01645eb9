"""The one explorer mechanism: controls, figures and two lines, built by :func:`build`.

Every explorer of mesa_viz is an :class:`Explorer` made here, so they all
behave alike::

    ex = layout_explorer()
    ex.controls["method"].value = "rerope"       # a control change redraws
    ex.figures["layout"].data[0].z                # the figure drawn, updated in place
    ex.status, ex.message                         # the busy line, the error line

* **Busy line** (``outputs["status"]``): while a redraw runs it says so; a slow
  step wrapped in :func:`computing` (a trace of the model, a theory run) says
  what it computes, with a progress bar, and greys every figure, titled
  ``busy: …``.
* **Error line** (``outputs["message"]``): an exception raised while redrawing
  is shown there (``invalid:`` for a ``ValueError``, else its type and a
  folded traceback) and logged, never raised into the widget machinery.
* **Figures** (:class:`Figures`): each shown as a static plotly figure in an
  ``Output`` widget, drawn afresh on every change (a ``FigureWidget``
  assignment reaches the browser as a ``Plotly.relayout`` that keeps keys the
  new layout lacks: stale shapes, titles, sizes).  A figure whose clicks must
  reach Python (a heat map to click a cell of) is a ``FigureWidget`` instead,
  redrawn with every stale key reset (:func:`set_figure`).

:func:`rows_viewer` is the one viewer of saved result rows (methods to show,
one figure a panel).  The only module here that imports ipywidgets.
"""

from __future__ import annotations

import html
import json
import logging
import re
import textwrap
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from .grid import NOTEBOOK_WIDTH

__all__ = ["Explorer", "Figures", "build", "computing", "blank", "info_html", "error_html",
           "busy_html", "set_figure", "rows_viewer", "controls_row"]

log = logging.getLogger(__name__)


@dataclass
class Explorer:
    """A widget box with named ``controls``, ``figures`` (``go.Figure``,
    updated in place), the ``views`` showing them and ``outputs`` (labels,
    ``status`` and ``message`` among them).

    ``redraw()`` recomputes the figures from the controls' current values
    (controls call it themselves when changed); an error it raises is shown in
    :attr:`message`, not raised.  ``cache``: what the explorer computed (a
    method's trace, a theory run), kept between redraws.
    """

    box: W.Box
    controls: dict
    figures: dict
    outputs: dict = field(default_factory=dict)
    redraw: Callable[[], None] | None = None
    cache: dict = field(default_factory=dict)
    views: dict = field(default_factory=dict)

    def _repr_mimebundle_(self, **kwargs):
        return self.box._repr_mimebundle_(**kwargs)

    @property
    def message(self) -> str:
        """Text of the message/error line (HTML tags stripped)."""
        return _label_text(self.outputs.get("message"))

    @property
    def status(self) -> str:
        """Text of the busy line: empty unless a redraw is computing."""
        return _label_text(self.outputs.get("status"))


def _label_text(label) -> str:
    return "" if label is None else html.unescape(re.sub(r"<[^>]+>", "", label.value))


# -- figures ------------------------------------------------------------------------------

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
    text = "<br>".join(f"<span style='font-size:12px'>{html.escape(line)}</span>"
                       for line in lines)
    fig.update_layout(title_text=f"{fig.layout.title.text or ''}<br>{text}",
                      title_subtitle_text=None,
                      margin_t=max(fig.layout.margin.t or 0, 70 + 18 * len(lines)))
    return fig


def set_figure(fw: go.FigureWidget, fig: go.Figure) -> None:
    """Replace the traces and layout of the ``FigureWidget`` ``fw`` with those
    of ``fig``, in Python and in every browser view.

    Assigning ``fw.layout`` replaces the Python layout but reaches the browser
    as one ``Plotly.relayout`` of the new layout's keys: a key the new layout
    lacks (``shapes``, ``annotations``, ``title``, ``width``...) would stay
    drawn from the old figure.  Such keys are first reset (``None``), so the
    browser draws exactly ``fig``."""
    fig = _fold_subtitle(_json_safe(fig))
    new = set(fig.layout.to_plotly_json())
    stale = {k: None for k in fw.layout.to_plotly_json() if k not in new}
    if stale:
        fw.plotly_relayout(stale)
    with fw.batch_update():
        fw.data = ()
        fw.layout = fig.layout
        fw.add_traces(fig.data)


class Figures(dict):
    """name -> the figure drawn (updated in place), each in its view
    (``views[name]``): an ``Output`` widget showing a static plotly figure, or
    for the names in ``clickable`` the ``FigureWidget`` itself (its clicks reach
    Python: ``figures[name].data[k].on_click``)."""

    def __init__(self, *names: str, clickable=()):
        unknown = sorted(set(clickable) - set(names))
        if unknown:
            raise ValueError(f"clickable {unknown}: allowed some of the figure names {names}")
        super().__init__((name, go.FigureWidget() if name in clickable else go.Figure())
                         for name in names)
        self.clickable = frozenset(clickable)
        self.views = {name: self[name] if name in self.clickable else W.Output()
                      for name in names}

    def show(self, name: str, fig: go.Figure) -> None:
        """Make ``self[name]`` the figure ``fig`` and draw it."""
        if name in self.clickable:
            set_figure(self[name], fig)
            return
        old = self[name]
        with old.batch_update():
            old.data = ()
            old.layout = fig.layout
        old.add_traces(fig.data)
        self.render(name)

    def render(self, name: str) -> None:
        """Draw ``self[name]`` in its view: a static figure is a new plot in the
        browser each time, nothing kept from the one before."""
        if name in self.clickable:
            return
        data = json.loads(pio.to_json(self[name], validate=False))
        data["config"] = {"displaylogo": False}
        self.views[name].outputs = ({"output_type": "display_data", "metadata": {}, "data": {
            "application/vnd.plotly.v1+json": data,
            "text/plain": f"<figure {name}: {self[name].layout.title.text or ''}>"}},)

    def restyle(self, name: str, title: str, opacity: float) -> None:
        """Retitle and fade ``self[name]`` (the busy state), and draw it."""
        fig = self[name]
        with fig.batch_update():
            fig.update_layout(title_text=title)
            fig.update_traces(opacity=opacity)
        self.render(name)


def blank(text: str) -> go.Figure:
    """An empty figure saying ``text`` (nothing to draw, and why)."""
    fig = go.Figure()
    fig.add_annotation(text=html.escape(text), showarrow=False, x=0.5, y=0.5,
                       xref="paper", yref="paper")
    fig.update_layout(height=200, xaxis_visible=False, yaxis_visible=False)
    return fig


# -- the two lines -------------------------------------------------------------------------

def error_html(err: BaseException) -> str:
    """A ``ValueError`` as ``invalid: ...`` (bad input); anything else with its
    type and a folded traceback."""
    if isinstance(err, ValueError):
        return f"<span style='color:#b00020'><b>invalid:</b> {html.escape(str(err))}</span>"
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-8:])
    return (f"<div style='color:#b00020'><b>error: {type(err).__name__}:</b> "
            f"{html.escape(str(err))}<details><summary>traceback</summary>"
            f"<pre style='font-size:85%;white-space:pre-wrap'>{html.escape(tb)}</pre>"
            "</details></div>")


def info_html(text: str) -> str:
    return f"<span style='color:#333'>{html.escape(text)}</span>"


def busy_html(what: str) -> str:
    return (f"<div style='color:#8a4b00'><progress style='width:9em;vertical-align:middle'>"
            f"</progress> <b>{html.escape(what)}…</b> (started {time.strftime('%H:%M:%S')}; "
            "the figures are greyed until it is done)</div>")


@contextmanager
def computing(outputs: dict, figures: Figures, what: str, names=None):
    """While the block runs: ``what`` in the busy line with a progress bar,
    every figure (of ``names``, default all) greyed and titled ``busy:
    what…``.  If it raises, the figures are restored and their titles say
    they were not redrawn (once), and the error goes on up (to the error line)."""
    names = list(figures) if names is None else list(names)
    titles = {k: _unmarked(figures[k].layout.title.text or "") for k in names}
    outputs["status"].value = busy_html(what)
    for name in names:
        figures.restyle(name, _fitted(figures[name], f"busy: {what}…",
                                      " (greyed: the previous figure)"), 0.3)
    t0 = time.perf_counter()
    try:
        yield
    except BaseException:
        for name in names:
            figures.restyle(name, _fitted(figures[name], titles[name],
                                          f" · not redrawn: {what} failed"), 1.0)
        raise
    finally:
        outputs["status"].value = ""
    log.info("%s: %.1f s", what, time.perf_counter() - t0)


def _fitted(fig: go.Figure, title: str, note: str) -> str:
    """``title + note`` on one line that fits ``fig``'s width: the title
    (without any earlier note) cut short with "…" to leave room for the note,
    so a title never runs off the plot however often a redraw fails."""
    room = int(((fig.layout.width or NOTEBOOK_WIDTH) - 60) / (0.55 * 17))
    title = _unmarked(title).split("<br>")[0]
    note = note if len(note) <= room - 12 else note[:room - 13] + "…"
    keep = max(12, room - len(note))
    return (title if len(title) <= keep else title[:keep - 1].rstrip() + "…") + note


def _unmarked(title: str) -> str:
    """A title without an earlier "not redrawn" note (so notes do not pile up)."""
    return title.split(" · not redrawn: ", 1)[0]


def _guarded(draw: Callable[[], None], outputs: dict) -> Callable[[], None]:
    """``draw`` as a callback: the error line cleared, the busy line saying a
    redraw runs, any exception shown in the error line (and logged) instead of
    raised into the widget machinery, the busy line cleared at the end."""
    def redraw():
        outputs["message"].value = ""
        outputs["status"].value = busy_html("redrawing")
        try:
            draw()
        except Exception as err:                      # shown in the widget, see error_html
            log.warning("explorer callback failed: %s", err, exc_info=True)
            outputs["message"].value = error_html(err)
        finally:
            outputs["status"].value = ""
    return redraw


def _observe(controls: dict, callback) -> None:
    for w in controls.values():
        w.observe(lambda change: callback(), names="value")


def controls_row(controls: dict, names=None) -> W.HBox:
    """The controls ``names`` (default all) in one wrapping row."""
    names = list(controls) if names is None else names
    return W.HBox([controls[k] for k in names], layout=W.Layout(flex_flow="row wrap"))


def build(head: list, body: list, controls: dict, figures: Figures, outputs: dict, draw,
          cache: dict | None = None) -> Explorer:
    """The Explorer: ``head`` (control rows), the busy and error lines, then
    ``body`` (widgets; the figures' views); ``draw`` guarded (:func:`_guarded`),
    wired to every control and run once."""
    for name in ("status", "message"):
        outputs.setdefault(name, W.HTML())
    redraw = _guarded(draw, outputs)
    _observe(controls, redraw)
    box = W.VBox([*head, outputs["status"], outputs["message"], *body])
    ex = Explorer(box=box, controls=controls, figures=figures, outputs=outputs, redraw=redraw,
                  cache={} if cache is None else cache, views=figures.views)
    redraw()
    return ex


# -- saved rows ------------------------------------------------------------------------------

def rows_viewer(panels: dict, extra: dict | None = None, note=None) -> Explorer:
    """Saved result rows redrawn, no model.

    ``panels``: name -> ``(rows, draw)``, ``draw(rows, values) -> Figure`` for
    the rows of the methods chosen (``values``: every control's value).
    Controls: ``methods`` (the methods of every panel's rows) and ``extra``
    (name -> widget).  ``note(panels' rows) -> str``: a line under the
    controls.  Raises ValueError when no panel has rows.
    """
    panels = {k: (list(rows), draw) for k, (rows, draw) in panels.items() if rows}
    if not panels:
        raise ValueError("rows are empty: allowed a non-empty list of result rows or file "
                         "(rows with a method)")
    methods = list(dict.fromkeys(r["method"] for rows, _ in panels.values() for r in rows))
    controls = {"methods": W.SelectMultiple(options=methods, value=tuple(methods),
                                            description="methods", rows=min(8, len(methods))),
                **(extra or {})}
    figures = Figures(*panels)
    outputs = {"note": W.HTML()}

    def draw():
        values = {k: c.value for k, c in controls.items()}
        for name, (rows, fn) in panels.items():
            chosen = [r for r in rows if r["method"] in values["methods"]]
            figures.show(name, fn(chosen, values) if chosen else blank("no method selected"))
        if note is not None:
            outputs["note"].value = info_html(note({k: rows for k, (rows, _) in panels.items()}))

    body = [outputs["note"], *(figures.views[k] for k in panels)]
    return build([controls_row(controls)], body, controls, figures, outputs, draw)
