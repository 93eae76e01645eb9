"""Passkey rows: what each row holds, its resume key, where a layout cut its
needle, and the summaries (accuracy with its sample count and 95 % Wilson
interval; two methods on the same samples with McNemar's test).

A row: ``method, length, depth, seed, expected, answer, correct, needle_span,
needle_cuts, filler_offset, text, seconds, params, model, train_length,
train_length_from``.  ``needle_cuts``
lists where the method's layout cuts the needle (a Mesa middle chunk starting
inside it, so the rest of the needle reads without its first words;
``Method.span_cuts``); the summary counts those samples: a cell that fails
exactly where its needles are cut has its cause named.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from ...methods import METHODS, get_method
from ...runs.stats import mcnemar, wilson_interval

__all__ = ["row_key", "needle_cuts", "summary", "compare", "ROW_FIELDS"]

log = logging.getLogger(__name__)

#: The fields of a passkey row (``mesa-viz passkey``, :func:`.run.evaluate`).
ROW_FIELDS = ("method", "length", "depth", "seed", "expected", "answer", "correct",
              "needle_span", "needle_cuts", "filler_offset", "text", "seconds", "params",
              "model", "train_length", "train_length_from")


def row_key(row, method: str | None = None) -> tuple:
    """The resume key of a result row (or of a sample under ``method``): a
    row counts only for the sample whose key it was asked."""
    key = row["expected"] if method is None else row["passkey"]
    return (method or row["method"], int(row["length"]), float(row["depth"]), int(row["seed"]),
            int(key))


def needle_cuts(row: dict) -> list[int] | None:
    """The positions where the row's layout cuts its needle
    (:meth:`~mesa_viz.methods.Method.span_cuts`): the row's ``needle_cuts``,
    else worked out from its method, resolved ``params`` and ``needle_span``
    (rows written before the field); None when the row lacks them or its
    parameters no longer resolve (unknown, not "not cut")."""
    if row.get("needle_cuts") is not None:
        return [int(i) for i in row["needle_cuts"]]
    span, params = row.get("needle_span"), row.get("params")
    if span is None or params is None or row.get("method") not in METHODS:
        return None
    length = int(row["length"])
    try:
        method = get_method(row["method"], **params).resolve(length, prefill_length=length)
        return list(method.span_cuts(*span))
    except (TypeError, ValueError) as err:
        log.debug("needle cuts of row %s unknown: %s", row.get("method"), err)
        return None


def summary(rows, by_depth: bool = False) -> list[dict]:
    """Accuracy per method x length (x depth with ``by_depth``), in first-seen
    method order, then by length and depth: ``method, length, [depth,] n,
    correct, accuracy, ci_low, ci_high`` (the 95 % Wilson interval) and
    ``needles_cut``, the samples whose needle the layout cut
    (:func:`needle_cuts`; a Mesa chunk boundary inside it)."""
    groups = defaultdict(list)
    order = list(dict.fromkeys(r["method"] for r in rows))
    for r in rows:
        key = (r["method"], r["length"]) + ((r["depth"],) if by_depth else ())
        groups[key].append((bool(r["correct"]), bool(needle_cuts(r))))
    out = []
    for key in sorted(groups, key=lambda k: (order.index(k[0]), *k[1:])):
        hits = [ok for ok, _ in groups[key]]
        low, high = wilson_interval(sum(hits), len(hits))
        out.append(dict(zip(("method", "length", "depth"), key), n=len(hits),
                        correct=sum(hits), accuracy=sum(hits) / len(hits),
                        ci_low=low, ci_high=high,
                        needles_cut=sum(cut for _, cut in groups[key])))
    return out


def compare(rows, a: str, b: str, by_depth: bool = False) -> list[dict]:
    """Methods ``a`` and ``b`` on the same samples (same length, depth, seed
    and key), per length (x depth): ``pairs``, ``only_a`` / ``only_b`` (right
    under one method only) and ``p``, the exact two-sided McNemar p-value
    (binomial on the discordant pairs): small ``p`` says the difference is not
    sampling noise."""
    by = defaultdict(dict)
    for r in rows:
        if r["method"] in (a, b):
            by[row_key(r)[1:]][r["method"]] = bool(r["correct"])
    cells = defaultdict(lambda: [0, 0, 0])
    for key, got in by.items():
        if len(got) == 2:
            cell = cells[key[:2] if by_depth else key[:1]]
            cell[0] += 1
            cell[1] += got[a] and not got[b]
            cell[2] += got[b] and not got[a]
    return [dict(zip(("length", "depth"), key), pairs=n, only_a=x, only_b=y,
                 p=mcnemar(x, y)) for key, (n, x, y) in sorted(cells.items())]
