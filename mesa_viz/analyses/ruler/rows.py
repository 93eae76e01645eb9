"""RULER rows: one per method, task, length and sample: ``method, task, length,
sample, score, prediction, target, prompt_tokens, prompt_hash, input_tokens,
needle_spans, needle_cuts, params, train_length, train_length_from, model``; whether a layout cut a
row's needle, and the mean score per method x length (x task)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from ..passkey.rows import needle_cuts

__all__ = ["needle_cuts", "summary", "task_rows", "row_key", "ROW_FIELDS"]

#: The fields of a RULER row (``mesa-viz ruler``).
ROW_FIELDS = ("method", "task", "length", "sample", "score", "prediction", "target",
              "prompt_tokens", "prompt_hash", "input_tokens", "needle_spans", "needle_cuts",
              "params", "train_length", "train_length_from", "model")


def row_key(row: dict) -> tuple:
    """The resume key of a RULER row: method, task, length, sample."""
    return row["method"], row["task"], int(row["length"]), int(row["sample"])


def summary(rows, by_task: bool = False) -> list[dict]:
    """Mean score per method x length (x task with ``by_task``; else every
    task weighted equally) from per-sample rows (``method, task, length,
    score``): ``method, [task,] length, n, score, needles_cut``, methods in
    first-seen order; ``needles_cut``: the samples whose needle the layout
    cut (their :func:`~..passkey.rows.needle_cuts` not empty), None where no
    row of the cell says."""
    cells = defaultdict(lambda: defaultdict(list))
    cuts = defaultdict(list)
    order = list(dict.fromkeys(r["method"] for r in rows))
    for r in rows:
        key = (r["method"], r["task"], r["length"]) if by_task else (r["method"], r["length"])
        cells[key][r["task"]].append(float(r["score"]))
        cut = needle_cuts(r)
        cuts[key].append(None if cut is None else bool(cut))
    out = []
    for key in sorted(cells, key=lambda k: (order.index(k[0]), *k[1:])):
        per_task = [sum(v) / len(v) for v in cells[key].values()]
        names = ("method", "task", "length") if by_task else ("method", "length")
        known = [c for c in cuts[key] if c is not None]
        out.append(dict(zip(names, key), n=sum(len(v) for v in cells[key].values()),
                        score=sum(per_task) / len(per_task),
                        needles_cut=sum(known) if known else None))
    return out


def task_rows(samples: list[dict], method: str, task: str, extra: dict,
              needles: "Callable[[str, list[str]], dict] | None" = None) -> list[dict]:
    """Our rows from lm-eval's logged samples of one RULER task: ``method,
    task, length, sample, score, prediction, target, prompt_tokens,
    prompt_hash`` (``prompt_tokens``: RULER's count), the fields
    ``needles(context, targets)`` gives (``input_tokens``, the prompt's
    tokens as the model read them, and :func:`needle_fields`), plus
    ``extra``."""
    rows = []
    for s in samples:
        doc, length = s["doc"], int(s["doc"]["max_length"])
        found = needles(s["arguments"][0][0], list(doc["outputs"])) if needles else {}
        rows.append(dict(method=method, task=task, length=length, sample=int(doc["index"]),
                         score=float(s[str(length)]), prediction=s["filtered_resps"][0],
                         target=list(doc["outputs"]), prompt_tokens=int(doc["length"]),
                         prompt_hash=s.get("prompt_hash"), **found, **extra))
    return rows
