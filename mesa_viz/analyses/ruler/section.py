"""The report's RULER section: task scores by method and length from a results file.
"""

from __future__ import annotations

from ...runs.stats import format_table
from ...viz.page import Section, from_results, note, pre
from .figures import task_scores
from .rows import summary

__all__ = ["SECTIONS"]


def ruler_section(ctx) -> list:
    """RULER task scores by method and length from a ``mesa-viz ruler`` results file."""
    return from_results(
        ctx, "ruler", "samples", "run mesa-viz ruler --methods origin,mesa --lengths "
        "4096,8192,12288,16384 --out DIR (FILE = DIR/ruler.jsonl)",
        lambda rows: [task_scores(rows, train_length=ctx.train_length
                                  or rows[0].get("train_length")),
                      note("mean score over tasks (each task weighted equally):"),
                      pre(format_table(summary(rows)))])


SECTIONS = (Section("Long-context tasks (RULER, through lm-eval)", ruler_section, "ruler",
                    reads="ruler"),)
