"""Texts the analyses run on, each written once.

``FILLER`` is the classic passkey haystack (Mohtashami & Jaggi, 2023), also
the plain text the hidden-state threshold finder traces.  The passkey prompt's
fixed parts are here too, and :func:`repeat_tokens` turns a text into exactly
``n`` tokens.  No torch, no transformers.
"""

from __future__ import annotations

__all__ = ["FILLER", "PASSKEY_INTRO", "PASSKEY_NEEDLE", "PASSKEY_QUESTION", "TEXTS",
           "repeat_tokens"]

#: The haystack sentence, repeated as long as needed.
FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
          "There and back again.")
#: The passkey prompt: intro, haystack with the needle inside, question.
PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it "
                 "and memorize it. I will quiz you about the important information there.\n")
PASSKEY_NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = "\nWhat is the pass key? The pass key is"
#: Every text above (what :func:`mesa_viz.models.tiny_tokenizer` is trained on).
TEXTS = (FILLER, PASSKEY_INTRO, PASSKEY_NEEDLE, PASSKEY_QUESTION)


def repeat_tokens(tokenizer, text: str, n: int) -> list[int]:
    """``n`` token ids of ``text`` repeated (no special tokens), cut at a
    token boundary: the ids of ``text`` are repeated, so the seams never merge."""
    if n < 0:
        raise ValueError(f"n={n}: allowed a token count >= 0")
    unit = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not unit:
        raise ValueError(f"text={text!r} has no tokens: allowed a non-empty text")
    return (unit * (n // len(unit) + 1))[:n]
