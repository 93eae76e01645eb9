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
        lambda rows: [passkey_accuracy_lines(rows, train_length=ctx.train_length),
                      passkey_heatmap(rows)])


SECTIONS = (Section("Passkey retrieval", passkey_section, "passkey", reads="passkey"),)
