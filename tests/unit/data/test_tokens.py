"""The texts, the in-process tiny tokenizer and the needle share: pure code,
no model, no network."""

from __future__ import annotations

import numpy as np
import pytest

from mesa_viz.data import FILLER, TEXTS, repeat_tokens
from mesa_viz.models import tiny_tokenizer
from mesa_viz.runtime import needle_share


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_tiny_tokenizer_is_deterministic_and_complete(tok):
    again = tiny_tokenizer()
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    assert len(tok) == 512                                   # the tiny models' vocabulary
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3


@pytest.mark.parametrize("text", [*TEXTS, " 71432.", "naïve café, 中文 & emoji 🙂\n\ttabs",
                                  "Unseen words: xylophone quartz"])
def test_tiny_tokenizer_round_trips_any_text(tok, text):
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and max(ids) < len(tok)
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok(text, add_special_tokens=False)["input_ids"] == ids[1:]


def test_tiny_tokenizer_learned_the_texts(tok):
    """Trained on the filler: its words are single tokens, not bytes."""
    ids = tok(" " + FILLER, add_special_tokens=False)["input_ids"]
    assert len(ids) <= len(FILLER.split()) + FILLER.count(".") + 1


@pytest.mark.parametrize("n", [0, 1, 7, 100, 1001])
def test_repeat_tokens_has_exact_length_and_repeats_the_unit(tok, n):
    unit = tok(" " + FILLER, add_special_tokens=False)["input_ids"]
    ids = repeat_tokens(tok, " " + FILLER, n)
    assert len(ids) == n and ids == [unit[k % len(unit)] for k in range(n)]


def test_repeat_tokens_refuses_bad_input(tok):
    with pytest.raises(ValueError, match="n=-1"):
        repeat_tokens(tok, FILLER, -1)
    with pytest.raises(ValueError, match="no tokens"):
        repeat_tokens(tok, "", 5)


def test_needle_share_sums_the_span_over_the_last_axis():
    rng = np.random.default_rng(0)
    attn = rng.random((2, 3, 4, 10))                        # [layer, head, q_row, k_pos]
    share = needle_share(attn, (2, 5))
    assert share.shape == (2, 3, 4)
    np.testing.assert_allclose(share, attn[..., 2:5].sum(-1))
    row = attn[1, 2, 3]
    assert needle_share(row, (0, 10)) == pytest.approx(row.sum())
    assert isinstance(needle_share(row, (9, 10)), float)
    for bad in ((5, 5), (-1, 3), (3, 11)):
        with pytest.raises(ValueError, match="needle="):
            needle_share(row, bad)
