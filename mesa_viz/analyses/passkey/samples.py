"""Passkey samples: prompts of an exact token length with the needle "The pass key is
71432. Remember it. 71432 is the pass key." at a fractional ``depth`` of a haystack
of the classic filler, ending with the plain completion prompt "What is the pass
key? The pass key is" (not the chat template: small instruct models chatter under
it).  Prompts are assembled token by token, so ``input_ids`` has exactly
``length`` tokens.

As the field runs it (LongLoRA, Landmark, the Mesa authors' data script), every
sample draws its own key and filler offset from one RNG seeded by its ``seed``
(the sample index) and depth; the same seeds serve every method and length, so
methods are compared on the same samples.
"""

from __future__ import annotations

import random
import re

from ...data import (FILLER, PASSKEY_INTRO, PASSKEY_NEEDLE, PASSKEY_QUESTION, leading_special,
                     repeat_tokens)
from ...runs.jsonl import read_jsonl

__all__ = ["make_sample", "parse_answer", "read_samples", "draws", "passkey_of", "check_depth",
           "DEPTHS"]


_KEY_RE = re.compile(r"(?<!\d)\d{5}(?!\d)")


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
    check_depth(depth)
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


def check_depth(depth) -> None:
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


#: Needle depths when none are given.
DEPTHS = (0.1, 0.5, 0.9)
