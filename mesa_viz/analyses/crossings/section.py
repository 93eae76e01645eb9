"""The report's crossings section: does crossing a threshold predict failure?
From the joined rows of ``mesa-viz crossings``."""

from __future__ import annotations

from ...viz.page import Section, from_results, note, pre
from .compute import format_table, summary
from .figures import crossing_scatter

__all__ = ["SECTIONS"]


def crossings_section(ctx) -> list:
    """Crossing measures against passkey accuracy and perplexity past ``T``."""
    def draw(rows):
        scored = [r for r in rows if r.get("accuracy") is not None
                  or r.get("ppl_past_t") is not None]
        items = [note(summary(rows)), pre(format_table(rows))]
        return items + ([crossing_scatter(scored)] if scored else
                        [note("No row has a passkey accuracy or a perplexity yet: join the "
                              "crossing rows with passkey or perplexity rows first.")])
    return from_results(ctx, "crossings", "rows", "run mesa-viz crossings --out DIR "
                        "(FILE = DIR/crossings_joined.jsonl)", draw)


#: This analysis's part of the report.
SECTIONS = (Section("Does crossing a threshold predict failure?", crossings_section,
                    "crossings", reads="crossings"),)
