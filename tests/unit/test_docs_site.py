"""The documentation site: README.md, docs/ and every benchmarks/<study>/README.md build into one
offline mkdocs site (scripts/build_docs.py), and a dead link fails the build naming its file,
line and target."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "build_docs.py"
#: Top-level entries the site never links to (environments, outputs, history).
NOT_SOURCES = {".git", ".venv", "venv", "build", "site", "runs", "out", ".whl", "node_modules",
               ".pytest_cache", ".ipynb_checkpoints"}

pytest.importorskip("mkdocs", reason="the docs extra (mkdocs, mkdocs-material) is not installed")
pytest.importorskip("material", reason="the docs extra (mkdocs-material) is not installed")


def build(root: Path, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root), "--out", str(tmp / "site"),
         "--staging", str(tmp / "stage")],
        capture_output=True, text=True, timeout=600)


def copy_sources(dest: Path) -> Path:
    """The repository's sources (no environments, outputs or history) under ``dest``."""
    def ignore(folder, names):
        skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        if Path(folder).resolve() == ROOT:
            skip |= {n for n in names if n in NOT_SOURCES}
        if Path(folder).resolve() == ROOT / "tests":
            skip |= {"artifacts"}
        return skip
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def test_the_site_builds_with_the_home_page_docs_and_every_study(tmp_path):
    done = build(ROOT, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    site = tmp_path / "site"
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "mesa_viz" in home
    assert 'href="docs/architecture.html"' in home          # README's links, rewritten
    assert (site / "docs" / "architecture.html").is_file()
    studies = sorted(p.parent.name for p in (ROOT / "benchmarks").glob("*/README.md"))
    assert "gpu" in studies
    for study in studies:
        assert (site / "benchmarks" / study / "index.html").is_file(), study
    # linked rows and figures are copied, so the site works offline
    assert (site / "benchmarks" / "cpu-grid" / "grid.jsonl").is_file()
    assert (site / "docs" / "screenshots" / "01_first_screen.png").is_file()


def test_a_dead_link_fails_the_build_naming_file_line_and_link(tmp_path):
    root = copy_sources(tmp_path / "repo")
    page = root / "docs" / "cli.md"
    lines = page.read_text(encoding="utf-8").splitlines()
    lines.append("")
    lines.append("See [the missing study](../benchmarks/no-such-study/README.md).")
    page.write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = build(root, tmp_path / "out")
    assert done.returncode != 0
    assert f"docs/cli.md:{len(lines)}: dead link '../benchmarks/no-such-study/README.md'" \
        in done.stderr, done.stderr
    assert not (tmp_path / "out" / "site" / "index.html").exists()


def test_links_in_code_and_external_links_are_left_alone(tmp_path):
    root = copy_sources(tmp_path / "repo")
    page = root / "docs" / "cli.md"
    page.write_text(page.read_text(encoding="utf-8") + "\n`[not a link](nowhere.md)` and "
                    "[the paper](https://arxiv.org/abs/2410.15859)\n\n```\n[x](nowhere.md)\n```\n",
                    encoding="utf-8")
    done = subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), "--staging",
                           str(tmp_path / "stage"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    staged = (tmp_path / "stage" / "docs" / "cli.md").read_text(encoding="utf-8")
    assert "(https://arxiv.org/abs/2410.15859)" in staged and "[x](nowhere.md)" in staged


def test_a_dead_anchor_fails_the_build(tmp_path):
    root = copy_sources(tmp_path / "repo")
    page = root / "docs" / "cli.md"
    page.write_text(page.read_text(encoding="utf-8")
                    + "\nSee [the guard](architecture.md#no-such-section).\n", encoding="utf-8")
    done = build(root, tmp_path / "out")
    assert done.returncode != 0
    assert "no-such-section" in done.stdout + done.stderr
