"""The report's bench section: memory and latency from a results file.
"""

from __future__ import annotations

from ...viz.page import Section, from_results
from .figures import bench_figure

__all__ = ["SECTIONS"]


def bench_section(ctx) -> list:
    """Prefill time, memory and decode time from a bench results file."""
    return from_results(ctx, "bench", "rows", "run `make bench` (FILE = runs/bench/bench.jsonl)",
                        lambda rows: [bench_figure(rows)])


SECTIONS = (Section("Memory and latency", bench_section, "bench", reads="bench"),)
