"""Every explorer of mesa_viz in one namespace (a facade: no figure code here).

Each explorer lives with its analysis (``mesa_viz/analyses/<name>/explorer.py``)
on the one explorer mechanism of :mod:`mesa_viz.viz.explorer` (the busy line,
the error line, guarded callbacks, static figure views); this module
re-exports them, so ``from mesa_viz import widgets`` works as it always has::

    ex = widgets.layout_explorer()
    ex.controls["method"].value = "rerope"
    ex.figures["layout"].data[0].z        # redrawn
"""

from .analyses.attention.explorer import HEAD_REDUCTIONS, attention_explorer
from .analyses.attention_map.explorer import attention_map_explorer
from .analyses.bench.explorer import bench_viewer
from .analyses.explain.explorer import DRILL_DOWN, click_cell, explain_explorer
from .analyses.layouts.explorer import layout_explorer
from .analyses.passkey.explorer import passkey_viewer
from .analyses.ruler.explorer import eval_viewer
from .analyses.theory.explorer import theorem_explorer
from .analyses.thresholds.explorer import hidden_heatmap_explorer, threshold_explorer
from .viz.explorer import Explorer

__all__ = ["Explorer", "layout_explorer", "attention_explorer", "threshold_explorer",
           "hidden_heatmap_explorer", "theorem_explorer", "explain_explorer",
           "failure_explorer", "click_cell", "attention_map_explorer", "passkey_viewer",
           "bench_viewer", "sweep_viewer", "eval_viewer", "EXPLORERS", "DRILL_DOWN",
           "HEAD_REDUCTIONS"]

#: The drill-down explorer under its earlier name.
failure_explorer = explain_explorer

#: The saved-rows viewers by kind (:func:`sweep_viewer`).
_VIEWERS = {"passkey": passkey_viewer, "bench": bench_viewer}

#: Every explorer, by name (the tests build each and check its busy and error lines).
EXPLORERS = {f.__name__: f for f in (
    layout_explorer, attention_explorer, threshold_explorer, hidden_heatmap_explorer,
    theorem_explorer, explain_explorer, attention_map_explorer, passkey_viewer, bench_viewer,
    eval_viewer)}


def sweep_viewer(rows, kind: str = "passkey", train_length: int | None = None) -> Explorer:
    """Saved passkey or bench rows redrawn: :func:`passkey_viewer` or
    :func:`bench_viewer` by ``kind``."""
    if kind not in _VIEWERS:
        raise ValueError(f"kind={kind!r}: allowed {sorted(_VIEWERS)}")
    return _VIEWERS[kind](rows, train_length=train_length)
