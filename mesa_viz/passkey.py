"""Passkey retrieval: prompts of an exact token length, the evaluation loop
and its streamed, resumable results.

A sample hides the needle "The pass key is 71432. Remember it. 71432 is the
pass key." at a fractional ``depth`` of a haystack of the classic filler and
ends with the plain completion prompt "What is the pass key? The pass key is"
(not the chat template: small instruct models chatter under it).  Prompts are
assembled token by token, so ``input_ids`` has exactly ``length`` tokens.

:func:`evaluate` appends one JSON line per sample to ``out`` as it finishes
and yields it; a rerun skips the rows already there (keyed by method, length,
depth, seed).
"""

from __future__ import annotations

import logging
import numbers
import random
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from .data import FILLER, PASSKEY_INTRO, PASSKEY_NEEDLE, PASSKEY_QUESTION, repeat_tokens
from .checks import check_lengths, check_methods
from .results import append_jsonl, read_jsonl

__all__ = ["make_sample", "parse_answer", "evaluate", "check_grid", "summary", "format_table",
           "read_samples", "passkey_of", "RESULTS_FILE", "DEPTHS"]

log = logging.getLogger(__name__)

#: The file name ``mesa-viz passkey`` writes in its output folder.
RESULTS_FILE = "passkey.jsonl"
#: Needle depths when none are given.
DEPTHS = (0.1, 0.5, 0.9)
_KEY_RE = re.compile(r"(?<!\d)\d{5}(?!\d)")


# -- samples -----------------------------------------------------------------------

def passkey_of(seed: int) -> int:
    """The 5-digit pass key of ``seed``."""
    return random.Random(int(seed)).randint(10000, 99999)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _leading_special(tokenizer) -> list[int]:
    """The BOS token the tokenizer puts first by default, if it does."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if bos is not None and ids[:1] == [bos] else []


def _filler(tokenizer, n: int) -> list[int]:
    """``n`` tokens of the haystack (sentences after a space)."""
    return repeat_tokens(tokenizer, " " + FILLER, n)


def make_sample(tokenizer, length: int, depth: float, seed: int) -> dict:
    """A passkey prompt of exactly ``length`` tokens with the needle at
    fractional ``depth`` (0: first, 1: last) of the haystack.

    Returns ``prompt, input_ids, passkey, needle_span (start, stop), length,
    depth, seed``.
    """
    _check_depth(depth)
    key = passkey_of(seed)
    head = _leading_special(tokenizer) + _encode(tokenizer, PASSKEY_INTRO)
    needle = _encode(tokenizer, PASSKEY_NEEDLE.format(key=key))
    tail = _encode(tokenizer, PASSKEY_QUESTION)
    room = int(length) - len(head) - len(needle) - len(tail)
    if room < 0:
        raise ValueError(f"length={length} is too short for a passkey prompt: allowed "
                         f">= {length - room} tokens with this tokenizer")
    before = round(depth * room)
    # the haystack after the needle restarts at a sentence, so no token merges
    # across the seams and the prompt re-encodes to the same ids
    ids = (head + _filler(tokenizer, before) + needle + _filler(tokenizer, room - before)
           + tail)
    start = len(head) + before
    return dict(prompt=tokenizer.decode(ids, skip_special_tokens=True), input_ids=ids,
                passkey=key, needle_span=[start, start + len(needle)], length=int(length),
                depth=float(depth), seed=int(seed))


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
    """The resume key of a result row (or of a sample under ``method``)."""
    return (method or row["method"], int(row["length"]), float(row["depth"]), int(row["seed"]))


def _fits(model, method: str, params: dict, length: int, max_new_tokens: int) -> bool:
    """False (with a warning) when ``mesa_viz.memory`` predicts the point
    cannot fit; the refusal names the estimate."""
    from .memory import LengthTooLong, check_fits
    try:
        check_fits(model, method, length, params=params, decode_tokens=max_new_tokens)
    except LengthTooLong as err:
        log.warning("skipping %s at length %d: %s", method, length, err)
        return False
    return True


def _generate(model, tokenizer, sample, method, params, max_new_tokens) -> tuple[str, dict, float]:
    """Greedy answer under ``method``: (text, resolved params, seconds)."""
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
    return text, resolved.params(), seconds


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
    with tqdm(total=len(methods) * len(todo), desc="passkey", unit="sample") as bar:
        for length in sorted({s["length"] for s in todo}):
            here = [s for s in todo if s["length"] == length]
            for method in methods:
                params = method_params.get(method, {})
                fresh = [s for s in here if _key(s, method) not in done]
                if fresh and not _fits(model, method, params, length, max_new_tokens):
                    bar.update(len(here))
                    continue
                for s in here:
                    key = _key(s, method)
                    if key not in done:
                        done[key] = _run_one(model, tokenizer, s, method, params,
                                             max_new_tokens, name, out)
                    bar.update(1)
                    yield done[key]


def _run_one(model, tokenizer, sample, method, params, max_new_tokens, name, path) -> dict:
    """Answer one sample, append its row to ``path`` and return it."""
    text, resolved, seconds = _generate(model, tokenizer, sample, method, params, max_new_tokens)
    got = parse_answer(text)
    row = dict(method=method, length=int(sample["length"]), depth=float(sample["depth"]),
               seed=int(sample["seed"]), expected=int(sample["passkey"]), answer=got,
               correct=got == int(sample["passkey"]), text=text, seconds=round(seconds, 4),
               params=resolved, model=name)
    append_jsonl(path, row)
    log.debug("%s L=%d depth=%g seed=%d: %r (%s)", method, row["length"], row["depth"],
              row["seed"], text, "ok" if row["correct"] else "wrong")
    return row


def summary(rows, by_depth: bool = False) -> list[dict]:
    """Accuracy per method x length (x depth with ``by_depth``), in first-seen
    method order, then by length and depth: ``method, length, [depth,] n,
    correct, accuracy``."""
    groups = defaultdict(list)
    order = list(dict.fromkeys(r["method"] for r in rows))
    for r in rows:
        key = (r["method"], r["length"]) + ((r["depth"],) if by_depth else ())
        groups[key].append(bool(r["correct"]))
    out = []
    for key in sorted(groups, key=lambda k: (order.index(k[0]), *k[1:])):
        hits = groups[key]
        out.append(dict(zip(("method", "length", "depth"), key), n=len(hits),
                        correct=sum(hits), accuracy=sum(hits) / len(hits)))
    return out


def format_table(table: list[dict]) -> str:
    """A plain-text table of ``summary`` rows."""
    if not table:
        return "(no rows)"
    cols = list(table[0])
    cells = [[f"{r[c]:.0%}" if c == "accuracy" else f"{r[c]:g}" if isinstance(r[c], float)
              else str(r[c]) for c in cols] for r in table]
    width = [max(len(c), *(len(row[k]) for row in cells)) for k, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, width))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, width)) for row in cells]
    return "\n".join(lines)
