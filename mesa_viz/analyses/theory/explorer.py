"""The theorem explorer: the constructions of the paper's Appendix E run live.
"""

from __future__ import annotations

import html

import ipywidgets as W

from ...viz.explorer import Explorer, Figures, build, computing
from . import compute as theory
from .figures import recovered_position_figure, theorem_figure

__all__ = ["theorem_explorer", "THEOREM_PARAMS"]


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
    """The constructions of Appendix E run live (:mod:`.compute`): NoPE
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
    controls = _theorem_controls(dict(M=M, H=H, N=N, E=E, length=length), max_length)
    figures = Figures("value", "position")
    outputs = {"statements": W.HTML()}
    cache: dict = {}

    def key(pe: str, v: dict):
        return pe, tuple(sorted(_theorem_kwargs(pe, v).items()))

    def draw():
        v = {k: c.value for k, c in controls.items()}
        todo = [pe for pe in theory.PES if key(pe, v) not in cache]
        if todo:
            with computing(outputs, figures, f"running {', '.join(todo)} to t={v['length']}"):
                for pe in todo:
                    cache[key(pe, v)] = theory.run(pe, **_theorem_kwargs(pe, v))
        runs = {pe: cache[key(pe, v)] for pe in theory.PES}
        _draw_theorems(theory, runs, v, figures)
        outputs["statements"].value = "<div style='line-height:1.35'>" + "<br>".join(
            _statement_html(r.statement()) for r in runs.values()) + "</div>"

    head = [W.HBox(list(controls.values()), layout=W.Layout(flex_flow="row wrap"))]
    body = [figures.views["value"], outputs["statements"], figures.views["position"]]
    return build(head, body, controls, figures, outputs, draw, cache)


def _draw_theorems(theory, runs: dict, v: dict, figures: dict) -> None:
    t = runs["nope"].t
    closed = None
    if v["closed_form"]:
        closed = {pe: theory.closed_form(pe, v["M"], float(v["H"]), v["length"], N=v["N"],
                                         layer2=v["layer2"], recovery=v["recovery"])
                  for pe in runs}
    note = " (Equ.34 as printed)" if v["layer2"] == "paper" else ""
    verdicts = " · ".join(f"{pe} {_VERDICT[r.statement().holds]}" for pe, r in runs.items())
    figures.show("value", theorem_figure(
        {pe: r.value for pe, r in runs.items()}, v["M"], float(v["H"]), t, closed,
        log_x=v["log_x"], title=f"layer 2 {v['layer2']}{note}: {verdicts}"))
    figures.show("position", recovered_position_figure(
        {pe: r.position for pe, r in runs.items() if r.position is not None}, t,
        log_x=v["log_x"]))
