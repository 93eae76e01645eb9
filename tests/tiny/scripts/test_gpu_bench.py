"""scripts/gpu_bench.py in its --tiny mode (the plumbing of the GPU run, on CPU):
the grid, the long Mesa-only row with its decoded tokens, origin's row there,
every row beside its floor, ``--fused-off``; and scripts/host_ops.py.  The
kernels' checks on the device are the gpu layer (tests/gpu)."""

import importlib.util
import json
import statistics
import subprocess
import sys

import pytest

from mesa_viz.runs import read_jsonl
from repo import ROOT


def _gpu_bench(*args, timeout: int = 600, env=None) -> subprocess.CompletedProcess:
    """``python scripts/gpu_bench.py --tiny ARGS``, its output captured."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_bench.py"), "--tiny",
                           *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env)


def _load_gpu_bench():
    """scripts/gpu_bench.py as a module (its settings tables)."""
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "scripts" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_bench_tiny_runs_the_grid_the_long_row_and_the_floors(tmp_path):
    out = _gpu_bench("--lengths", "64,160", "--long-length", "320", "--long-decode", "2",
                     "--decode-tokens", "1", "--repeats", "1", "--warmup", "0", "--out", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_jsonl(tmp_path / "gpu_bench.jsonl")
    machine = [r for r in rows if r["kind"] == "machine"]
    assert len(machine) == 1 and machine[0]["memory_gbps"] > 0
    points = {(r["method"], r["length"]): r for r in rows if r["kind"] == "point"}
    assert set(points) == {(m, n) for m in ("origin", "mesa") for n in (64, 160, 320)}
    long_mesa = points["mesa", 320]
    assert long_mesa["prefill_s"] > 0 and len(long_mesa["decode_ms_all"]) == 2
    assert long_mesa["plan"]["chunks"] > 2
    floors = (tmp_path / "floors.txt").read_text()
    assert "x floor" in floors and len(floors.splitlines()) == 2 + len(points)


def test_gpu_bench_refuses_lengths_past_a_million(tmp_path):
    out = _gpu_bench("--lengths", "2000000", "--out", tmp_path, timeout=300)
    assert out.returncode != 0 and "allowed 1..1048576" in out.stderr
    for flag in ("--decode-ab", "--kernel-times"):               # refused before any grid
        out = _gpu_bench("--lengths", "64", flag, "512,x", "--out", tmp_path / flag, timeout=300)
        assert out.returncode != 0 and f"{flag} '512,x': 'x' is not an integer" in out.stderr
        assert not (tmp_path / flag / "gpu_bench.jsonl").exists()


def test_gpu_bench_fused_off_turns_the_launch_off_and_says_why_in_the_rows(tmp_path):
    """``--fused-off REASON`` (scripts/gpu_bench.sh passes it where tests/gpu
    failed): the fused launch is off for the run and every row says why."""
    out = _gpu_bench("--fused-off", "why", "--lengths", "64", "--long-length", "0",
                     "--decode-tokens", "1", "--repeats", "1", "--warmup", "0", "--out", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "fused launch OFF for this run: why" in out.stdout
    rows = read_jsonl(tmp_path / "gpu_bench.jsonl")
    assert [r["method"] for r in rows if r["kind"] == "point"] == ["origin", "mesa"]
    assert all(r["fused_off"] == "why" for r in rows)
    assert not any(r["kind"].startswith("check") for r in rows)


def test_gpu_bench_has_no_check_options_left(tmp_path):
    """The kernels' device checks are the gpu test layer (tests/gpu), not the script's."""
    for flag in ("--no-check", "--long-check"):
        out = _gpu_bench(flag, "0", "--out", tmp_path, timeout=300)
        assert out.returncode == 2 and "unrecognized arguments" in out.stderr


def test_host_ops_counts_one_device_read_a_mesa_decode_step():
    """scripts/host_ops.py: per method the operations and device reads of a
    decode step and of a prefill piece (Mesa in pieces, origin in one forward);
    Mesa's step reads the device once (its positions), not once a layer."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "host_ops.py"), "--layers", "3", "--length",
         "1024", "--train-length", "256", "--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["method"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert set(rows) == {"origin", "mesa"}
    mesa, origin = rows["mesa"], rows["origin"]
    assert sum(mesa["decode_reads"].values()) <= 1 and mesa["decode_ops"] > origin["decode_ops"]
    assert mesa["prefill_forwards"] > 2 and mesa["piece_ops"] > 0 and mesa["piece_reads"] == 0
    assert origin["piece_ops"] is None and origin["prefill_forwards"] == 1


def test_gpu_bench_piece_sizes_ab_in_one_call(tmp_path):
    """``--piece-tokens 64,128``: the grid with pieces of 64, then Mesa's points
    again with pieces of 128, rows saying which; a bad size is refused by name."""
    out = _gpu_bench("--lengths", "256", "--long-length", "0", "--decode-tokens", "1",
                     "--repeats", "1", "--warmup", "0", "--piece-tokens", "64,128",
                     "--out", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    points = [(r["method"], r["piece_tokens"]) for r in read_jsonl(tmp_path / "gpu_bench.jsonl")
              if r["kind"] == "point"]
    assert points == [("origin", 64), ("mesa", 64), ("mesa", 128)]
    floors = (tmp_path / "floors.txt").read_text().splitlines()
    assert any("pieces of <= 128" in x for x in floors if x.startswith("mesa"))
    assert not any("pieces" in x for x in floors if x.startswith("origin"))  # one forward
    bad = _gpu_bench("--piece-tokens", "64,0", "--out", tmp_path / "b", timeout=300)
    assert bad.returncode != 0 and "'0' is not an integer >= 1" in bad.stderr


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_gpu_bench_times_the_two_launches_under_each_setting(tmp_path):
    """``--kernel-times``: Mesa's rows launch and decode launch alone, once per
    launch setting, each a row with its milliseconds (here under Triton's
    interpreter on CPU tensors, as on the device with CUDA)."""
    import os
    gpu_bench = _load_gpu_bench()
    out = _gpu_bench("--lengths", "128", "--long-length", "0", "--decode-tokens", "1",
                     "--repeats", "1", "--warmup", "0", "--kernel-times", "200", "--out", tmp_path,
                     env=dict(os.environ, TRITON_INTERPRET="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [r for r in read_jsonl(tmp_path / "gpu_bench.jsonl") if r["kind"] == "kernel-time"]
    assert [(r["launch"], r["n"]) for r in rows] == \
        [("rows", 200)] * len(gpu_bench.ROWS_SETTINGS) + \
        [("decode", 200)] * len(gpu_bench.DECODE_SETTINGS)
    assert all(r["ms"] > 0 for r in rows)
    assert {(r["block_m"], r["block_n"], r["num_warps"]) for r in rows
            if r["launch"] == "rows"} == set(gpu_bench.ROWS_SETTINGS)


def test_gpu_bench_decode_ab_pairs_steps_taken_in_turn(tmp_path):
    """``--decode-ab``: origin and Mesa decoded one step of each in turn at
    each length, a row per length with every step and the paired ratio."""
    out = _gpu_bench("--lengths", "128", "--long-length", "0", "--decode-tokens", "3",
                     "--repeats", "1", "--warmup", "0", "--decode-ab", "256", "--out", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [r for r in read_jsonl(tmp_path / "gpu_bench.jsonl") if r["kind"] == "decode-ab"]
    assert [r["length"] for r in rows] == [256]
    r = rows[0]
    assert r["methods"] == ["origin", "mesa"]
    assert len(r["ms_all"]["origin"]) == len(r["ms_all"]["mesa"]) == 3
    pairs = [a / b for a, b in zip(r["ms_all"]["mesa"][1:], r["ms_all"]["origin"][1:])]
    assert r["ratio_paired"] == statistics.median(pairs) > 0
