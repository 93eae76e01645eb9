"""The four notebooks: committed clean, run top to bottom in test mode
(``MESA_VIZ_TEST=1``: tiny random model, short inputs) with nbclient, and
their widgets driven from Python (set a control, check the figure changed as
it should)."""

from __future__ import annotations

import json
import logging

import nbformat
import numpy as np
import pytest

import mesa_viz
from mesa_viz import plots, widgets
from mesa_viz.runs import read_jsonl
from mesa_viz.viz.explorer import blank, set_figure

from repo import ROOT  # noqa: E402
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXPECTED = ["01_weave_layouts", "02_attention_beyond_training_length",
            "03_hidden_state_thresholds", "04_passkey_memory_latency", "05_why_it_fails",
            "06_theorems", "07_long_context_evaluation"]
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


#: notebook -> the call drawing its main picture, in its third cell (the first screen:
#: a short markdown cell, a compact setup cell, the picture; the browser test sees it).
MAIN_PICTURE = {"01": "plots.figure1()", "02": "widgets.attention_explorer(",
                "03": "widgets.threshold_explorer(", "04": "plots.passkey_heatmap("}


@pytest.mark.parametrize("stem", sorted(MAIN_PICTURE))
def test_notebook_opens_on_its_main_picture(stem):
    (path,) = [p for p in NOTEBOOKS if p.stem.startswith(stem)]
    first, setup, picture = nbformat.read(path, as_version=4).cells[:3]
    assert first.cell_type == "markdown" and len(first.source) < 450, len(first.source)
    assert setup.cell_type == "code" and picture.cell_type == "code"
    assert MAIN_PICTURE[stem] in picture.source and len(picture.source.splitlines()) <= 4
    assert len(setup.source.splitlines()) <= 8 or setup.metadata.get("jupyter", {}).get(
        "source_hidden"), "a long setup cell must start collapsed"


# -- execution ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem[:2])
def test_notebook_runs_in_test_mode(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("MESA_VIZ_TEST", "1")
    monkeypatch.setenv("MESA_VIZ_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("MESA_VIZ_BENCH_LENGTHS", "96,192")      # notebook 04's sizes: settable
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()                                # raises CellExecutionError on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    tracebacks = [o.text for o in outputs if o.get("name") == "stderr" and "Traceback" in o.text]
    assert not tracebacks, tracebacks
    # no red warnings under the cells (e.g. transformers' "exceeded the model's predefined
    # maximum length" reminder under the passkey sweep past T, or generation-flag warnings)
    warnings = [o.text for o in outputs if o.get("name") == "stderr"
                and any(w in o.text.lower() for w in ("warn", "reminder", "deprecat"))]
    assert not warnings, warnings
    displayed = [o for o in outputs if o.output_type in ("display_data", "execute_result")]
    assert displayed, f"{path.name} displayed nothing"
    widget_views = [o for o in displayed if "application/vnd.jupyter.widget-view+json" in o.data]
    assert widget_views, f"{path.name} shows no widget"
    if path.stem.startswith("04"):
        bench = [r for r in read_jsonl(tmp_path / "out" / "bench.jsonl") if r.get("method")]
        assert sorted({r["length"] for r in bench}) == [96, 192]


# -- notebook 01: layout explorer ------------------------------------------------------------

def test_layout_explorer_opens_on_figure_1():
    ex = widgets.layout_explorer()
    mesa, _ = plots.figure1_layouts()
    np.testing.assert_array_equal(np.nan_to_num(z_of(ex.figures["layout"]), nan=-1),
                                  mesa.relative_positions)
    assert [t.name for t in ex.figures["chunk_plan"].data] == ["first", "middle", "last"]
    assert not ex.controls["chunk_size_auto"].value and ex.controls["chunk_size"].value == 3
    assert ex.controls["window_auto"].value


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
    # back to a method without chunks: the Python figure drops Mesa's marks
    ex.controls["method"].value = "rerope"
    assert not ex.figures["layout"].layout.shapes and not ex.figures["layout"].layout.annotations
    assert ex.figures["chunk_plan"].layout.title.text is None


def test_set_figure_tells_the_browser_what_the_new_figure_lacks():
    """A FigureWidget (explorers with click callbacks keep one) reaches the
    browser by ``Plotly.relayout``, which keeps keys it is not given: the
    shapes, annotations and title of the old figure are sent as null."""
    import plotly.graph_objects as go

    sent = []
    fw = go.FigureWidget()
    fw.observe(lambda change: sent.append(change["new"]), names="_py2js_relayout")
    set_figure(fw, plots.layout_heatmap(mesa_viz.layout("mesa", 13, train_length=8)))
    assert fw.layout.shapes and fw.layout.annotations
    sent.clear()
    set_figure(fw, blank("no chunk plan"))
    nulls = [m["relayout_data"] for m in sent if m and None in m["relayout_data"].values()]
    assert nulls and {"shapes", "title"} <= {k for k, v in nulls[0].items() if v is None}
    assert not fw.layout.shapes and fw.layout.title.text is None


def test_layout_explorer_every_method_in_the_picker_draws():
    ex = widgets.layout_explorer()
    for method in ex.controls["method"].options:
        ex.controls["method"].value = method
        assert "invalid" not in ex.message and "error" not in ex.message, (method, ex.message)
        assert ex.figures["layout"].layout.title.text.startswith(f"{method}: n=13")


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
    from mesa_viz.analyses.passkey import make_sample

    model, tok = tiny_lm
    s = make_sample(tok, 160, depth=0.5, seed=0)
    needle = tuple(s["needle_span"])
    plan = mesa_viz.get_method("mesa").resolve(160, T).plan()
    mid = plan.middle[2][0] + 3                              # a query inside a middle chunk
    ex = widgets.attention_explorer(model, tok, s["input_ids"], methods=["origin", "mesa"],
                                    needle=needle, query_rows=[mid, 159], train_length=T,
                                    layer=0, head=0)
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
    with pytest.raises(ValueError, match="method='stair'"):
        widgets.attention_explorer(model, tok, np.arange(100), method="stair", train_length=T)
    with pytest.raises(ValueError, match="head=9"):
        widgets.attention_explorer(model, tok, np.arange(100), head=9, train_length=T)


@pytest.fixture(scope="module")
def passkey_sample(tiny_lm):
    from mesa_viz.analyses.passkey import make_sample
    return make_sample(tiny_lm[1], 160, depth=0.5, seed=0)


def test_attention_explorer_opens_where_the_needle_is_read(tiny_lm, passkey_sample):
    """Opens on the (layer, head) with the largest needle share of the last
    query under the method shown first; offers the max and mean over heads."""
    model, tok = tiny_lm
    needle = tuple(passkey_sample["needle_span"])
    ex = widgets.attention_explorer(model, tok, passkey_sample["input_ids"],
                                    methods=["origin", "mesa"], method="mesa", needle=needle,
                                    train_length=T)
    tr = ex.cache["mesa"]
    share = tr.needle_share(needle)                                   # [layer, head]
    li, hi = np.unravel_index(share.argmax(), share.shape)
    assert (ex.controls["layer"].value, ex.controls["head"].value) == (tr.layers[li], tr.heads[hi])
    assert f"{share[li, hi]:.2%}" in ex.outputs["needle"].value
    assert [v for _, v in ex.controls["head"].options][:2] == ["max", "mean"]
    row = tr.attention[li, :, 0]                                      # [head, k_pos]
    for reduce, want in (("max", row.max(0)), ("mean", row.mean(0))):
        ex.controls["head"].value = reduce
        ex.controls["log"].value = False
        np.testing.assert_allclose(np.array(ex.figures["attention"].data[0].customdata,
                                            dtype=float)[0], want, rtol=1e-6)
        assert f"{reduce} over heads" in ex.figures["attention"].layout.title.text
    assert f"{share[li].mean():.2%}" in ex.outputs["needle"].value     # mean of the heads' shares
    # the T line marks distance q - T of the query shown
    (t_line,) = [s for s in ex.figures["attention"].layout.shapes if s.name == "train_length"]
    assert t_line.x0 == 159 - T + 0.5


def test_attention_explorer_every_method_in_the_picker_runs(tiny_lm, passkey_sample):
    model, tok = tiny_lm
    methods = list(mesa_viz.METHODS)
    ex = widgets.attention_explorer(model, tok, passkey_sample["input_ids"], methods=methods,
                                    needle=tuple(passkey_sample["needle_span"]), train_length=T)
    for method in methods:
        ex.controls["method"].value = method
        assert "error" not in ex.message and "invalid" not in ex.message, (method, ex.message)
        assert ex.figures["attention"].layout.title.text.startswith(f"{method}: layer")
    assert set(ex.cache) == set(methods)


def test_attention_explorer_shows_busy_state_and_errors(tiny_lm, passkey_sample):
    """While a method is traced the status line says so and the figures are
    greyed and titled; an error raised by the trace is shown in the widget
    (through the public ``trace`` and ``method_params`` arguments)."""
    model, tok = tiny_lm
    seen = []

    def tracer(model, ids, method, **kwargs):
        if holder:                               # the explorer exists: a callback is running
            ex = holder[0]
            fig = ex.figures["attention"]
            seen.append((ex.status, fig.layout.title.text, fig.data[0].opacity))
        if method == "rerope":
            raise RuntimeError("injected failure while tracing rerope")
        return mesa_viz.trace(model, ids, method, **kwargs)

    holder = []
    ex = widgets.attention_explorer(
        model, tok, passkey_sample["input_ids"], methods=["origin", "mesa", "rerope", "stair"],
        method_params={"stair": {"stair_width": 0}}, trace=tracer, train_length=T)
    holder.append(ex)
    assert ex.status == "" and not seen
    ex.controls["method"].value = "mesa"
    ((status, title, opacity),) = seen
    assert "computing mesa" in status and "tracing 160 tokens" in status
    assert title.startswith("busy: computing mesa") and opacity < 0.5
    assert ex.status == "" and ex.figures["attention"].data[0].opacity in (None, 1)
    assert ex.figures["attention"].layout.title.text.startswith("mesa: layer")
    ex.controls["method"].value = "rerope"
    assert "error: RuntimeError: injected failure while tracing rerope" in ex.message
    assert "traceback" in ex.message and ex.status == ""
    title = ex.figures["attention"].layout.title.text
    assert title.startswith("mesa: layer") and "not redrawn: computing rerope" in title
    ex.controls["method"].value = "stair"                 # a real ValueError from the method
    assert "invalid:" in ex.message and "stair_width" in ex.message
    ex.controls["method"].value = "origin"                # cached: drawn, message cleared
    assert "invalid" not in ex.message and "error" not in ex.message
    assert ex.figures["attention"].layout.title.text.startswith("origin: layer")


# -- notebook 03: threshold explorer ----------------------------------------------------------

def test_threshold_explorer_pairs_and_crossings(tiny_lm):
    from mesa_viz.analyses.thresholds import find, order_pairs

    model, tok = tiny_lm
    window = 16
    found = find(model, tok, length=160, methods=["origin", "mesa"], hidden_layers=[1, 2],
                 window=window, min_correlation=0.0, top=3)
    pairs = order_pairs(found.pairs)           # what the explorer lists: origin's crossings first
    traces = found.traces
    ex = widgets.threshold_explorer(found, window=window)
    assert [(p["layer"], p["dim"]) for p in ex.cache["pairs"]] == [(p.layer, p.dim) for p in pairs]
    assert f"origin past T: {pairs[0].past_fraction['origin']:.0%}" in \
        ex.controls["pair"].options[0][0]
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
    # relative mode: (value - threshold) x sign(r), past the threshold is up
    ex.controls["relative"].value = True
    sign = 1.0 if pairs[1].correlation >= 0 else -1.0
    np.testing.assert_allclose(np.array(fig.data[0].y, dtype=float),
                               (raw - pairs[1].threshold) * sign, rtol=1e-6, atol=1e-9)
    assert fig.layout.shapes[1].y0 == 0
    assert "sign(r)" in fig.layout.yaxis.title.text


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

    rows = [dict(kind="point", method=m, length=L, prefill_s=0.1 * L, peak_mem_bytes=L * 2 ** 20,
                 decode_ms_per_token=1.0, oom=False) for m in ("origin", "mesa") for L in (64, 128)]
    rows.append(dict(kind="point", method="origin", length=256, prefill_s=None,
                     peak_mem_bytes=None, decode_ms_per_token=None, oom=True))
    rows.insert(0, dict(kind="machine", method=None, length=None, prefill_s=None,
                        peak_mem_bytes=None, decode_ms_per_token=None, oom=None))
    path = tmp_path / "bench.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ex = widgets.sweep_viewer(path, kind="bench")
    assert ex.controls["methods"].options == ("origin", "mesa")       # not the machine line
    names = [t.name for t in ex.figures["main"].data]
    assert names.count("origin") == 3 and "origin OOM" in names and names.count("mesa") == 3
    with pytest.raises(ValueError, match="kind='x'"):
        widgets.sweep_viewer(rows, kind="x")


# -- notebook 05: why it fails (click a cell; the whole map) ---------------------------------------

@pytest.fixture(scope="module")
def tiny_results(tiny_lm, tmp_path_factory):
    """Real passkey rows of the tiny model, and their file."""
    from mesa_viz.analyses import passkey
    out = tmp_path_factory.mktemp("nb05") / "passkey.jsonl"
    rows = list(passkey.evaluate(*tiny_lm, methods=["origin", "mesa"], lengths=[100, 160],
                                 depths=[0.2, 0.8], samples=1, out=out, max_new_tokens=2))
    return rows, out


def test_failure_explorer_click_draws_the_cells_drill_down(tiny_lm, tiny_results, tmp_path):
    model, tok = tiny_lm
    rows, path = tiny_results
    ex = widgets.failure_explorer(rows, model, tok, saved=tmp_path, max_new_tokens=0)
    assert [t.name for t in ex.figures["cells"].data] == ["origin", "mesa"]
    assert not any(ex.figures[k].data for k in widgets.DRILL_DOWN)
    widgets.click_cell(ex, "mesa", 160, 0.8)                     # through the trace's on_click
    row = ex.controls["seed"].value
    assert (row["method"], row["length"], row["depth"]) == ("mesa", 160, 0.8)
    exp = ex.cache["mesa", 160, 0.8, row["seed"], "origin"]
    assert exp.methods == ["mesa", "origin"] and exp.row == row
    np.testing.assert_allclose(z_of(ex.figures["needle"]), exp.needle_mass()[0])
    assert "heads carrying the needle" in ex.outputs["summary"].value
    assert all(ex.figures[k].data for k in widgets.DRILL_DOWN)
    ex.controls["against"].value = "rerope"                      # another comparison: re-run
    assert ex.cache["mesa", 160, 0.8, row["seed"], "rerope"].methods == ["mesa", "rerope"]
    assert [t.name for t in ex.figures["needle"].data][:2] == ["mesa", "rerope"]
    ex.controls["against"].value = "(default)"
    # the saved drill-downs redraw without the model; an unsaved cell says what is missing
    again = widgets.failure_explorer(path, saved=tmp_path)
    widgets.click_cell(again, "mesa", 160, 0.8)
    np.testing.assert_allclose(z_of(again.figures["needle"]), exp.needle_mass()[0])
    widgets.click_cell(again, "origin", 100, 0.2)
    assert "no saved drill-down" in again.message and "no model" in again.message
    with pytest.raises(ValueError, match="no cell length=999"):
        widgets.click_cell(again, "origin", 999, 0.2)


def test_attention_map_explorer_pickers_zoom_and_saved_maps(tiny_lm, tmp_path):
    from mesa_viz.analyses.passkey import make_sample
    model, tok = tiny_lm
    ids = make_sample(tok, 160, 0.5, 0)["input_ids"]
    ex = widgets.attention_map_explorer(model, ids, grid=40, train_length=T)
    heat = [t for t in ex.figures["map"].data if t.type == "heatmap"]
    assert [t.name for t in heat] == ["mesa", "origin", "difference"]
    forwards = [k for k in ex.cache if len(k) == 2]
    ex.controls["head"].value = 2                                # a head of a captured layer
    assert [k for k in ex.cache if len(k) == 2] == forwards      # no new forward
    want = mesa_viz.attention_map(model, ids, "mesa", layer=0, head=2, grid=40, train_length=T,
                                  progress=False)
    np.testing.assert_allclose(np.array(ex.figures["map"].data[0].customdata, dtype=float),
                               want.values, atol=1e-7)
    ex.controls["queries"].value = (60, 90)
    ex.controls["keys"].value = (0, 30)                          # zoom: one cell a position
    np.testing.assert_allclose(np.array(ex.figures["map"].data[0].customdata, dtype=float),
                               want.zoom((60, 90, 0, 30)).values, atol=1e-7)
    ex.controls["compare"].value = "none"
    assert [t.name for t in ex.figures["map"].data if t.type == "heatmap"] == ["mesa"]
    want.save(tmp_path / "m")
    saved = widgets.attention_map_explorer(maps=[tmp_path / "m"])
    assert saved.controls["method"].options == ("mesa",) and saved.controls["head"].value == 2
    saved.controls["queries"].value = (150, 160)
    assert np.array(saved.figures["map"].data[0].z).shape == (10, 40)
    saved.controls["layer"].options = [0, 1]
    saved.controls["layer"].value = 1
    assert "no saved map of mesa, layer 1, head 2" in saved.message


def test_model_explorers_show_busy_state_and_errors(tiny_lm, tiny_results, tmp_path,
                                                    monkeypatch):
    """The failure explorer and the attention-map explorer say what they run
    while the model runs (figures greyed and titled), and show an error raised
    there in the widget instead of the log console."""
    from mesa_viz.analyses.attention_map import explorer as map_explorer
    from mesa_viz.analyses.explain import explorer as explain_explorer
    from mesa_viz.analyses.passkey import make_sample
    model, tok = tiny_lm
    seen, holder = [], []

    def watch(real, fail, figure):
        def run(*args, **kwargs):
            if holder:
                fig = holder[0].figures[figure]
                seen.append((holder[0].status, fig.layout.title.text))
            if fail(args, kwargs):
                raise RuntimeError("injected failure")
            return real(*args, **kwargs)
        return run

    monkeypatch.setattr(map_explorer, "capture_qk", watch(
        map_explorer.capture_qk, lambda a, k: k.get("layer") == 1, "map"))
    ids = make_sample(tok, 160, 0.5, 0)["input_ids"]
    ex = widgets.attention_map_explorer(model, ids, grid=40, train_length=T)
    holder.append(ex)
    ex.controls["layer"].value = 1
    status, title = seen[0]
    assert "running mesa to layer 1 on 160 tokens" in status and title.startswith("busy:")
    assert "RuntimeError: injected failure" in ex.message and ex.status == ""
    assert "not redrawn" in ex.figures["map"].layout.title.text

    seen.clear()
    holder.clear()
    rows, _ = tiny_results
    monkeypatch.setattr(explain_explorer, "explain", watch(
        explain_explorer.explain, lambda a, k: k.get("against") == "rerope", "needle"))
    fx = widgets.failure_explorer(rows, model, tok, saved=tmp_path, max_new_tokens=0)
    holder.append(fx)
    widgets.click_cell(fx, "mesa", 160, 0.8)
    assert "explaining mesa at 160 tokens against origin" in seen[0][0]
    assert fx.status == "" and fx.figures["needle"].data
    fx.controls["against"].value = "rerope"
    assert "RuntimeError: injected failure" in fx.message and fx.status == ""


def test_notebook_05_clicks_a_cell_then_redraws_without_the_model(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("MESA_VIZ_TEST", "1")
    monkeypatch.setenv("MESA_VIZ_OUT", str(tmp_path / "out"))
    path = ROOT / "notebooks" / "05_why_it_fails.ipynb"
    for no_model in ("0", "1"):                       # run, then redraw from what it saved
        monkeypatch.setenv("MESA_VIZ_NO_MODEL", no_model)
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
        text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                       for o in c.outputs)
        assert "heads carrying the needle under" in text, no_model
        assert "cells shown: (64, 64)" in text or "cells shown: (32, 64)" in text, text[-400:]
    assert list((tmp_path / "out" / "explain").glob("explain_*.npz"))
    assert len(list((tmp_path / "out" / "maps").glob("map_*.npz"))) == 2
