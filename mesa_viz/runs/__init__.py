"""Runs and their rows, shared by every analysis: JSON lines written as results
come (:mod:`.jsonl`), the one resumable sweep (:mod:`.sweep`), counted evidence
(:mod:`.stats`), result dataclasses saved with their arrays (:mod:`.arrays`)
and the checks of what a sweep is asked to run (:mod:`.validate`)."""

from .arrays import load_result, save_result
from .jsonl import (BrokenLine, append_jsonl, load_rows, read_jsonl, set_aside_torn_line,
                    write_jsonl)
from .stats import format_table, mcnemar, wilson_interval
from .sweep import ResultsFile, check_rows_file, sweep
from .validate import check_lengths, check_methods

__all__ = ["append_jsonl", "write_jsonl", "read_jsonl", "load_rows", "set_aside_torn_line", "BrokenLine",
           "save_result", "load_result", "wilson_interval", "mcnemar", "format_table",
           "ResultsFile", "sweep", "check_rows_file", "check_lengths", "check_methods"]
