"""mesa_viz.runs.sweep: the one resumable loop.  A rerun runs only the units
whose rows are missing; a run killed while writing a row resumes from the rows
before it, the torn line set aside."""

from __future__ import annotations

import json
import logging

import pytest

from mesa_viz.runs import ResultsFile, sweep
from mesa_viz.runs.jsonl import read_jsonl, torn_file


def key(row: dict) -> tuple:
    return row["length"], row["seed"]


def units_run(path, lengths, calls: list) -> list[dict]:
    """Sweep ``lengths`` x seeds 0, 1 into ``path``; ``calls`` records the units run."""
    def run(length):
        calls.append(length)
        return [{"length": length, "seed": s, "value": length * 10 + s} for s in (0, 1)]

    results = ResultsFile(path, key)
    return list(sweep(results, lengths, lambda L: [(L, 0), (L, 1)], run, desc="test"))


def test_a_rerun_runs_only_the_missing_units(tmp_path):
    path, calls = tmp_path / "rows.jsonl", []
    first = units_run(path, [10, 20], calls)
    assert calls == [10, 20] and [key(r) for r in first] == [(10, 0), (10, 1), (20, 0), (20, 1)]
    again = units_run(path, [10, 20, 30], calls)
    assert calls == [10, 20, 30] and len(again) == 6 and len(read_jsonl(path)) == 6


def test_a_run_killed_while_writing_a_row_resumes(tmp_path, caplog):
    """The file a kill leaves: rows, then half a line with no newline.  The
    rerun warns with the file and line, keeps the half line in ``.torn`` and
    runs again only the unit whose row was torn."""
    path, calls = tmp_path / "rows.jsonl", []
    units_run(path, [10, 20], calls)
    text = path.read_text()
    path.write_text(text[: text.rstrip("\n").rindex("\n") + 13])  # the last row cut mid-write
    with pytest.raises(json.JSONDecodeError):                  # what a bare reader hits
        [json.loads(line) for line in path.read_text().splitlines()]
    with caplog.at_level(logging.WARNING):
        rows = units_run(path, [10, 20], calls)
    assert calls == [10, 20, 20]
    assert f"{path}, line 4: a torn last line" in caplog.text
    assert [key(r) for r in rows] == [(10, 0), (10, 1), (20, 0), (20, 1)]
    assert read_jsonl(path) == rows
    assert torn_file(path).read_text().splitlines()[1] == text.splitlines()[3][:12]


def test_a_results_file_is_a_jsonl_path(tmp_path):
    with pytest.raises(ValueError, match="is a folder: allowed a .jsonl file path"):
        ResultsFile(tmp_path, key)
    with pytest.raises(ValueError, match="allowed a .jsonl file path"):
        ResultsFile(tmp_path / "rows.csv", key)
