"""The command line as code: the one list parser, the one method-parameter
convention, the one meaning of ``--out`` (the run folder), the subcommand
registry, and the layering it keeps (argparse only in the commands, the facades
``plots`` and ``widgets`` imported by no module of the package)."""

from __future__ import annotations

import argparse
import ast
from importlib import import_module
from pathlib import Path

import pytest

from mesa_viz.cli import SUBCOMMANDS, main
from mesa_viz.cli.common import comma_list, float_list, int_list, name_list, parse_params

from repo import ROOT  # noqa: E402

PACKAGE = ROOT / "mesa_viz"


@pytest.mark.parametrize("parse, text, want", [
    (int_list, "1,2,3", [1, 2, 3]), (int_list, " 4 , 5,", [4, 5]), (int_list, "", []),
    (int_list, "0-3", [0, 1, 2, 3]), (int_list, "1,4-5,9", [1, 4, 5, 9]), (int_list, "-2", [-2]),
    (float_list, "0.1,0.5,1", [0.1, 0.5, 1.0]), (name_list, "origin, mesa", ["origin", "mesa"]),
])
def test_comma_list(parse, text, want):
    assert parse(text) == want


@pytest.mark.parametrize("parse, text, match", [
    (int_list, "1,x", "'x' is not an integer"), (int_list, "1.5", "'1.5' is not an integer"),
    (float_list, "0.1,deep", "'deep' is not a number"),
])
def test_comma_list_refuses_bad_items(parse, text, match):
    with pytest.raises(argparse.ArgumentTypeError, match=match):
        parse(text)


def test_one_list_parser_serves_every_type():
    assert comma_list(int)("7") == [7] and comma_list(str)("a,b") == ["a", "b"]


def test_parse_params():
    got = parse_params(["mesa.stair=anchored", "mesa.chunk_size=512", "rerope.window=2048",
                        "mesa.log_scaling=true", "mesa.stair_start=null", "x.y=a=b"])
    assert got == {"mesa": {"stair": "anchored", "chunk_size": 512, "log_scaling": True,
                            "stair_start": None},
                   "rerope": {"window": 2048}, "x": {"y": "a=b"}}
    assert parse_params([]) == {}
    for bad in ("stair=anchored", "mesa.stair", ".stair=1", "mesa.=1"):
        with pytest.raises(ValueError, match="METHOD.KEY=VALUE"):
            parse_params([bad])


#: The commands that run no model (no model options).
MODEL_FREE = {"layouts", "theory"}


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_subcommand_has_help_and_the_shared_options(name, capsys):
    module = import_module(SUBCOMMANDS[name][0])
    assert callable(module.add_arguments) and callable(module.run)
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"mesa-viz {name}" in text
    assert "--out DIR" in text and "--figure PATH.html" in text, name
    assert f"DIR/{name}.html" in text, name
    models = ("--model", "--tiny", "--device", "--dtype")
    assert all((option in text) == (name not in MODEL_FREE) for option in models), name


def test_the_ppl_alias_runs_the_perplexity_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["ppl", "--help"])
    assert exit_.value.code == 0 and "mesa-viz perplexity" in capsys.readouterr().out


def test_bad_input_exits_with_its_message(tmp_path):
    with pytest.raises(SystemExit, match="mesa-viz bench: unknown method 'nope'"):
        main(["bench", "--tiny", "--methods", "nope", "--out", str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="mesa-viz thresholds: --param 'mesa=1'"):
        main(["thresholds", "--tiny", "--param", "mesa=1", "--out", str(tmp_path / "t")])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name, args", [("passkey", ["--tiny", "--lengths", "64"]),
                                        ("bench", ["--tiny", "--lengths", "64"]),
                                        ("report", ["--tiny"]), ("layouts", [])])
def test_out_is_a_folder_for_every_command(name, args, tmp_path):
    """``--out`` names the run folder: a file name (the old rows-file form) is
    refused with what to give instead, before anything runs."""
    with pytest.raises(SystemExit, match=f"mesa-viz {name}: --out .*rows.jsonl: names a file; "
                                         "--out is the run folder"):
        main([name, *args, "--out", str(tmp_path / "rows.jsonl")])
    with pytest.raises(SystemExit, match="--figure .*: allowed an .html path"):
        main(["layouts", "--out", str(tmp_path / "x"), "--figure", str(tmp_path / "f.png")])
    assert not list(tmp_path.iterdir())


def _imports(path: Path) -> set[str]:
    """Modules ``path`` imports (relative ones as written, e.g. ``.plots``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names |= {base, *(f"{base}.{a.name}" for a in node.names)}
    return names


def _is_command(path: Path) -> bool:
    """A command module: under ``mesa_viz/cli`` or an analysis's ``cli*.py``."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] == "cli" or path.name.startswith("cli")


def test_argparse_lives_in_the_commands_only():
    modules = list(PACKAGE.rglob("*.py"))
    with_argparse = {p for p in modules if "argparse" in _imports(p)}
    assert with_argparse and all(_is_command(p) for p in with_argparse), \
        sorted(str(p.relative_to(PACKAGE)) for p in with_argparse if not _is_command(p))
    assert {SUBCOMMANDS[n][0] for n in SUBCOMMANDS} <= {
        "mesa_viz." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
        for p in with_argparse}


def test_no_module_of_the_package_imports_the_facades():
    """``plots`` and ``widgets`` re-export for users; the package itself imports
    each figure and explorer from its analysis."""
    users = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                   if p.name not in ("plots.py", "widgets.py")
                   and any(n.split(".")[-1] in ("plots", "widgets") for n in _imports(p)))
    assert not users, users


def test_bench_prefill_ab_writes_paired_rows(tmp_path, capsys):
    """``mesa-viz bench --prefill-ab``: no grid; per length one prefill-ab row
    (warm-up and timed rounds) and a line with the paired ratio; asked with
    --decode-ab too, refused."""
    from mesa_viz.runs import read_jsonl
    out = tmp_path / "pab"
    assert main(["bench", "--tiny", "--methods", "origin,mesa", "--lengths", "160",
                 "--train-length", "128", "--repeats", "2", "--warmup", "1", "--prefill-ab",
                 "--out", str(out)]) == 0
    (row,) = read_jsonl(out / "bench.jsonl")
    assert (row["kind"], row["length"], row["repeats"], row["warmup"]) == ("prefill-ab", 160, 2, 1)
    assert len(row["s_all"]["mesa"]) == 3
    assert "mesa/origin paired" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="two runs"):
        main(["bench", "--tiny", "--methods", "origin,mesa", "--lengths", "160",
              "--decode-ab", "--prefill-ab", "--out", str(tmp_path / "x")])


def test_bench_decode_ab_writes_paired_rows(tmp_path, capsys):
    """``mesa-viz bench --decode-ab``: no grid; per length one decode-ab row
    (two methods, steps taken in turn) and a line with the paired ratio;
    three methods are refused by name."""
    from mesa_viz.runs import read_jsonl
    out = tmp_path / "ab"
    assert main(["bench", "--tiny", "--methods", "origin,mesa", "--lengths", "160",
                 "--train-length", "128", "--decode-tokens", "3", "--decode-ab",
                 "--out", str(out)]) == 0
    rows = read_jsonl(out / "bench.jsonl")
    assert [(r["kind"], r["length"], r["methods"]) for r in rows] == [
        ("decode-ab", 160, ["origin", "mesa"])]
    assert "mesa/origin paired" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="two different methods"):
        main(["bench", "--tiny", "--methods", "origin,mesa,rerope", "--lengths", "160",
              "--decode-ab", "--out", str(tmp_path / "x")])
