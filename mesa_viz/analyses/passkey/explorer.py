"""The passkey viewer: saved passkey rows redrawn, as a heat map or as accuracy
against length, the methods to show chosen."""

from __future__ import annotations

import ipywidgets as W

from ...runs.jsonl import load_rows
from ...viz.explorer import Explorer, rows_viewer
from .figures import passkey_accuracy_lines, passkey_heatmap

__all__ = ["passkey_viewer"]


def passkey_viewer(rows, train_length: int | None = None) -> Explorer:
    """Redraw saved passkey rows (rows or a results file).  Controls:
    ``methods`` (which to show) and ``view`` (``"heatmap"`` or ``"lines"``).
    Figure: ``main``."""
    rows = [r for r in load_rows(rows) if isinstance(r, dict) and r.get("method") is not None]

    def draw(chosen, values):
        if values["view"] == "heatmap":
            return passkey_heatmap(chosen, train_length=train_length)
        return passkey_accuracy_lines(chosen, train_length=train_length)

    view = W.ToggleButtons(options=["heatmap", "lines"], value="heatmap", description="view")
    return rows_viewer({"main": (rows, draw)}, extra={"view": view})
