"""Passkey retrieval: prompts of an exact token length, the evaluation loop
and its streamed, resumable results.

A sample hides the needle "The pass key is 71432. Remember it. 71432 is the
pass key." at a fractional ``depth`` of a haystack of the classic filler and
ends with the plain completion prompt "What is the pass key? The pass key is"
(not the chat template: small instruct models chatter under it).  Prompts are
assembled token by token, so ``input_ids`` has exactly ``length`` tokens.

As the field runs it (LongLoRA, Landmark, the Mesa authors' data script),
every sample draws its own key and filler offset from one RNG seeded by its
``seed`` (the sample index) and depth; the same seeds serve every method and
length, so methods are compared on the same samples (:func:`compare`).

:func:`evaluate` appends one JSON line per sample to ``out`` as it finishes
and yields it; a rerun skips the rows already there (keyed by method, length,
depth, seed and key).  :func:`summary` gives accuracy with its sample count
and 95 % Wilson interval.  Each row records ``needle_cuts``, where the method's
layout cuts the needle (a Mesa middle chunk starting inside it, so the rest of
the needle reads without its first words; :meth:`Method.span_cuts`), and the
summary counts those samples: a cell that fails exactly where its needles are
cut has its cause named.
"""

from __future__ import annotations

import logging
import math
import numbers
import random
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from .data import (FILLER, PASSKEY_INTRO, PASSKEY_NEEDLE, PASSKEY_QUESTION, leading_special,
                   repeat_tokens)
from .checks import check_lengths, check_methods, fits
from .methods import METHODS, get_method
from .results import append_jsonl, format_table, read_jsonl, wilson_interval

__all__ = ["make_sample", "parse_answer", "evaluate", "check_grid", "summary", "format_table",
           "compare", "read_samples", "draws", "passkey_of", "RESULTS_FILE", "DEPTHS"]

log = logging.getLogger(__name__)

#: The file name ``mesa-viz passkey`` writes in its output folder.
RESULTS_FILE = "passkey.jsonl"
#: Needle depths when none are given.
DEPTHS = (0.1, 0.5, 0.9)
_KEY_RE = re.compile(r"(?<!\d)\d{5}(?!\d)")


# -- samples -----------------------------------------------------------------------

def draws(seed: int, depth: float) -> tuple[int, float]:
    """``(passkey, filler_phase)`` of sample ``seed`` at ``depth``: a 5-digit
    key and a phase in [0, 1) of the filler's cycle, from one RNG seeded by
    both (so the depths of one seed differ; every length shares them)."""
    rng = random.Random(f"passkey:{int(seed)}:{float(depth)!r}")
    return rng.randint(10000, 99999), rng.random()


def passkey_of(seed: int, depth: float = 0.5) -> int:
    """The 5-digit pass key of sample ``seed`` at ``depth``."""
    return draws(seed, depth)[0]


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _filler(tokenizer, n: int, offset: int = 0) -> list[int]:
    """``n`` tokens of the haystack (sentences after a space), starting
    ``offset`` tokens into its cycle."""
    return repeat_tokens(tokenizer, " " + FILLER, n + offset)[offset:]


def make_sample(tokenizer, length: int, depth: float, seed: int) -> dict:
    """A passkey prompt of exactly ``length`` tokens with the needle at
    fractional ``depth`` (0: first, 1: last) of the haystack.

    The key and the filler's starting token (``filler_offset``, within its
    cycle) come from :func:`draws`.  Returns ``prompt, input_ids, passkey,
    needle_span (start, stop), filler_offset, length, depth, seed``.
    """
    _check_depth(depth)
    key, phase = draws(seed, depth)
    offset = int(phase * len(_encode(tokenizer, " " + FILLER)))
    head = leading_special(tokenizer) + _encode(tokenizer, PASSKEY_INTRO)
    needle = _encode(tokenizer, PASSKEY_NEEDLE.format(key=key))
    tail = _encode(tokenizer, PASSKEY_QUESTION)
    room = int(length) - len(head) - len(needle) - len(tail)
    if room < 0:
        raise ValueError(f"length={length} is too short for a passkey prompt: allowed "
                         f">= {length - room} tokens with this tokenizer")
    before = round(depth * room)
    # the haystack after the needle restarts at a sentence, so no token merges
    # across the seams and the prompt re-encodes to the same ids
    ids = (head + _filler(tokenizer, before, offset) + needle
           + _filler(tokenizer, room - before) + tail)
    start = len(head) + before
    return dict(prompt=tokenizer.decode(ids, skip_special_tokens=True), input_ids=ids,
                passkey=key, needle_span=[start, start + len(needle)], filler_offset=offset,
                length=int(length), depth=float(depth), seed=int(seed))


def _check_depth(depth) -> None:
    if not isinstance(depth, (int, float)) or not 0 <= depth <= 1:
        raise ValueError(f"depth={depth!r} is out of range: allowed a number in [0, 1]")


def parse_answer(text: str) -> int | None:
    """The first 5-digit number in ``text`` (``None`` if there is none)."""
    match = _KEY_RE.search(text or "")
    return int(match.group()) if match else None


def read_samples(path) -> list[dict]:
    """Samples written by ``datas/make_passkey_data.py`` (JSON lines)."""
    samples = read_jsonl(path)
    if not samples:
        raise ValueError(f"no samples in {path}")
    for k, s in enumerate(samples):
        missing = [f for f in ("input_ids", "passkey", "length", "depth", "seed") if f not in s]
        if missing:
            raise ValueError(f"{path}: sample {k} lacks {missing}")
    return samples


# -- evaluation --------------------------------------------------------------------

def check_grid(methods, lengths, depths, method_params: dict | None = None) -> None:
    """Raise ValueError for a grid :func:`evaluate` would refuse (no model needed)."""
    check_methods(methods, method_params)
    if lengths is not None:
        check_lengths(lengths)
    if depths is not None and not depths:
        raise ValueError("depths is empty: allowed a non-empty list of numbers in [0, 1]")
    for d in depths or ():
        _check_depth(d)


def _samples_for(tokenizer, samples, lengths, depths) -> list[dict]:
    """Samples to run: generated (``samples`` an int: seeds 0..samples-1 per
    length x depth) or given (a list of sample dicts, filtered to the grid)."""
    if isinstance(samples, numbers.Integral):
        if samples < 1 or not lengths:
            raise ValueError(f"samples={samples!r} with lengths={lengths!r}: allowed samples "
                             ">= 1 with lengths given (or a list of sample dicts)")
        return [make_sample(tokenizer, L, d, s) for L in lengths
                for d in (DEPTHS if depths is None else depths) for s in range(samples)]
    out = [s for s in samples if (lengths is None or s["length"] in lengths)
           and (depths is None or s["depth"] in depths)]
    if not out:
        raise ValueError(f"no given samples match lengths={lengths} depths={depths}")
    return out


def _key(row, method: str | None = None) -> tuple:
    """The resume key of a result row (or of a sample under ``method``): a
    row counts only for the sample whose key it was asked."""
    key = row["expected"] if method is None else row["passkey"]
    return (method or row["method"], int(row["length"]), float(row["depth"]), int(row["seed"]),
            int(key))


def _generate(model, tokenizer, sample, method, params, max_new_tokens):
    """Greedy answer under ``method``: (text, the resolved method, seconds)."""
    import torch

    from .application import apply

    ids = torch.tensor([sample["input_ids"]], device=model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    t0 = time.perf_counter()
    with torch.inference_mode(), apply(model, method, **params) as state:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad)
    seconds = time.perf_counter() - t0
    resolved = state.resolved or state.method.resolve(ids.shape[1], state.train_length)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return text, resolved, seconds


def _model_name(model) -> str:
    return str(getattr(model.config, "_name_or_path", "") or type(model).__name__)


def evaluate(model, tokenizer, *, methods, lengths=None, depths=None, samples=1,
             out: "str | Path", method_params: dict | None = None,
             max_new_tokens: int = 8) -> Iterator[dict]:
    """Passkey answers for every method x length x depth x sample, streamed.

    ``samples``: an int (seeds ``0..samples-1`` per length x depth, prompts
    made here; ``depths`` default :data:`DEPTHS`) or a list of sample dicts
    (:func:`read_samples`; ``lengths``/``depths`` ``None`` take them all).
    ``method_params``: ``{method: {param: value}}``.  ``out``: the ``.jsonl``
    file each row is appended to as it finishes; rows already there are not
    run again.  Checks the grid now and returns an iterator yielding the
    grid's rows (old and new) in order, lengths first, with a tqdm progress
    bar; a length that :mod:`mesa_viz.memory` predicts will not fit is
    skipped with a warning.
    """
    method_params = dict(method_params or {})
    methods = list(methods)
    check_grid(methods, lengths, depths, method_params)
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"out={str(out)!r} is a folder: allowed a .jsonl file path "
                         f"(e.g. {out / RESULTS_FILE})")
    todo = _samples_for(tokenizer, samples, lengths, depths)
    return _stream(model, tokenizer, methods, todo, out, method_params, max_new_tokens)


def _stream(model, tokenizer, methods, todo, out, method_params, max_new_tokens):
    from tqdm.auto import tqdm

    done = {_key(r): r for r in read_jsonl(out)}
    name = _model_name(model)
    others = {str(r.get("model")) for r in done.values()} - {name}
    if others:
        log.warning("%s holds rows of other models %s: they count as done too", out,
                    sorted(others))
    _warn_other_keys(out, done, methods, todo)
    with tqdm(total=len(methods) * len(todo), desc="passkey", unit="sample") as bar:
        for length in sorted({s["length"] for s in todo}):
            here = [s for s in todo if s["length"] == length]
            for method in methods:
                params = method_params.get(method, {})
                fresh = [s for s in here if _key(s, method) not in done]
                if fresh and not fits(model, method, length, params, max_new_tokens):
                    bar.update(len(here))
                    continue
                for s in here:
                    key = _key(s, method)
                    if key not in done:
                        done[key] = _run_one(model, tokenizer, s, method, params,
                                             max_new_tokens, name, out)
                    bar.update(1)
                    yield done[key]


def _warn_other_keys(out, done: dict, methods, todo) -> None:
    """Say so when ``out`` holds rows for these samples asked with other keys
    (another sampler, e.g. before keys were drawn per depth): kept, not reused."""
    asked = {k[:4] for k in (_key(s, m) for s in todo for m in methods)}
    mine = {k for s in todo for k in (_key(s, m) for m in methods)}
    stale = [k for k in done if k[:4] in asked and k not in mine]
    if stale:
        log.warning("%s holds %d rows of these samples asked with other keys (an older "
                    "sampler): they stay in the file but are run again", out, len(stale))


def _run_one(model, tokenizer, sample, method, params, max_new_tokens, name, path) -> dict:
    """Answer one sample, append its row to ``path`` and return it."""
    text, resolved, seconds = _generate(model, tokenizer, sample, method, params, max_new_tokens)
    got, span = parse_answer(text), sample.get("needle_span")
    row = dict(method=method, length=int(sample["length"]), depth=float(sample["depth"]),
               seed=int(sample["seed"]), expected=int(sample["passkey"]), answer=got,
               correct=got == int(sample["passkey"]), needle_span=span,
               needle_cuts=None if span is None else list(resolved.span_cuts(*span)),
               filler_offset=sample.get("filler_offset"), text=text,
               seconds=round(seconds, 4), params=resolved.params(), model=name)
    append_jsonl(path, row)
    log.debug("%s L=%d depth=%g seed=%d: %r (%s)", method, row["length"], row["depth"],
              row["seed"], text, "ok" if row["correct"] else "wrong")
    return row


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
    ``needle_cut``, the samples whose needle the layout cut
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
                        needle_cut=sum(cut for _, cut in groups[key])))
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
            by[_key(r)[1:]][r["method"]] = bool(r["correct"])
    cells = defaultdict(lambda: [0, 0, 0])
    for key, got in by.items():
        if len(got) == 2:
            cell = cells[key[:2] if by_depth else key[:1]]
            cell[0] += 1
            cell[1] += got[a] and not got[b]
            cell[2] += got[b] and not got[a]
    return [dict(zip(("length", "depth"), key), pairs=n, only_a=x, only_b=y,
                 p=_mcnemar(x, y)) for key, (n, x, y) in sorted(cells.items())]


def _mcnemar(x: int, y: int) -> float:
    """Exact two-sided McNemar p-value for ``x`` and ``y`` discordant pairs."""
    n = x + y
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(x, y) + 1)) / 2 ** n
    return min(1.0, 2 * tail)
