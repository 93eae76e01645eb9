"""The bench viewer: saved bench rows redrawn (memory and latency against length),
the methods to show chosen."""

from __future__ import annotations

from ...runs.jsonl import load_rows
from ...viz.explorer import Explorer, rows_viewer
from .figures import bench_figure

__all__ = ["bench_viewer"]


def bench_viewer(rows, train_length: int | None = None) -> Explorer:
    """Redraw saved bench rows (rows or a results file): the point rows (not
    the machine line, nor A/B rows).  Controls: ``methods``.  Figure: ``main``.
    ``train_length`` is accepted for a common signature with the passkey viewer."""
    rows = [r for r in load_rows(rows) if isinstance(r, dict) and r.get("method") is not None
            and r.get("kind", "point") == "point"]
    return rows_viewer({"main": (rows, lambda chosen, values: bench_figure(chosen))})
