"""The one resumable sweep: a results file of JSON lines read back by key
(:class:`ResultsFile`), and the loop every analysis runs over it (:func:`sweep`):
units whose rows are all there are not run again, a unit's rows are appended
as it finishes, and a tqdm bar shows the progress."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path

from .jsonl import append_jsonl, set_aside_torn_line

__all__ = ["ResultsFile", "sweep", "check_rows_file"]

log = logging.getLogger(__name__)


def check_rows_file(path: "str | Path") -> Path:
    """``path`` as a results file: a ``.jsonl`` path, not a folder."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"out={str(path)!r} is a folder: allowed a .jsonl file path "
                         f"(e.g. {path / 'rows.jsonl'})")
    if path.suffix != ".jsonl":
        raise ValueError(f"out={str(path)!r}: allowed a .jsonl file path (JSON lines)")
    return path


class ResultsFile:
    """The rows of one resumable run, by ``key(row)``.

    Opening it reads the rows already there (a torn last line, from a run
    stopped while writing it, is set aside: :func:`.jsonl.set_aside_torn_line`);
    ``accept(row)`` keeps only the rows that count as done (e.g. not a
    ``skipped`` bench point).  :meth:`add` appends a row and records it.
    """

    def __init__(self, path: "str | Path", key: Callable[[dict], Hashable],
                 accept: Callable[[dict], bool] | None = None):
        self.path, self.key = check_rows_file(path), key
        self.all = set_aside_torn_line(self.path)
        self.rows = {key(r): r for r in self.all if accept is None or accept(r)}

    def __contains__(self, key) -> bool:
        return key in self.rows

    def __getitem__(self, key) -> dict:
        return self.rows[key]

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: dict) -> dict:
        """Append ``row`` to the file (flushed) and record it under its key."""
        append_jsonl(self.path, row)
        self.rows[self.key(row)] = row
        self.all.append(row)
        return row

    def others(self, field: str, value) -> list:
        """The values of ``field`` in the rows that differ from ``value``
        (e.g. rows of other models in the same file)."""
        return sorted({str(r.get(field)) for r in self.rows.values()} - {str(value)})


def sweep(results: ResultsFile, units: Iterable, keys: Callable[[object], list],
          run: Callable[[object], Iterable[dict]], *, desc: str, unit: str = "unit",
          skip: Callable[[object], bool] | None = None) -> Iterator[dict]:
    """For each of ``units``: when a key of ``keys(u)`` is missing from
    ``results`` (and ``skip(u)`` is not true), ``run(u)`` makes its rows, each
    appended as it comes; then the unit's rows there are yielded in key order.
    A tqdm bar (``desc``, ``unit``) counts the units."""
    from tqdm.auto import tqdm

    units = list(units)
    with tqdm(total=len(units), desc=desc, unit=unit) as bar:
        for u in units:
            wanted = keys(u)
            if any(k not in results for k in wanted) and not (skip is not None and skip(u)):
                for row in run(u):
                    if results.key(row) not in results:
                        results.add(row)
            bar.update(1)
            yield from (results[k] for k in wanted if k in results)
