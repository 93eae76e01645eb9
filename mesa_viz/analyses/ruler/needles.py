"""Where a RULER prompt's needles are, in the tokens the model read, and where a
method's layout cuts them (a Mesa chunk boundary inside a needle)."""

from __future__ import annotations

import bisect
import hashlib
import tempfile
from collections import defaultdict
from pathlib import Path

from ...methods import get_method
from .tasks import NEEDLE_TASKS, needle_chars

__all__ = ["needle_tokens", "needle_fields", "with_needles", "TARGET_DELIMITER",
           "tokenizer_name"]


def needle_tokens(char_spans, context: str, ids: list[int], tokenizer) -> list[list[int]]:
    """Token spans ``[start, stop)`` in ``ids`` (the prompt as the model
    reads it) of the character spans ``char_spans`` of ``context``: every
    token overlapping a span.  ``ids`` may start with special tokens the
    text has not (a BOS); ValueError when the rest is not ``context``'s
    tokenization, so a span is never placed on the wrong tokens."""
    enc = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    lead = len(ids) - len(enc["input_ids"])
    if lead < 0 or list(ids[lead:]) != list(enc["input_ids"]):
        raise ValueError(f"the prompt's {len(ids)} tokens are not its text's tokenization "
                         f"({len(enc['input_ids'])} tokens) after special tokens: cannot place "
                         "the needles")
    ends = [b for _, b in enc["offset_mapping"]]
    starts = [a for a, _ in enc["offset_mapping"]]
    return [[lead + bisect.bisect_right(ends, a), lead + bisect.bisect_left(starts, b)]
            for a, b in char_spans]


def needle_fields(task: str, context: str, targets, ids: list[int], tokenizer, method) -> dict:
    """``needle_spans`` (token spans of the needles holding the answers,
    :func:`.tasks.needle_chars`) and ``needle_cuts`` (the
    positions where ``method``, resolved for the ``len(ids)``-token prompt,
    cuts them: :meth:`~mesa_viz.methods.Method.span_cuts`); both None for a
    task without needles."""
    chars = needle_chars(task, context, targets)
    if chars is None:
        return dict(needle_spans=None, needle_cuts=None)
    spans = needle_tokens(chars, context, ids, tokenizer)
    resolved = method.resolve(len(ids), prefill_length=len(ids))
    return dict(needle_spans=spans,
                needle_cuts=sorted({i for a, b in spans for i in resolved.span_cuts(a, b)}))


#: What lm-eval puts between a RULER prompt's text and its ``gen_prefix``
#: (the tasks' ``target_delimiter``): the context is ``input + " " + gen_prefix``.
TARGET_DELIMITER = " "


def with_needles(rows: list[dict], tokenizer) -> list[dict]:
    """``rows`` of ``mesa-viz ruler`` written before the needle fields, with
    ``input_tokens``, ``needle_spans`` and ``needle_cuts`` added.  Each prompt
    is rebuilt by :func:`ruler_offline.sampled` (seeded by task and length),
    joined as lm-eval joins it (:data:`TARGET_DELIMITER`) and checked against
    the row's ``prompt_hash``; encoded with the tokenizer's defaults (as
    lm-eval's HF model does) and cut by the row's method at its ``params``
    and ``train_length``.  Tasks without needles get None (not rebuilt); rows
    that have the fields come back as they are.  ValueError when a rebuilt
    prompt is not the row's."""
    from .tasks import ruler_offline
    need = defaultdict(int)
    for r in rows:
        if "needle_cuts" not in r and r["task"] in NEEDLE_TASKS:
            key = (r["task"], int(r["length"]))
            need[key] = max(need[key], int(r["sample"]) + 1)
    with tempfile.TemporaryDirectory() as tmp:
        name = tokenizer_name(tokenizer, Path(tmp) / "ruler.jsonl")
        docs = {(t, L): ruler_offline.sampled(t, tokenizer=name, max_seq_lengths=[L],
                                              num_samples=n)["test"]
                for (t, L), n in need.items()}
    return [r if "needle_cuts" in r else _needles_of(r, docs, tokenizer) for r in rows]


def _needles_of(row: dict, docs: dict, tokenizer) -> dict:
    """One row of :func:`with_needles`."""
    if row["task"] not in NEEDLE_TASKS:
        return dict(row, needle_spans=None, needle_cuts=None)
    doc = docs[row["task"], int(row["length"])][int(row["sample"])]
    context = doc["input"] + TARGET_DELIMITER + doc["gen_prefix"]
    if hashlib.sha256(context.encode("utf-8")).hexdigest() != row.get("prompt_hash"):
        raise ValueError(f"the rebuilt prompt of {row['task']} at {row['length']} sample "
                         f"{row['sample']} is not the row's (prompt_hash differs): cannot place "
                         "its needles")
    ids = tokenizer(context)["input_ids"]
    method = get_method(row["method"], train_length=int(row["train_length"]),
                        **(row.get("params") or {}))
    return dict(row, input_tokens=len(ids),
                **needle_fields(row["task"], context, list(doc["outputs"]), ids, tokenizer, method))


def tokenizer_name(tokenizer, out: Path) -> str:
    """A path RULER's ``AutoTokenizer`` loads for ``tokenizer``: its own
    folder, or a copy saved next to ``out``."""
    name = str(getattr(tokenizer, "name_or_path", "") or "")
    if name and Path(name).is_dir():
        return name
    folder = out.with_name(out.stem + "_tokenizer")
    tokenizer.save_pretrained(folder)
    return str(folder)
