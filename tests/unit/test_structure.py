"""The package's shape, checked: imports run one way (commands and facades, report,
explorers and sections, figures, viz, analyses, the runtime, models, kernels and
runs, methods and data), the import graph has no cycle, no module grows past
about 800 lines (a kernel file that is one launch aside), and no code names an
issue number.  ``python tests/unit/test_structure.py`` prints the graph."""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

#: The repository (this file is tests/unit/test_structure.py).
ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mesa_viz"
#: The most lines a module holds (the review's "about 800").
MAX_LINES = 800
#: Modules that may be longer: a kernel file that is one launch.
LONG_ALLOWED: set[str] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> int:
    """The layer of a module, bottom 0 (an import may only go to its own layer
    or below)."""
    parts = name.split(".")[1:]
    head, leaf = (parts[0] if parts else ""), parts[-1] if parts else ""
    if not parts or head in ("plots", "widgets", "cli") or leaf.startswith("cli"):
        return 9                                        # the package, facades, commands
    if head == "report":
        return 8
    if head == "analyses" and leaf in ("explorer", "section"):
        return 7
    if head == "analyses" and leaf == "figures":
        return 6
    if head == "viz":
        return 5
    if head == "analyses":
        return 4                                        # computation, rows
    return {"runtime": 3, "models": 2, "kernels": 1, "runs": 1, "methods": 0,
            "data": 0}[head]


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The mesa_viz modules an ``import from`` reaches (each name that is a
    submodule, else the module itself)."""
    if node.level:
        base = module.split(".")
        is_package = (PACKAGE.parent / Path(*base) / "__init__.py").exists()
        base = base if is_package else base[:-1]
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("mesa_viz"):
        return []
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if _exists(sub) else target)
    return out


def _exists(name: str) -> bool:
    path = PACKAGE.parent / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def import_graph() -> dict[str, set[str]]:
    """module -> the mesa_viz modules it imports (at the top and inside functions)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                edges |= set(_resolve(name, node))
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.startswith("mesa_viz")}
        graph[name] = {e for e in edges if e != name and not name.startswith(e + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of ``graph`` (one per strongly connected component of more than one)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_every_import_of_the_package_resolves():
    """Function-level imports too: a module moved leaves no import of its old path."""
    missing = sorted(f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
                     if not _exists(b))
    assert not missing, missing


def test_imports_run_downwards():
    graph = import_graph()
    upward = sorted(f"{a} ({layer(a)}) -> {b} ({layer(b)})" for a, targets in graph.items()
                    for b in targets if layer(b) > layer(a))
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    inner = {a: {b for b in bs if not a.startswith(b)} for a, bs in graph.items()}
    assert not _cycles(inner), _cycles(inner)


def test_no_module_is_over_800_lines():
    long = sorted((n, len(p.read_text().splitlines())) for p in PACKAGE.rglob("*.py")
                  if len(p.read_text().splitlines()) > MAX_LINES
                  and (n := module_name(p)) not in LONG_ALLOWED)
    assert not long, long


def test_no_code_names_an_issue_number():
    pattern = re.compile(r"\bissues? #?\d+\b", re.IGNORECASE)
    places = [ROOT / "mesa_viz", ROOT / "tests", ROOT / "scripts", ROOT / "notebooks",
              ROOT / "docs", ROOT / "benchmarks"]
    hits = [f"{p.relative_to(ROOT)}:{k}" for folder in places for p in folder.rglob("*")
            if p.is_file() and p.suffix in (".py", ".ipynb", ".md", ".sh")
            for k, line in enumerate(p.read_text(errors="replace").splitlines(), start=1)
            if pattern.search(line)]
    hits += [f"README.md:{k}" for k, line in
             enumerate((ROOT / "README.md").read_text().splitlines(), start=1)
             if pattern.search(line)]
    assert not hits, hits


def main() -> None:
    """Print the import graph by layer: each module, its line count and what it imports."""
    graph = import_graph()
    by_layer = defaultdict(list)
    for name in graph:
        by_layer[layer(name)].append(name)
    for k in sorted(by_layer, reverse=True):
        print(f"layer {k}")
        for name in sorted(by_layer[k]):
            path = PACKAGE.parent / Path(*name.split("."))
            path = path.with_suffix(".py") if path.with_suffix(".py").exists() else \
                path / "__init__.py"
            targets = ", ".join(sorted(t.removeprefix("mesa_viz.") for t in graph[name]))
            print(f"  {name.removeprefix('mesa_viz.') or 'mesa_viz':<38} "
                  f"{len(path.read_text().splitlines()):>4}  -> {targets}")


if __name__ == "__main__":
    main()
