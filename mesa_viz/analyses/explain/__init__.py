"""The drill-down: from one failed result row to the heads that missed the needle
(:mod:`.compute`, ``mesa_viz.explain``)."""

from .compute import SINK_TOKENS, Explanation, comparison_for, explain, file_name, sample_of

__all__ = ["explain", "Explanation", "sample_of", "comparison_for", "file_name", "SINK_TOKENS"]
