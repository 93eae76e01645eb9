"""Counting evidence: the Wilson interval of an accuracy, the exact McNemar test of
two methods on the same samples, and plain-text tables of summary rows."""

from __future__ import annotations

import math

__all__ = ["wilson_interval", "mcnemar", "format_table", "PERCENT_COLUMNS"]


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for ``hits`` successes in ``n`` trials (95 % for
    ``z = 1.96``); ``(nan, nan)`` when ``n == 0``."""
    if n <= 0:
        return math.nan, math.nan
    p = hits / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


#: Columns :func:`format_table` writes as percentages.
PERCENT_COLUMNS = ("accuracy", "ci_low", "ci_high", "score")


def format_table(table: list[dict]) -> str:
    """A plain-text table of summary rows (the columns of the first row;
    :data:`PERCENT_COLUMNS` as percentages, other floats with 4 digits)."""
    if not table:
        return "(no rows)"
    cols = list(table[0])
    cells = [[_cell(r.get(c), c) for c in cols] for r in table]
    width = [max(len(c), *(len(row[k]) for row in cells)) for k, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, width))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, width)) for row in cells]
    return "\n".join(lines)


def _cell(value, column: str) -> str:
    if isinstance(value, float) and column in PERCENT_COLUMNS:
        return f"{value:.0%}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def mcnemar(x: int, y: int) -> float:
    """Exact two-sided McNemar p-value for ``x`` and ``y`` discordant pairs."""
    n = x + y
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(x, y) + 1)) / 2 ** n
    return min(1.0, 2 * tail)
