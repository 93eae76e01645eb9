"""The report's perplexity section: NLL by position bucket from a results file.
"""

from __future__ import annotations

from ...runs.stats import format_table
from ...viz.page import Section, from_results, note, pre
from .figures import ppl_by_position
from .rows import summary

__all__ = ["SECTIONS"]


def perplexity_section(ctx) -> list:
    """Perplexity by position bucket from a ``mesa-viz perplexity`` results file."""
    return from_results(
        ctx, "perplexity", "rows", "run mesa-viz perplexity --methods origin,mesa --lengths "
        "16384 --out DIR (FILE = DIR/perplexity.jsonl)",
        lambda rows: [ppl_by_position(rows, train_length=ctx.train_length),
                      note("mean NLL (nats per token) by position bucket, longest length:"),
                      pre(format_table(summary(rows)))])


SECTIONS = (Section("Perplexity by position", perplexity_section, "perplexity",
                    reads="perplexity"),)
