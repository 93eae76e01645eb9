"""The report's passkey section: accuracy by length and depth from a results file.
"""

from __future__ import annotations

from ...viz.page import Section, from_results
from .figures import passkey_accuracy_lines, passkey_heatmap

__all__ = ["SECTIONS"]


def passkey_section(ctx) -> list:
    """Passkey accuracy by length and depth from a results file."""
    return from_results(
        ctx, "passkey", "samples", "run `make demo` (FILE = runs/demo/passkey.jsonl) or "
        "mesa-viz passkey --out DIR (FILE = DIR/passkey.jsonl)",
        lambda rows: [passkey_accuracy_lines(rows, train_length=_T(ctx, rows)),
                      passkey_heatmap(rows, train_length=_T(ctx, rows))])


def _T(ctx, rows) -> int | None:
    """``T`` to mark: given, else the rows' own (``train_length``), else the model's."""
    if ctx.train_length:
        return int(ctx.train_length)
    own = {r.get("train_length") for r in rows} - {None}
    if len(own) == 1:
        return int(own.pop())
    return ctx.T if ctx.model is not None else None


SECTIONS = (Section("Passkey retrieval", passkey_section, "passkey", reads="passkey"),)
