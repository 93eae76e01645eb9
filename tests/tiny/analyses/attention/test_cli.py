"""``mesa-viz attention`` on the tiny model: a rerun reuses the traces it
kept, a run with other settings traces again instead of reading stale ones,
and the rows are those of the last run (never appended twice)."""

from __future__ import annotations

from mesa_viz.cli import main
from mesa_viz.runs import read_jsonl
from mesa_viz.runtime import Trace


def _run(out, length: int, capsys) -> list[dict]:
    assert main(["attention", "--tiny", "--methods", "origin,mesa", "--length", str(length),
                 "--layers", "0,1", "--out", str(out)]) == 0
    assert "needle share of the last query" in capsys.readouterr().out
    return read_jsonl(out / "attention.jsonl")


def test_rerun_reuses_matching_traces_only(tmp_path, capsys):
    out = tmp_path / "run"
    first = _run(out, 120, capsys)
    assert [(r["method"], r["layer"], r["length"]) for r in first] == [
        ("origin", 0, 120), ("origin", 1, 120), ("mesa", 0, 120), ("mesa", 1, 120)]
    assert (out / "attention.html").exists()
    kept = (out / "trace_mesa.npz").stat().st_mtime_ns
    assert _run(out, 120, capsys) == first                   # the same rows, not twice
    assert (out / "trace_mesa.npz").stat().st_mtime_ns == kept   # the trace reused
    longer = _run(out, 150, capsys)                          # other settings: traced again
    assert {r["length"] for r in longer} == {150} and len(longer) == 4
    assert Trace.load(out / "trace_mesa").seq_len == 150


def test_model_free_commands_rewrite_their_rows(tmp_path):
    """``layouts`` and ``theory`` recompute in seconds: a rerun rewrites the rows."""
    for command, args in (("layouts", ["--methods", "origin,mesa"]),
                          ("theory", ["--length", "256"])):
        out = tmp_path / command
        for _ in range(2):
            assert main([command, *args, "--out", str(out)]) == 0
        rows = read_jsonl(out / f"{command}.jsonl")
        assert len(rows) == len({str(sorted(r.items())) for r in rows}) > 0, command
