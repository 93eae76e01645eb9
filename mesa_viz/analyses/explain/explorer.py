"""The drill-down explorer: passkey (or needle-task) results as a heatmap; click a
cell to see why its sample failed (``mesa_viz.explain``), from saved drill-downs
or the model.
"""

from __future__ import annotations

import html
from pathlib import Path

import ipywidgets as W

from ...methods import METHODS
from ...runs.jsonl import load_rows
from ...viz.explorer import Explorer, Figures, build, computing, controls_row, info_html
from ..passkey.figures import passkey_heatmap
from .compute import Explanation, comparison_for, explain, file_name
from .figures import explanation_figures

__all__ = ["explain_explorer", "click_cell", "DRILL_DOWN"]


#: The figures of a drill-down (``plots.explanation_figures``), in page order.
DRILL_DOWN = ("needle", "heads", "rows", "logits", "entropy", "distance")


def click_cell(ex: Explorer, method: str, length: int, depth: float) -> None:
    """Click the heatmap cell (``method``, ``length``, ``depth``) of an
    :func:`explain_explorer` as a browser would: through the heatmap trace's
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


def explain_explorer(rows, model=None, tokenizer=None, *, saved=None, against=None,
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
    rows = load_rows(rows)
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
    figures = Figures("cells", *DRILL_DOWN, clickable=("cells",))
    figures.show("cells", passkey_heatmap(rows, train_length=train_length))
    outputs = {"summary": W.HTML()}
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
            with computing(outputs, figures, f"explaining {row['method']} at {row['length']} "
                           f"tokens against {vs}", names=DRILL_DOWN):
                cache[key] = explain(row, model, tokenizer, against=vs, **explain_kwargs)
            if path is not None:
                cache[key].save(path)
        return cache[key]

    def draw():
        row = controls["seed"].value
        if row is None:
            outputs["message"].value = info_html("click a cell of the heatmap")
            return
        vs = controls["against"].value
        vs = comparison_for(row["method"]) if vs == "(default)" else vs
        exp = explanation(row, vs)
        for name, fig in explanation_figures(exp, top=controls["top"].value).items():
            figures.show(name, fig)
        outputs["message"].value = info_html(f"{row['method']} at {row['length']} tokens, "
                                             f"depth {row['depth']:g}, seed {row.get('seed')}")
        outputs["summary"].value = f"<pre>{html.escape(exp.summary())}</pre>"

    def on_click(trace, points, state):
        if not points.point_inds:
            return
        cell = sorted(_cell_rows(rows, trace.name, points.xs[0], points.ys[0]),
                      key=lambda r: bool(r.get("correct")))          # failed samples first
        if not cell:                                  # a grey "not run" cell: nothing to explain
            outputs["message"].value = info_html(f"length {points.xs[0]}, depth "
                                                 f"{points.ys[0]}: not run, no sample")
            return
        controls["seed"].options = [(f"seed {r.get('seed')} {'✓' if r.get('correct') else '✗'}",
                                     r) for r in cell]
        controls["seed"].value = cell[0]        # observed: a new selection redraws once

    for trace in figures["cells"].data:
        trace.on_click(on_click)
    head = [controls_row(controls)]
    body = [figures.views["cells"], outputs["summary"], *(figures.views[k] for k in DRILL_DOWN)]
    return build(head, body, controls, figures, outputs, draw, cache)
