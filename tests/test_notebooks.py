"""The four notebooks: committed clean, run top to bottom in test mode
(``MESA_VIZ_TEST=1``: tiny random model, short inputs) with nbclient, and
their widgets driven from Python (set a control, check the figure changed as
it should)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nbformat
import numpy as np
import pytest

import mesa_viz
from mesa_viz import widgets

pytestmark = pytest.mark.tiny
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXPECTED = ["01_weave_layouts", "02_attention_beyond_training_length",
            "03_hidden_state_thresholds", "04_passkey_memory_latency", "06_theorems",
            "07_long_context_evaluation"]
T = 64


@pytest.fixture(autouse=True)
def _quiet(caplog):
    caplog.set_level(logging.ERROR, logger="mesa_viz")


def z_of(fw, trace=0) -> np.ndarray:
    return np.array(fw.data[trace].z, dtype=float)


# -- committed state ------------------------------------------------------------------

def test_all_notebooks_present():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem[:2])
def test_notebook_committed_clean(path):
    assert path.stat().st_size < 1_000_000
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and "predict" in nb.cells[0].source.lower()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), \
        f"{path.name} has outputs: clear them before committing"
    assert "MESA_VIZ_TEST" in code[0].source, "the first code cell must honour MESA_VIZ_TEST"


# -- execution ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem[:2])
def test_notebook_runs_in_test_mode(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("MESA_VIZ_TEST", "1")
    monkeypatch.setenv("MESA_VIZ_OUT", str(tmp_path / "out"))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()                                # raises CellExecutionError on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    tracebacks = [o.text for o in outputs if o.get("name") == "stderr" and "Traceback" in o.text]
    assert not tracebacks, tracebacks
    displayed = [o for o in outputs if o.output_type in ("display_data", "execute_result")]
    assert displayed, f"{path.name} displayed nothing"
    widget_views = [o for o in displayed if "application/vnd.jupyter.widget-view+json" in o.data]
    assert widget_views, f"{path.name} shows no widget"


# -- notebook 01: layout explorer ------------------------------------------------------------

def test_layout_explorer_method_switch_changes_chunk_region():
    ex = widgets.layout_explorer(method="origin", compare="origin", seq_len=40, train_length=16)
    origin = z_of(ex.figures["layout"])
    assert np.nanmax(origin) == 39
    assert len(ex.figures["chunk_plan"].data) == 0            # origin: a blank note
    ex.controls["method"].value = "mesa"
    mesa = z_of(ex.figures["layout"])
    lay = mesa_viz.layout("mesa", 40, train_length=16)
    plan = lay.chunk_plan
    (a, b) = plan.middle[1]
    # a middle-chunk query no longer sees the keys between the first chunk and its own chunk
    assert np.isfinite(origin[a, plan.first[1]:a]).all()
    assert np.isnan(mesa[a, plan.first[1]:a]).all()
    np.testing.assert_array_equal(np.nan_to_num(mesa, nan=-1), lay.relative_positions)
    assert np.nanmax(mesa) < 16
    assert [t.name for t in ex.figures["chunk_plan"].data] == ["first", "middle", "last"]
    assert "within train_length=16" in ex.message
    # the difference view (mesa - origin) marks keys only origin sees
    only = z_of(ex.figures["difference"], 1)
    assert (only[a, plan.first[1]:a] == -1).all()


def test_layout_explorer_parameters_and_errors():
    ex = widgets.layout_explorer(method="mesa", seq_len=40, train_length=16)
    assert ex.controls["chunk_size_auto"].value
    default = mesa_viz.get_method("mesa").resolve(40, 16).chunk_size
    assert ex.controls["chunk_size"].value == default          # the resolved default
    assert ex.controls["window"].disabled and ex.controls["chunk_size"].disabled
    ex.controls["chunk_size"].value = default + 3              # on auto: ignored, resynced
    assert ex.controls["chunk_size"].value == default
    ex.controls["chunk_size_auto"].value = False
    assert not ex.controls["chunk_size"].disabled
    ex.controls["chunk_size"].value = 6
    assert [t.name for t in ex.figures["chunk_plan"].data][:2] == ["first", "middle"]
    assert list(ex.figures["chunk_plan"].data[1].x)[0] == 6
    before = z_of(ex.figures["layout"])
    ex.controls["first_chunk_auto"].value = False
    ex.controls["first_chunk"].value = 12                      # 12 + 6 > T = 16: invalid
    assert "invalid" in ex.message and "chunk_size" in ex.message
    np.testing.assert_array_equal(z_of(ex.figures["layout"]), before)   # figure kept
    ex.controls["first_chunk_auto"].value = True
    assert "invalid" not in ex.message
    ex.controls["method"].value = "rerope"
    assert ex.controls["window"].disabled and ex.controls["chunk_size"].disabled
    ex.controls["window_auto"].value = False
    assert not ex.controls["window"].disabled
    ex.controls["window"].value = 3
    assert np.nanmax(z_of(ex.figures["layout"])) == 3
    ex.controls["seq_len"].value = 10
    assert z_of(ex.figures["layout"]).shape == (10, 10)


# -- notebook 02: attention explorer ----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lm():
    from mesa_viz.models import tiny_model
    return tiny_model("llama", max_position_embeddings=T)


def test_attention_explorer_methods_rows_and_needle(tiny_lm):
    from mesa_viz.passkey import make_sample

    model, tok = tiny_lm
    s = make_sample(tok, 160, depth=0.5, seed=0)
    needle = tuple(s["needle_span"])
    plan = mesa_viz.get_method("mesa").resolve(160, T).plan()
    mid = plan.middle[2][0] + 3                              # a query inside a middle chunk
    ex = widgets.attention_explorer(model, tok, s["input_ids"], methods=["origin", "mesa"],
                                    needle=needle, query_rows=[mid, 159], train_length=T)
    assert set(ex.cache) == {"origin"}
    assert "needle share" in ex.outputs["needle"].value and "q=159" in ex.outputs["needle"].value
    assert [s.name for s in ex.figures["attention"].layout.shapes] == ["needle", "train_length"]
    ex.controls["row"].value = mid
    origin = np.array(ex.figures["attention"].data[0].customdata, dtype=float)[0]
    ex.controls["method"].value = "mesa"
    assert set(ex.cache) == {"origin", "mesa"}
    mesa = np.array(ex.figures["attention"].data[0].customdata, dtype=float)[0]
    hidden = slice(plan.first[1], plan.middle[2][0])             # keys mesa masks for this row
    assert (origin[hidden] > 0).all() and (mesa[hidden] == 0).all()
    np.testing.assert_allclose(mesa.sum(), 1, rtol=1e-4)
    # the needle share shown is the sum of the row on the needle tokens
    ex.controls["row"].value = 159
    row = ex.cache["mesa"].attention_row(0, 0, 159)
    assert f"{row[needle[0]:needle[1]].sum():.2%}" in ex.outputs["needle"].value
    # layer/head switch redraws; zoom is exact
    before = np.array(ex.figures["attention"].data[0].z, dtype=float)
    ex.controls["layer"].value = 1
    assert not np.array_equal(before, np.array(ex.figures["attention"].data[0].z, dtype=float))
    ex.controls["log"].value = False
    ex.controls["zoom"].value = (90, 130)
    np.testing.assert_allclose(np.array(ex.figures["attention"].data[0].z, dtype=float)[0],
                               ex.cache["mesa"].attention_row(1, 0, 159)[90:130], rtol=1e-6)
    ex.controls["row"].value = "all"
    assert len(ex.figures["attention"].data[0].z) == 2
    assert [t.name for t in ex.figures["distance"].data] == [f"q={mid}", "q=159"]


def test_attention_explorer_errors(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(ValueError, match="needle"):
        widgets.attention_explorer(model, tok, np.arange(100), needle=(90, 120), train_length=T)
    with pytest.raises(ValueError, match="input_ids"):
        widgets.attention_explorer(model, tok, np.zeros((2, 5), int), train_length=T)


# -- notebook 03: threshold explorer ----------------------------------------------------------

def test_threshold_explorer_pairs_and_crossings(tiny_lm):
    from mesa_viz.thresholds import find

    model, tok = tiny_lm
    window = 16
    found = find(model, tok, length=160, methods=["origin", "mesa"], hidden_layers=[1, 2],
                 window=window, min_correlation=0.0, top=3)
    pairs, traces = found
    ex = widgets.threshold_explorer(found, window=window)
    fig = ex.figures["hidden"]
    assert [t.name for t in fig.data] == ["origin", "mesa"]
    names = [s.name for s in fig.layout.shapes]
    assert names == ["train_length", "threshold"]
    assert fig.layout.shapes[1].y0 == pytest.approx(pairs[0].threshold)
    text = ex.outputs["crossings"].value
    for m in ("origin", "mesa"):   # the label agrees with the finder's past fraction
        assert f"{m}: " in text and f"({pairs[0].past_fraction[m]:.0%})" in text
    before = np.array(fig.data[0].y, dtype=float)
    ex.controls["pair"].value = 1
    assert not np.array_equal(before, np.array(fig.data[0].y, dtype=float))
    assert fig.layout.shapes[1].y0 == pytest.approx(pairs[1].threshold)
    ex.controls["smooth"].value = 1
    raw = traces["origin"].hidden_values(pairs[1].layer, pairs[1].dim)
    np.testing.assert_allclose(np.array(fig.data[0].y, dtype=float), raw, rtol=1e-6)


def test_threshold_explorer_errors():
    with pytest.raises(ValueError, match="pairs is empty"):
        widgets.threshold_explorer([], {"origin": None})
    with pytest.raises(ValueError, match="traces is empty"):
        widgets.threshold_explorer([{"layer": 0, "dim": 0, "threshold": 1.0}], {})


# -- notebook 04: sweep viewer ---------------------------------------------------------------

def passkey_rows():
    return [dict(method=m, length=L, depth=d, seed=0, correct=(m == "mesa" or L <= 64))
            for m in ("origin", "mesa") for L in (64, 128) for d in (0.2, 0.8)]


def test_sweep_viewer_passkey(tmp_path):
    path = tmp_path / "passkey.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in passkey_rows()))
    ex = widgets.sweep_viewer(path, kind="passkey", train_length=T)
    fig = ex.figures["main"]
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    ex.controls["view"].value = "lines"
    assert [(t.type, t.name) for t in fig.data] == [("scatter", "origin"), ("scatter", "mesa")]
    np.testing.assert_allclose(fig.data[0].y, [1, 0])
    ex.controls["methods"].value = ("mesa",)
    assert [t.name for t in fig.data] == ["mesa"]
    ex.controls["methods"].value = ()
    assert not fig.data


def test_sweep_viewer_bench_and_csv(tmp_path):
    import csv

    rows = [dict(method=m, length=L, prefill_s=0.1 * L, peak_mem_bytes=L * 2 ** 20,
                 decode_ms_per_token=1.0, oom=False) for m in ("origin", "mesa") for L in (64, 128)]
    rows.append(dict(method="origin", length=256, prefill_s=None, peak_mem_bytes=None,
                     decode_ms_per_token=None, oom=True))
    path = tmp_path / "bench.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ex = widgets.sweep_viewer(path, kind="bench")
    names = [t.name for t in ex.figures["main"].data]
    assert names.count("origin") == 3 and "origin OOM" in names and names.count("mesa") == 3
    with pytest.raises(ValueError, match="kind='x'"):
        widgets.sweep_viewer(rows, kind="x")
