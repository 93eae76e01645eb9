"""mesa_viz.runs.jsonl: rows appended whole, a torn last line (a run killed
while writing it) skipped by readers and set aside by a resumed run, any other
broken line an error naming the file and the line."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from mesa_viz.runs.jsonl import (BrokenLine, append_jsonl, load_rows, read_jsonl,
                                 set_aside_torn_line, torn_file, write_jsonl)

ROWS = [{"method": "origin", "length": 100, "correct": False},
        {"method": "mesa", "length": 100, "correct": True},
        {"method": "mesa", "length": 200, "correct": True}]


def write(path, rows, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")


def test_append_then_read_round_trips_numpy_values(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    append_jsonl(path, {"x": np.int64(3), "y": np.float32(0.5), "z": np.arange(2)})
    append_jsonl(path, ROWS[0])
    assert read_jsonl(path) == [{"x": 3, "y": 0.5, "z": [0, 1]}, ROWS[0]]
    assert path.read_text().endswith("\n") and path.read_text().count("\n") == 2
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_a_torn_last_line_is_skipped_by_readers_with_its_file_and_line(tmp_path, caplog):
    path = tmp_path / "passkey.jsonl"
    write(path, ROWS[:2], tail='{"method": "mesa", "len')         # killed mid-write
    with caplog.at_level(logging.WARNING):
        assert read_jsonl(path) == ROWS[:2]
    assert f"{path}, line 3: a torn last line" in caplog.text
    assert path.read_text().endswith('"len')                      # a reader changes nothing
    assert load_rows(path) == ROWS[:2]


def test_a_resumed_run_sets_the_torn_line_aside(tmp_path, caplog):
    path = tmp_path / "passkey.jsonl"
    write(path, ROWS[:2], tail='{"method": "mesa", "len')
    with caplog.at_level(logging.WARNING):
        assert set_aside_torn_line(path) == ROWS[:2]
    assert f"{path}, line 3: a torn last line" in caplog.text and str(
        torn_file(path)) in caplog.text
    assert read_jsonl(path) == ROWS[:2] and path.read_text().endswith("}\n")
    kept = torn_file(path).read_text().splitlines()
    assert kept[0].startswith("# ") and "passkey.jsonl line 3" in kept[0]
    assert kept[1] == '{"method": "mesa", "len'                   # kept, not dropped
    append_jsonl(path, ROWS[2])
    assert read_jsonl(path) == ROWS


def test_a_complete_last_line_without_newline_gets_one(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]))
    assert set_aside_torn_line(path) == ROWS[:2]
    assert not torn_file(path).exists()
    append_jsonl(path, ROWS[2])
    assert read_jsonl(path) == ROWS


@pytest.mark.parametrize("reader", [read_jsonl, set_aside_torn_line, load_rows])
@pytest.mark.parametrize("bad, why", [('{"method": "mesa", "len', "not a JSON row"),
                                      ("[1, 2]", "a JSON list")])
def test_a_broken_line_elsewhere_names_the_file_and_line(tmp_path, reader, bad, why):
    path = tmp_path / "rows.jsonl"
    write(path, [ROWS[0]], tail=bad + "\n" + json.dumps(ROWS[1]) + "\n")
    before = path.read_text()
    with pytest.raises(BrokenLine, match="rows.jsonl, line 2: not a JSON row") as err:
        reader(path)
    assert err.value.line == 2 and err.value.path == path and why in str(err.value)
    assert "allowed one JSON object a line" in str(err.value)
    assert path.read_text() == before and not torn_file(path).exists()


def test_a_broken_last_line_with_its_newline_is_not_torn(tmp_path):
    """A newline after it means the write finished: the line is broken, not torn."""
    path = tmp_path / "rows.jsonl"
    write(path, [ROWS[0]], tail="{oops}\n")
    with pytest.raises(BrokenLine, match="line 2"):
        set_aside_torn_line(path)


def test_load_rows_names_the_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no such results file"):
        load_rows(tmp_path / "none.jsonl")
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(ValueError, match=r"allowed a .jsonl, .json or .csv"):
        load_rows(tmp_path / "rows.txt")
    (tmp_path / "rows.json").write_text('[{"a": 1},\n {"a": }]')
    with pytest.raises(ValueError, match=r"rows.json, line 2: not JSON"):
        load_rows(tmp_path / "rows.json")


def test_write_jsonl_replaces_the_whole_file(tmp_path):
    path = tmp_path / "sub" / "joined.jsonl"
    write_jsonl(path, ROWS)
    assert read_jsonl(path) == ROWS
    write_jsonl(path, ROWS[:1])
    assert read_jsonl(path) == ROWS[:1] and not path.with_name("joined.jsonl.tmp").exists()
