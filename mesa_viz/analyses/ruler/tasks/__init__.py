"""Which RULER tasks of lm-eval run offline, and task files for those that need
the Hugging Face hub in lm-eval (no lm-eval import here).

lm-eval 0.4.13 builds six RULER tasks offline from a tokenizer alone
(:data:`STOCK_OFFLINE`).  Its multi-key-1, multi-value and multi-query
needle tasks hide their needles in Paul Graham's essays, a hub dataset; this
folder ships them as variants on RULER's synthetic "repeat" haystack
(:data:`VARIANTS`, lm-eval task YAMLs calling lm-eval's own generator, see
``ruler_offline.py``): use it as ``lm_eval --include_path TASK_DIR``.
:func:`check_tasks` refuses the hub-only tasks (:data:`HUB_ONLY`).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["TASK_DIR", "GROUP", "STOCK_OFFLINE", "VARIANTS", "OFFLINE_TASKS", "HUB_ONLY",
           "NEEDLE_TASKS", "check_tasks", "needle_chars"]

#: The folder to pass as lm-eval's ``--include_path``.
TASK_DIR = Path(__file__).resolve().parent
#: The group of every offline task (stock and variants).
GROUP = "ruler_offline"
#: lm-eval's RULER tasks whose data is made offline from a tokenizer.
STOCK_OFFLINE = ("niah_single_1", "niah_multikey_2", "niah_multikey_3", "ruler_vt",
                 "ruler_cwe", "ruler_fwe")
#: Offline variant -> the RULER task it stands for (synthetic haystack, not essays).
VARIANTS = {"niah_multikey_1_noise": "niah_multikey_1",
            "niah_multivalue_noise": "niah_multivalue",
            "niah_multiquery_noise": "niah_multiquery"}
#: Every task :func:`check_tasks` allows, in the order runs use.
OFFLINE_TASKS = STOCK_OFFLINE[:3] + tuple(VARIANTS) + STOCK_OFFLINE[3:]

_ESSAYS = "Paul Graham's essays (Hugging Face dataset baber/paul_graham_essays)"
#: RULER tasks of lm-eval 0.4.13 that download their data -> what they download.
HUB_ONLY = {
    "niah_single_2": _ESSAYS, "niah_single_3": _ESSAYS, "niah_multikey_1": _ESSAYS,
    "niah_multivalue": _ESSAYS, "niah_multiquery": _ESSAYS,
    "ruler_qa_squad": "SQuAD v2 dev JSON from rajpurkar.github.io",
    "ruler_qa_hotpot": "HotpotQA dev JSON from huggingface.co",
    "ruler": "7 of its 13 tasks (the group)",
}


#: Tasks whose answers sit in needles of the haystack (:func:`needle_chars`):
#: the needle tasks (a line ``One of the special magic ... is: VALUE.`` per
#: asked value) and variable tracking (a statement ``VAR NAME = ...`` per
#: variable of the chain).  The common- and frequent-words tasks have none.
NEEDLE_TASKS = OFFLINE_TASKS[:6] + ("ruler_vt",)


def needle_chars(task: str, context: str, targets) -> list[tuple[int, int]] | None:
    """Character spans ``[start, stop)`` of the needles holding the answers
    ``targets`` in a RULER prompt ``context``, in text order; None for a task
    without needles.  Needle tasks: the line of each asked value; variable
    tracking: each target variable's assignment ``VAR NAME = VAR OTHER`` or
    ``VAR NAME = VALUE``.  ValueError when an answer is not found where the
    task puts it (a prompt this rule does not describe)."""
    if task not in OFFLINE_TASKS:
        raise ValueError(f"task {task!r}: allowed {list(OFFLINE_TASKS)}")
    if task not in NEEDLE_TASKS:
        return None
    spans = []
    for target in targets:
        spans += _vt_statement(context, target) if task == "ruler_vt" \
            else _needle_line(context, target)
    return sorted(set(spans))


def _needle_line(context: str, value: str) -> list[tuple[int, int]]:
    """The line ``One of the special magic ... is: value.`` (without its newline)."""
    found = [(context.rfind("\n", 0, m.start()) + 1, m.end()) for m in re.finditer(
        r"One of the special magic [^\n]* is: " + re.escape(value) + r"\.", context)]
    if not found:
        raise ValueError(f"no needle line with the answer {value!r} in the prompt")
    return found


def _vt_statement(context: str, name: str) -> list[tuple[int, int]]:
    """The assignment ``VAR name = VAR OTHER`` or ``VAR name = 12345``."""
    found = [m.span() for m in re.finditer(r"VAR " + re.escape(name) + r" = (?:VAR [A-Z]+|\d+)",
                                           context)]
    if not found:
        raise ValueError(f"no assignment of the variable {name!r} in the prompt")
    return found


def check_tasks(tasks) -> list[str]:
    """``tasks`` (names, or the group :data:`GROUP`) as a list of offline
    task names; ValueError naming a hub-only or unknown task and the allowed."""
    names = [tasks] if isinstance(tasks, str) else list(tasks or ())
    if not names:
        raise ValueError(f"tasks is empty: allowed {GROUP!r} or some of {list(OFFLINE_TASKS)}")
    out: list[str] = []
    for name in names:
        if name in HUB_ONLY:
            alt = f" (offline variant: {_variant_of(name)})" if _variant_of(name) else ""
            raise ValueError(f"task {name!r} needs the network: it downloads {HUB_ONLY[name]}"
                             f"{alt}; allowed offline: {GROUP!r} or {list(OFFLINE_TASKS)}")
        if name != GROUP and name not in OFFLINE_TASKS:
            raise ValueError(f"unknown task {name!r}: allowed {GROUP!r} or "
                             f"{list(OFFLINE_TASKS)}")
        out += list(OFFLINE_TASKS) if name == GROUP else [name]
    return list(dict.fromkeys(out))


def _variant_of(task: str) -> str | None:
    return next((v for v, t in VARIANTS.items() if t == task), None)
