"""The README's API tour stays true: every ``mv.NAME`` (and ``mv.MODULE.NAME``) its
code blocks use, and every name they import from mesa_viz (and the vLLM plugin,
mesa_viz_vllm), exists; its command
lines name real ``mesa-viz`` commands and ``make`` targets; and it stays a front
page (about 200 lines, no test counts at a commit)."""

from __future__ import annotations

import ast
import importlib
import re

import sys

import mesa_viz
from mesa_viz.cli import ALIASES, SUBCOMMANDS
from repo import ROOT

README = (ROOT / "README.md").read_text()
sys.path.insert(0, str(ROOT / "vllm_plugin"))   # mesa_viz_vllm imports without vLLM


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def _attribute_chains(tree) -> set[tuple[str, ...]]:
    """``mv.a.b`` -> ``("a", "b")`` for every attribute chain on ``mv``."""
    chains = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, cur = [], node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == "mv":
                chains.add(tuple(reversed(parts)))
    return chains


def test_every_name_of_the_api_tour_exists():
    blocks = _python_blocks()
    assert len(blocks) >= 2
    missing = []
    for block in blocks:
        tree = ast.parse(block)
        for chain in _attribute_chains(tree):
            obj = mesa_viz
            for k, part in enumerate(chain[:2]):
                if not hasattr(obj, part):
                    missing.append("mv." + ".".join(chain[:k + 1]))
                    break
                obj = getattr(obj, part)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mesa_viz"):
                module = importlib.import_module(node.module)
                missing += [f"{node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name)]
    assert not missing, missing


def test_the_commands_it_shows_exist():
    commands = set(re.findall(r"mesa-viz ([a-z-]+)", README))
    assert commands and commands <= set(SUBCOMMANDS) | set(ALIASES), commands
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z -]*):", makefile, flags=re.M))
    targets = {t for line in targets for t in line.split()}
    shown = set(re.findall(r"`make ([a-z-]+)`", README)) | set(
        re.findall(r"^make ([a-z-]+)", README, flags=re.M))
    assert {"demo", "test"} <= shown and shown <= targets, shown - targets


def test_it_stays_a_front_page():
    lines = README.splitlines()
    assert len(lines) <= 220, len(lines)
    assert not re.search(r"\b\d[\d,]* (passed|tests? pass)", README), "test counts in the README"


def test_the_tests_the_docs_name_exist():
    """A test the docs name as the guard of a bug (``tests/...py::test_name``)
    exists under that name."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            *sorted((ROOT / "benchmarks").glob("*/README.md"))]
    missing = []
    for doc in docs:
        text = doc.read_text()
        for path, names in re.findall(r"`(tests/[\w/]+\.py)((?:::\w+)?)", text):
            file = ROOT / path
            if not file.is_file():
                missing.append(f"{doc.name}: {path}")
            elif names and f"def {names[2:]}(" not in file.read_text():
                missing.append(f"{doc.name}: {path}{names}")
        for follow in re.findall(r"`(tests/[\w/]+\.py)::\w+`((?:, `::\w+`)+)", text):
            path, rest = follow
            body = (ROOT / path).read_text() if (ROOT / path).is_file() else ""
            missing += [f"{doc.name}: {path}::{n}" for n in re.findall(r"::(\w+)", rest)
                        if f"def {n}(" not in body]
    assert not missing, missing
