"""The long-context evaluation viewer: saved perplexity rows and RULER task rows
redrawn side by side, the methods to show and the perplexity run chosen."""

from __future__ import annotations

import ipywidgets as W

from ...runs.jsonl import load_rows
from ...viz.explorer import Explorer, rows_viewer
from ..perplexity.figures import ppl_by_position
from .figures import task_scores

__all__ = ["eval_viewer"]


def eval_viewer(ppl_rows=None, task_rows=None, train_length: int | None = None) -> Explorer:
    """Redraw saved perplexity rows (``mesa_viz.perplexity``) and RULER task rows
    (``mesa-viz ruler``): rows or results files, either may be left out.

    Controls: ``methods`` (which to show) and ``length`` (which perplexity
    run).  Figures: ``ppl`` (NLL by position, ``T`` marked) and ``tasks``
    (score against length).
    """
    ppl = load_rows(ppl_rows) if ppl_rows is not None else []
    tasks = load_rows(task_rows) if task_rows is not None else []
    if not ppl and not tasks:
        raise ValueError("no rows: allowed perplexity rows, task rows, or both (lists or files)")
    lengths = sorted({r["length"] for r in ppl})
    length = W.Dropdown(options=lengths or [0], value=(lengths or [0])[-1],
                        description="ppl length", disabled=not lengths)
    panels = {
        "ppl": (ppl, lambda chosen, v: ppl_by_position(chosen, train_length=train_length,
                                                       length=v["length"])),
        "tasks": (tasks, lambda chosen, v: task_scores(chosen, train_length=train_length)),
    }
    return rows_viewer(panels, extra={"length": length},
                       note=lambda rows: f"{len(ppl)} perplexity rows, {len(tasks)} task "
                                         "samples")
