"""The command line as code: the one list parser, the one method-parameter
convention, the subcommand registry, and the layering it keeps (argparse only
under mesa_viz/cli, plots imported only by widgets, report and the CLI)."""

from __future__ import annotations

import argparse
import ast
from importlib import import_module
from pathlib import Path

import pytest

from mesa_viz.cli import SUBCOMMANDS, main
from mesa_viz.cli.common import comma_list, float_list, int_list, name_list, parse_params

pytestmark = pytest.mark.unit
PACKAGE = Path(__file__).resolve().parents[1] / "mesa_viz"


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


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_subcommand_has_help_and_the_shared_options(name, capsys):
    module = import_module(SUBCOMMANDS[name][0])
    assert callable(module.add_arguments) and callable(module.run)
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert f"mesa-viz {name}" in text
    for option in ("--model", "--tiny", "--device", "--dtype", "--out"):
        assert option in text, (name, option)


def test_bad_input_exits_with_its_message(tmp_path):
    with pytest.raises(SystemExit, match="mesa-viz bench: unknown method 'nope'"):
        main(["bench", "--tiny", "--methods", "nope", "--out", str(tmp_path / "b.jsonl")])
    with pytest.raises(SystemExit, match="mesa-viz thresholds: --param 'mesa=1'"):
        main(["thresholds", "--tiny", "--param", "mesa=1", "--out", str(tmp_path / "t.jsonl")])
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


def test_argparse_lives_in_the_cli_only():
    library = [p for p in PACKAGE.glob("*.py")]
    assert library and not [p.name for p in library if "argparse" in _imports(p)]
    assert [p.name for p in (PACKAGE / "cli").glob("*.py") if "argparse" in _imports(p)]


def test_only_widgets_report_and_cli_import_plots():
    drawing = {p.name for p in PACKAGE.glob("*.py")
               if any(n.endswith("plots") for n in _imports(p))}
    assert drawing <= {"widgets.py", "report.py", "plots.py"}, drawing
    assert {"widgets.py", "report.py"} <= drawing


def test_bench_prefill_ab_writes_paired_rows(tmp_path, capsys):
    """``mesa-viz bench --prefill-ab``: no grid; per length one prefill-ab row
    (warm-up and timed rounds) and a line with the paired ratio; asked with
    --decode-ab too, refused."""
    from mesa_viz.results import read_jsonl
    out = tmp_path / "pab.jsonl"
    assert main(["bench", "--tiny", "--methods", "origin,mesa", "--lengths", "160",
                 "--train-length", "128", "--repeats", "2", "--warmup", "1", "--prefill-ab",
                 "--out", str(out)]) == 0
    (row,) = read_jsonl(out)
    assert (row["kind"], row["length"], row["repeats"], row["warmup"]) == ("prefill-ab", 160, 2, 1)
    assert len(row["s_all"]["mesa"]) == 3
    assert "mesa/origin paired" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="two runs"):
        main(["bench", "--tiny", "--methods", "origin,mesa", "--lengths", "160",
              "--decode-ab", "--prefill-ab", "--out", str(tmp_path / "x.jsonl")])


def test_bench_decode_ab_writes_paired_rows(tmp_path, capsys):
    """``mesa-viz bench --decode-ab``: no grid; per length one decode-ab row
    (two methods, steps taken in turn) and a line with the paired ratio;
    three methods are refused by name."""
    from mesa_viz.results import read_jsonl
    out = tmp_path / "ab.jsonl"
    assert main(["bench", "--tiny", "--methods", "origin,mesa", "--lengths", "160",
                 "--train-length", "128", "--decode-tokens", "3", "--decode-ab",
                 "--out", str(out)]) == 0
    rows = read_jsonl(out)
    assert [(r["kind"], r["length"], r["methods"]) for r in rows] == [
        ("decode-ab", 160, ["origin", "mesa"])]
    assert "mesa/origin paired" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="two different methods"):
        main(["bench", "--tiny", "--methods", "origin,mesa,rerope", "--lengths", "160",
              "--decode-ab", "--out", str(tmp_path / "x.jsonl")])
