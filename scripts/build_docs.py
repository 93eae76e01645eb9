"""Build the documentation site: README.md, docs/ and every benchmarks/<study>/README.md.

The pages live where they belong in the repository (the front page at the root, the measurements
beside their rows), so mkdocs cannot read them in place. This script stages them:

* README.md -> index.md (the home page); docs/<page>.md -> docs/<page>.md;
  benchmarks/<study>/README.md -> benchmarks/<study>/index.md: the repository's relative paths,
  with a README.md page named index.md;
* every relative Markdown link and image of a page is resolved against the page's own folder in
  the repository: a link to a page is rewritten to the page's staged path; a link to any other
  file (rows, a figure, a notebook, a source file) copies that file into the staging folder at its
  repository path, so the site works offline; a link whose target does not exist, or that leaves
  the repository, or that names a folder without a README.md, is a dead link: the script names the
  file, line and link of each and exits non-zero before building;
* links with a scheme (https:, mailto:) and pure anchors (#...) are left alone, and so is anything
  inside code (fenced blocks and `inline code`);

then it runs ``mkdocs build --strict`` on a copy of the root mkdocs.yml pointed at the staging
folder, with a Benchmarks section listing every study. Strict mode and the mkdocs.yml
``validation`` settings make mkdocs refuse a link to a missing page or anchor.

    python scripts/build_docs.py                       # site/ from this checkout
    python scripts/build_docs.py --root DIR --out SITE --staging STAGE
    python scripts/build_docs.py --check               # stage and check links only
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent

#: ``[text](target "title")`` and ``![alt](target)``; the target has no spaces or parentheses.
LINK = re.compile(
    r"(!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\()(\s*)(<[^>]*>|[^()\s]+)((?:\s+\"[^\"]*\")?\s*\))")
#: reference definitions ``[name]: target``
REF_DEF = re.compile(r"^( {0,3}\[[^\]]+\]:\s*)(\S+)(.*)$")
FENCE = re.compile(r"^ {0,3}(```+|~~~+)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class DeadLink:
    source: str
    line: int
    link: str
    why: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: dead link {self.link!r}: {self.why}"


def pages(root: Path) -> dict[str, str]:
    """Repository path -> staged path of every page of the site."""
    out = {"README.md": "index.md"}
    docs = root / "docs"
    if docs.is_dir():
        for md in sorted(docs.rglob("*.md")):
            rel = md.relative_to(root).as_posix()
            out[rel] = rel
    bench = root / "benchmarks"
    if bench.is_dir():
        if (bench / "README.md").is_file():
            out["benchmarks/README.md"] = "benchmarks/index.md"
        for readme in sorted(bench.glob("*/README.md")):
            rel = readme.relative_to(root).as_posix()
            out[rel] = rel[: -len("README.md")] + "index.md"
    if not (root / "README.md").is_file():
        raise SystemExit(f"build_docs: no README.md in {root}")
    return out


def _relpath(target: str, start_dir: str) -> str:
    return os.path.relpath(target, start_dir or ".").replace(os.sep, "/")


def _masked(line: str) -> str:
    """``line`` with inline code replaced by spaces of the same length."""
    return INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)


class Stager:
    def __init__(self, root: Path, staging: Path):
        self.root, self.staging = root, staging
        self.pages = pages(root)
        self.dead: list[DeadLink] = []
        self.copied: set[str] = set()

    def resolve(self, source: str, line_no: int, target: str) -> str | None:
        """The staged link for ``target`` written in page ``source``; None if left alone."""
        raw = target[1:-1] if target.startswith("<") and target.endswith(">") else target
        if not raw or raw.startswith("#") or SCHEME.match(raw) or raw.startswith("//"):
            return None
        path, sep, anchor = raw.partition("#")
        if not path:
            return None
        if path.startswith("/"):
            self.dead.append(DeadLink(source, line_no, raw, "absolute path: use a relative link"))
            return None
        src_dir = str(PurePosixPath(source).parent)
        joined = os.path.normpath(os.path.join(src_dir, path)).replace(os.sep, "/")
        if joined == ".." or joined.startswith("../"):
            self.dead.append(DeadLink(source, line_no, raw, "leaves the repository"))
            return None
        full = self.root / joined
        if full.is_dir():
            if (full / "README.md").is_file() and f"{joined}/README.md" in self.pages:
                joined = f"{joined}/README.md"
            else:
                self.dead.append(DeadLink(source, line_no, raw, "a folder, not a page or a file"))
                return None
        elif not full.is_file():
            self.dead.append(DeadLink(source, line_no, raw, "no such file in the repository"))
            return None
        staged_src_dir = str(PurePosixPath(self.pages[source]).parent)
        if joined in self.pages:
            staged = self.pages[joined]
        elif joined.endswith(".md"):
            self.dead.append(DeadLink(source, line_no, raw, "a Markdown file that is not a page "
                                      "of the site (README.md, docs/, benchmarks/README.md, benchmarks/<study>/README.md)"))
            return None
        else:
            staged = joined
            self.copied.add(joined)
        return _relpath(staged, staged_src_dir) + (sep + anchor if sep else "")

    def rewrite(self, source: str, text: str) -> str:
        out, fence = [], None
        for n, line in enumerate(text.splitlines(keepends=True), 1):
            m = FENCE.match(line)
            if m:
                mark = m.group(1)
                if fence is None:
                    fence = mark
                elif mark[0] == fence[0] and len(mark) >= len(fence) and not line.strip()[len(mark):]:
                    fence = None
                out.append(line)
                continue
            if fence is not None:
                out.append(line)
                continue
            masked = _masked(line)
            parts, last = [], 0
            for lm in LINK.finditer(masked):
                start, end = lm.span(3)
                target = line[start:end]
                new = self.resolve(source, n, target)
                if new is not None:
                    parts.append(line[last:start])
                    parts.append(f"<{new}>" if target.startswith("<") else new)
                    last = end
            parts.append(line[last:])
            line = "".join(parts)
            rm = REF_DEF.match(_masked(line))
            if rm:
                new = self.resolve(source, n, rm.group(2))
                if new is not None:
                    line = line[: rm.start(2)] + new + line[rm.end(2):]
            out.append(line)
        return "".join(out)

    def stage(self) -> None:
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True)
        for source, staged in self.pages.items():
            text = (self.root / source).read_text(encoding="utf-8")
            dest = self.staging / staged
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(self.rewrite(source, text), encoding="utf-8")
        for rel in sorted(self.copied):
            dest = self.staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.root / rel, dest)


def _title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.parent.name


def staged_config(root: Path, staging: Path, stager: Stager, site: Path) -> Path:
    """A copy of ``root/mkdocs.yml`` for the staging folder, the studies added to the nav."""
    import yaml

    cfg_path = root / "mkdocs.yml"
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    cfg["docs_dir"] = str(staging.resolve())
    cfg["site_dir"] = str(site.resolve())
    studies = [{"Overview" if p.count("/") == 1 else p.split("/")[1]: staged}
               for p, staged in stager.pages.items() if p.startswith("benchmarks/")]
    nav = cfg.get("nav")
    if nav is not None and studies:
        nav = [item for item in nav if not (isinstance(item, dict) and "Benchmarks" in item)]
        nav.append({"Benchmarks": studies})
        cfg["nav"] = nav
    listed = set()

    def walk(items):
        for item in items or []:
            if isinstance(item, str):
                listed.add(item)
            elif isinstance(item, dict):
                for v in item.values():
                    walk(v if isinstance(v, list) else [v])
    walk(cfg.get("nav"))
    if cfg.get("nav") is not None:
        missing = [s for s in stager.pages.values() if s not in listed]
        if missing:
            cfg["nav"].append({"More": missing})
    out = staging.parent / (staging.name + "-mkdocs.yml")
    out.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this one)")
    ap.add_argument("--out", type=Path, default=None, help="site folder (default ROOT/site)")
    ap.add_argument("--staging", type=Path, default=None,
                    help="staging folder (default ROOT/build/docs-src; emptied first)")
    ap.add_argument("--check", action="store_true", help="stage and check links; do not build")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    site = (args.out or root / "site").resolve()
    staging = (args.staging or root / "build" / "docs-src").resolve()
    sources = [root / d for d in ("docs", "benchmarks", "mesa_viz",
                                  "tests", "notebooks", "scripts")]
    for folder in (staging, site):
        if folder == root or any(folder == s or s in folder.parents for s in sources):
            print(f"build_docs: refusing {folder}: it would overwrite the sources", file=sys.stderr)
            return 2
    stager = Stager(root, staging)
    stager.stage()
    if stager.dead:
        for d in stager.dead:
            print(d, file=sys.stderr)
        print(f"build_docs: {len(stager.dead)} dead link(s); site not built", file=sys.stderr)
        return 1
    print(f"build_docs: staged {len(stager.pages)} pages and {len(stager.copied)} linked files "
          f"in {staging}", flush=True)
    if args.check:
        return 0
    cfg = staged_config(root, staging, stager, site)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}           # material's end-of-life banner
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "-f", str(cfg), "-d", str(site)], cwd=root, env=env)
    if proc.returncode != 0:
        print(f"build_docs: mkdocs build failed ({proc.returncode})", file=sys.stderr)
        return proc.returncode
    print(f"build_docs: site in {site} (open {site / 'index.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
