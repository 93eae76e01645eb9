"""scripts/gpu_eval.py, the evaluation at scale on a GPU, rehearsed here: how the model, texts
and wheels are cut into deliveries that fit a device call and joined there (checked by
sha256), the grid on the tiny model with its rows resumed, and the rows taken back."""

import importlib.util
import json
import subprocess
import sys

import pytest

from mesa_viz.runs import read_jsonl
from repo import ROOT


@pytest.fixture(scope="module")
def gpu_eval():
    """scripts/gpu_eval.py as a module."""
    spec = importlib.util.spec_from_file_location("gpu_eval", ROOT / "scripts" / "gpu_eval.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_eval"] = module            # its dataclass looks its module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_eval", None)


def _files(tmp_path, sizes: dict):
    out = {}
    for name, n in sizes.items():
        (tmp_path / name).write_bytes(bytes([len(name)]) * n)
        out[name] = tmp_path / name
    return out


def test_deliveries_fit_a_call_keep_groups_whole_and_join_to_the_gguf(gpu_eval, tmp_path):
    f = _files(tmp_path, {"core.whl": 3 << 20, "text.txt": 1 << 20, "a.whl": 5 << 20,
                          "b.whl": 6 << 20, "nb.whl": 9 << 20})
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(bytes(range(256)) * (100 << 12))             # 100 MiB
    room = 40 << 20
    groups = {"ruler": [f["a.whl"], f["b.whl"]], "notebooks": [f["nb.whl"]]}
    plan = gpu_eval.write_deliveries([("wheels-core", f["core.whl"]), ("texts", f["text.txt"])],
                                     gguf, groups, room, tmp_path / "carry")
    assert len(plan) == 4 and all(d["MiB"] * 2**20 <= room + 2**16 for d in plan)
    holders = {k: [d["delivery"] for d in plan if k in d["holds"]]
               for k in ("wheels-core", "wheels-ruler", "wheels-notebooks")}
    assert holders["wheels-core"] == [1] and len(holders["wheels-ruler"]) == 1 \
        and len(holders["wheels-notebooks"]) == 1
    have = gpu_eval.arrived(tmp_path / "carry")
    assert gpu_eval.assemble(have, tmp_path / "cache", tmp_path / "carry")
    assert (tmp_path / "cache" / "gguf" / gpu_eval.GGUF).read_bytes() == gguf.read_bytes()


def test_a_missing_or_damaged_piece_is_named_not_used(gpu_eval, tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"x" * (50 << 20))
    carry = tmp_path / "carry"
    gpu_eval.write_deliveries([], gguf, {}, 20 << 20, carry)
    last = sorted(carry.glob("delivery-*"))[-1]
    moved = tmp_path / "later"
    last.rename(moved)                                           # the last call not made yet
    assert not gpu_eval.assemble(gpu_eval.arrived(carry), tmp_path / "cache", carry)
    moved.rename(last)
    part = next(last.glob("gguf/*"))
    part.write_bytes(b"y" + part.read_bytes()[1:])
    with pytest.raises(SystemExit, match=part.name):
        gpu_eval.arrived(carry)


def test_the_wheel_list_is_pinned_and_a_bad_line_is_named(gpu_eval, tmp_path):
    groups = gpu_eval.wheel_groups()
    assert set(groups) == {"core", "ruler", "notebooks"}
    assert any(p.startswith("transformers==") for p in groups["core"])
    bad = tmp_path / "wheels.txt"
    bad.write_text("[core]\ntransformers>=5\n")
    with pytest.raises(ValueError, match=r"wheels.txt:2: 'transformers>=5'.*allowed"):
        gpu_eval.wheel_groups(bad)


def test_the_rehearsal_scales_every_job_to_the_tiny_model(gpu_eval):
    jobs = [gpu_eval.tiny(j) for j in gpu_eval.jobs()]
    for job in jobs:
        argv = list(job.argv)
        for flag in ("--lengths", "--length"):
            if flag in argv:
                lengths = argv[argv.index(flag) + 1].split(",")
                assert len(lengths) == len(set(lengths)), job
                assert min(map(int, lengths)) >= (1024 if argv[0] == "ruler" else 64)
        if job.notebook:
            assert job.notebook.get("MESA_VIZ_TEST") == "1"
    full = gpu_eval.jobs()
    pk = [j for j in full if j.argv[0] == "passkey" and "--depths" in j.argv]
    assert all("20" == j.argv[j.argv.index("--samples") + 1] for j in pk)


def test_a_job_runs_its_rows_come_back_and_a_second_call_resumes(tmp_path):
    rows, out, taken = tmp_path / "rows", tmp_path / "out", tmp_path / "taken"

    def call(out_dir):
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_eval.py"), "run",
                               "--tiny", "--only", "passkey-f32", "--budget", "300",
                               "--out", str(out_dir), "--rows", str(rows)],
                              capture_output=True, text=True, timeout=600)

    def take(out_dir):
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_eval.py"), "take",
                               str(out_dir), "--rows", str(taken)],
                              capture_output=True, text=True, timeout=120)

    first = call(out)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "passkey-f32.tar.gz").exists()
    got = take(out)
    assert got.returncode == 0 and "24 new rows" in got.stdout, got.stdout + got.stderr
    taken_rows = read_jsonl(taken / "passkey-f32" / "passkey.jsonl")
    assert {r["method"] for r in taken_rows} == {"origin", "mesa", "rerope", "self-extend"}
    assert len(taken_rows) == 24            # 3 lengths x 4 methods x 2 tiny samples
    second = call(tmp_path / "out2")
    assert second.returncode == 0, second.stderr[-3000:]
    again = take(tmp_path / "out2")
    assert "0 new rows" in again.stdout, again.stdout
    calls = [json.loads(l) for l in (taken / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 2 and calls[0]["jobs"][0]["status"] == "done" and calls[0]["tiny"]


def test_a_notebooks_figures_are_drawn_as_pages_beside_it(gpu_eval, tmp_path):
    import plotly.graph_objects as go
    fig = json.loads(go.Figure(go.Scatter(x=[1, 2], y=[3, 4], name="mesa-curve")).to_json())
    nb = {"cells": [{"cell_type": "code", "outputs": [
        {"output_type": "display_data", "data": {"application/vnd.plotly.v1+json": fig}},
        {"output_type": "display_data", "data": {"application/vnd.jupyter.widget-view+json": {}}}]}]}
    path = tmp_path / "02_x.ipynb"
    path.write_text(json.dumps(nb))
    assert gpu_eval.notebook_figures(path) == ["02_x-fig1.html"]
    assert "mesa-curve" in (tmp_path / "02_x-fig1.html").read_text()
