"""Result rows as JSON lines: one row a line, appended and flushed to disk as it is
made, so a crash at any moment loses at most the row being written.

Reading is strict: a line that is not JSON is an error naming the file and the
line, except a *torn last line* (a run killed while writing it: no newline at
its end), which readers skip with a warning and a resumed run sets aside
(:func:`set_aside_torn_line`: kept in ``<file>.torn``, never silently dropped).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

__all__ = ["append_jsonl", "write_jsonl", "read_jsonl", "load_rows", "set_aside_torn_line",
           "jsonable", "BrokenLine", "torn_file"]

log = logging.getLogger(__name__)


class BrokenLine(ValueError):
    """A line of a results file that is not one JSON row (``path``, ``line``)."""

    def __init__(self, path: Path, line: int, text: str, err: Exception):
        shown = text if len(text) <= 80 else text[:77] + "..."
        super().__init__(f"{path}, line {line}: not a JSON row ({err}): {shown!r}; allowed one "
                         "JSON object a line (fix or remove that line)")
        self.path, self.line = path, line


def jsonable(value):
    """``json.dumps``' ``default``: numpy scalars and arrays as Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot save {type(value).__name__} to JSON")


def append_jsonl(path: "str | Path", row: dict) -> None:
    """Append one JSON line in one write, flushed and synced to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(row, default=jsonable) + "\n"
    with path.open("a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(path: "str | Path", rows) -> Path:
    """Write ``rows`` as the whole file, through a temporary file moved over
    ``path``: a crash leaves the old file or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, default=jsonable) + "\n" for r in rows),
                   encoding="utf-8")
    os.replace(tmp, path)
    return path


def _lines(path: Path) -> tuple[list[str], bool]:
    """The file's lines and whether it ends with a newline."""
    text = path.read_text(encoding="utf-8")
    return text.splitlines(), text.endswith("\n") or not text


def _rows(path: Path, lines: list[str], complete: bool) -> tuple[list[dict], int | None]:
    """Rows of ``lines``, and the number of a torn last line (None if there is none)."""
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines) and not complete:
                return rows, number
            raise BrokenLine(path, number, line, err) from None
        if not isinstance(row, dict):
            raise BrokenLine(path, number, line, TypeError(f"a JSON {type(row).__name__}"))
        rows.append(row)
    return rows, None


def read_jsonl(path: "str | Path") -> list[dict]:
    """All rows of a JSON-lines file (an absent file has none).  A torn last
    line is skipped with a warning naming it (the file is left as it is: a run
    may be writing it); any other broken line raises :class:`BrokenLine`."""
    path = Path(path)
    if not path.exists():
        return []
    rows, torn = _rows(path, *_lines(path))
    if torn is not None:
        log.warning("%s, line %d: a torn last line (a run stopped while writing it) is not "
                    "read; a resumed run sets it aside", path, torn)
    return rows


def torn_file(path: "str | Path") -> Path:
    """Where :func:`set_aside_torn_line` keeps the torn lines of ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".torn")


def set_aside_torn_line(path: "str | Path") -> list[dict]:
    """The rows of ``path`` before a run appends to it: a torn last line is
    moved to :func:`torn_file` (appended there, with the time) and cut from
    ``path``, with a warning naming the file and line; a complete last line
    missing its newline gets one.  Any other broken line raises
    :class:`BrokenLine`."""
    path = Path(path)
    if not path.exists():
        return []
    lines, complete = _lines(path)
    rows, torn = _rows(path, lines, complete)
    if torn is not None:
        keep = "".join(line + "\n" for line in lines[:torn - 1])
        with torn_file(path).open("a", encoding="utf-8") as f:
            f.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} {path.name} line {torn}\n"
                    f"{lines[torn - 1]}\n")
        path.write_text(keep, encoding="utf-8")
        log.warning("%s, line %d: a torn last line (a run stopped while writing it) was set "
                    "aside in %s; resuming from the %d rows before it", path, torn,
                    torn_file(path), len(rows))
    elif not complete:
        with path.open("a", encoding="utf-8") as f:
            f.write("\n")
    return rows


def load_rows(rows_or_path) -> list[dict]:
    """Result rows from a list of dicts or a ``.jsonl`` / ``.json`` / ``.csv``
    file (CSV cells parsed as None, bool, int, float or text)."""
    if not isinstance(rows_or_path, (str, Path)):
        return list(rows_or_path)
    path = Path(rows_or_path)
    if not path.exists():
        raise ValueError(f"{path}: no such results file")
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".json":
        try:
            return list(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {err.lineno}: not JSON ({err.msg})") from None
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [{k: _csv_value(v) for k, v in row.items()} for row in csv.DictReader(f)]
    raise ValueError(f"{path}: allowed a .jsonl, .json or .csv file")


def _csv_value(text: str):
    if text in ("", "None", "null"):
        return None
    if text in ("True", "true", "False", "false"):
        return text in ("True", "true")
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
