"""Passkey retrieval: prompts of an exact token length (:mod:`.samples`), the
evaluation under every method (:mod:`.run`), its rows and their summaries
(:mod:`.rows`)."""

from ...runs.stats import format_table
from .rows import ROW_FIELDS, compare, needle_cuts, row_key, summary
from .run import RESULTS_FILE, check_batch_size, check_grid, evaluate
from .samples import DEPTHS, check_depth, draws, make_sample, parse_answer, passkey_of, read_samples

__all__ = ["make_sample", "parse_answer", "evaluate", "check_grid", "summary", "format_table",
           "compare", "read_samples", "draws", "passkey_of", "RESULTS_FILE", "DEPTHS",
           "needle_cuts", "row_key", "ROW_FIELDS", "check_depth", "check_batch_size"]
