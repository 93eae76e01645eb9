"""mesa_viz.plots on small synthetic arrays and real layouts: traces, shapes,
downsampling, reference lines, HTML output and errors for bad input."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
import pytest

import mesa_viz
from mesa_viz import plots
from mesa_viz.methods import ChunkPlan

pytestmark = pytest.mark.unit

PLOTS_SRC = Path(plots.__file__)


@pytest.fixture(autouse=True)
def _quiet_layout_warnings(caplog):
    caplog.set_level(logging.ERROR, logger="mesa_viz.layouts")


def figure1_mesa():
    """Figure 1 (left) of the paper: n=13, first chunk 2, middle chunks of 3, last 2."""
    return mesa_viz.layout("mesa", 13, train_length=5, first_chunk=2, chunk_size=3,
                           last_chunk=2, stair_start=2, stair_width=2)


def attention_rows(n_rows=3, width=16500, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random((n_rows, width)) ** 8
    return a / a.sum(axis=1, keepdims=True)


def shape_names(fig):
    return [s.name for s in fig.layout.shapes]


# -- architecture ------------------------------------------------------------------

def test_plots_imports_no_torch_transformers_or_widgets():
    tree = ast.parse(PLOTS_SRC.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"torch", "transformers", "ipywidgets", "IPython"}
    assert ".show(" not in PLOTS_SRC.read_text()


# -- layouts -------------------------------------------------------------------------

def test_layout_heatmap_masks_and_values():
    lay = figure1_mesa()
    fig = plots.layout_heatmap(lay)
    assert isinstance(fig, go.Figure)
    (hm,) = fig.data
    z = np.array(hm.z, dtype=float)
    assert z.shape == (13, 13)
    assert np.isnan(z[~lay.mask]).all()
    np.testing.assert_array_equal(z[lay.mask], lay.relative_positions[lay.mask])
    # the paper's last chunk row 11: stair positions 6 6 5 5 4 4 3 3 2 2 1 0
    np.testing.assert_array_equal(z[11, :12], [6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 0])
    assert "q=" in hm.hovertemplate and "k=" in hm.hovertemplate
    assert "relative position" in hm.hovertemplate


def test_layout_heatmap_annotates_chunk_boundaries():
    fig = plots.layout_heatmap(figure1_mesa())
    starts = {s.x0 + 0.5 for s in fig.layout.shapes if s.xref == "x"}
    assert starts == {2, 5, 8, 11}
    labels = [a.text for a in fig.layout.annotations]
    assert labels.count("middle") == 3 and "first" in labels and "last" in labels
    # no chunk plan -> no boundaries
    assert not plots.layout_heatmap(mesa_viz.layout("origin", 13)).layout.shapes


def test_layout_heatmap_samples_long_layouts():
    lay = mesa_viz.layout("origin", 1200, train_length=600)
    (hm,) = plots.layout_heatmap(lay).data
    z = np.array(hm.z, dtype=float)
    assert max(z.shape) <= plots.MAX_LAYOUT_SIDE
    np.testing.assert_array_equal(np.asarray(hm.x)[:3], [0, 3, 6])
    assert z[-1, 0] == hm.y[-1]          # origin: relative position q - 0 at the sampled row


def test_layouts_side_by_side_share_colour_scale():
    lays = [mesa_viz.layout(m, 24, train_length=10) for m in mesa_viz.METHODS]
    fig = plots.layouts_side_by_side(lays)
    assert len(fig.data) == len(lays)
    assert {t.coloraxis for t in fig.data} == {"coloraxis"}
    assert fig.layout.coloraxis.cmax == max(l.max_relative_position for l in lays)
    assert [a.text.split(":")[0] for a in fig.layout.annotations] == [l.method for l in lays]


def test_layout_difference_values_and_mask_marks():
    a, b = figure1_mesa(), mesa_viz.layout("origin", 13, train_length=5)
    fig = plots.layout_difference(a, b)
    diff, only = (np.array(t.z, dtype=float) for t in fig.data)
    both = a.mask & b.mask
    np.testing.assert_array_equal(diff[both], (a.relative_positions - b.relative_positions)[both])
    assert np.isnan(diff[~both]).all()
    # Mesa's middle chunks do not see earlier middle chunks: origin only
    assert (only[b.mask & ~a.mask] == -1).all() and (b.mask & ~a.mask).any()
    assert np.isnan(only[a.mask == b.mask]).all()


def test_chunk_plan_figure_bars():
    fig = plots.chunk_plan_figure(figure1_mesa())
    assert [t.name for t in fig.data] == ["first", "middle", "last"]
    first, middle, last = fig.data
    assert list(first.base) == [0] and list(first.x) == [2]
    assert list(middle.base) == [2, 5, 8] and list(middle.x) == [3, 3, 3]
    assert list(last.base) == [11] and list(last.x) == [2]
    assert "tokens [" in middle.hovertemplate
    fig2 = plots.chunk_plan_figure([(0, 2), (2, 7)], seq_len=7)
    assert [t.name for t in fig2.data] == ["first", "last"]
    whole = plots.chunk_plan_figure(ChunkPlan(((0, 9),)))
    assert [t.name for t in whole.data] == ["whole"]


@pytest.mark.parametrize("bad, match", [
    ([(0, 2), (3, 5)], "contiguous"),
    ([(1, 4)], "start at 0"),
    ([(0, 0)], "non-empty"),
    ("nonsense", "allowed a Layout"),
])
def test_chunk_plan_figure_rejects_bad_plans(bad, match):
    with pytest.raises(ValueError, match=match):
        plots.chunk_plan_figure(bad)


def test_chunk_plan_figure_errors():
    with pytest.raises(ValueError, match="no chunk plan"):
        plots.chunk_plan_figure(mesa_viz.layout("rerope", 10, train_length=6))
    with pytest.raises(ValueError, match="seq_len=9"):
        plots.chunk_plan_figure([(0, 2), (2, 7)], seq_len=9)


def test_layout_errors():
    with pytest.raises(ValueError, match="mesa_viz.Layout"):
        plots.layout_heatmap(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="seq_len differs"):
        plots.layout_difference(mesa_viz.layout("origin", 5), mesa_viz.layout("origin", 6))
    with pytest.raises(ValueError, match="empty"):
        plots.layouts_side_by_side([])


# -- attention ---------------------------------------------------------------------

def test_attention_heatmap_downsamples_wide_rows():
    a = attention_rows()
    fig = plots.attention_heatmap(a, query_rows=[16000, 16200, 16499])
    (hm,) = fig.data
    z = np.array(hm.z, dtype=float)
    assert z.shape[0] == 3 and z.shape[1] <= plots.MAX_COLUMNS
    kb = fig.layout.meta["key_block"]
    assert kb == int(np.ceil(16500 / plots.MAX_COLUMNS))
    raw = np.array(hm.customdata, dtype=float)
    np.testing.assert_allclose(raw[:, 0], a[:, :kb].max(axis=1))          # block max
    np.testing.assert_allclose(z, np.log10(np.maximum(raw, 1e-6)))          # log colour
    assert list(hm.y) == ["16000", "16200", "16499"]


def test_attention_heatmap_mean_reduction_and_explicit_block():
    a = attention_rows(2, 1000)
    fig = plots.attention_heatmap(a, block=10, reduce="mean", log_color=False)
    z = np.array(fig.data[0].z, dtype=float)
    assert z.shape == (2, 100)
    np.testing.assert_allclose(z, a.reshape(2, 100, 10).mean(axis=2))
    np.testing.assert_allclose(z.sum(axis=1) * 10, 1.0)


def test_attention_heatmap_downsamples_many_query_rows():
    a = attention_rows(1000, 200)
    fig = plots.attention_heatmap(a)
    assert len(fig.data[0].z) <= plots.MAX_ROWS
    assert fig.layout.meta["query_block"] == 3


def test_attention_heatmap_window_is_exact():
    a = attention_rows()
    fig = plots.attention_heatmap(a, window=(8000, 8300), log_color=False)
    z = np.array(fig.data[0].z, dtype=float)
    np.testing.assert_array_equal(z, a[:, 8000:8300])
    np.testing.assert_array_equal(fig.data[0].x, np.arange(8000, 8300))
    assert fig.layout.meta["key_block"] == 1


def test_attention_heatmap_marks_and_train_length():
    a = attention_rows()
    fig = plots.attention_heatmap(a, marks={"needle": (8000, 8020)}, train_length=8192)
    assert shape_names(fig) == ["needle", "train_length"]
    needle, tl = fig.layout.shapes
    assert (needle.x0, needle.x1) == (7999.5, 8019.5)
    assert tl.x0 == tl.x1 == 8191.5
    # a mark outside the window is not drawn
    zoom = plots.attention_heatmap(a, marks={"needle": (8000, 8020)}, window=(0, 100))
    assert not zoom.layout.shapes


@pytest.mark.parametrize("kwargs, match", [
    (dict(attn=np.zeros((2, 3, 4))), r"\[q_row, k_pos\]"),
    (dict(attn=np.zeros((2, 10)), query_rows=[1]), "query_rows has 1"),
    (dict(attn=np.zeros((2, 10)), window=(5, 20)), "window=.*out of range.*<= 10"),
    (dict(attn=np.zeros((2, 10)), window=(5, 5)), "out of range"),
    (dict(attn=np.zeros((2, 10)), reduce="median"), "reduce='median'"),
    (dict(attn=np.zeros((2, 10)), block=0), "block=0"),
])
def test_attention_heatmap_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plots.attention_heatmap(**kwargs)


def test_attention_by_distance_mass():
    n = 300
    rows = [99, 299]
    a = np.zeros((2, n))
    a[0, 99], a[0, 0] = 0.5, 0.5            # distance 0 and 99
    a[1, 290:300] = 0.1                     # distances 0..9
    fig = plots.attention_by_distance(a, rows, bins=8, train_length=64)
    assert [t.name for t in fig.data] == ["q=99", "q=299"]
    for t, row in zip(fig.data, a):
        np.testing.assert_allclose(np.sum(t.y), row.sum())
    edges = np.array(fig.data[0].customdata)[:, 0]
    assert edges[0] == 0 and np.all(np.diff(edges) > 0)
    assert fig.layout.xaxis.type == "log"
    assert shape_names(fig) == ["train_length"]
    assert fig.layout.shapes[0].x0 == pytest.approx(np.log10(64))     # log axis: log10 units
    mean = plots.attention_by_distance(a, rows, bins=[0, 1, 10, 100, 300], mean=True)
    (t,) = mean.data
    np.testing.assert_allclose(t.y, [0.3, 0.45, 0.25, 0.0])


def test_attention_by_distance_errors():
    with pytest.raises(ValueError, match="query_rows must lie"):
        plots.attention_by_distance(np.zeros((1, 10)), [10])
    with pytest.raises(ValueError, match="bins="):
        plots.attention_by_distance(np.zeros((1, 10)), [9], bins=[3, 1])


# -- hidden states ----------------------------------------------------------------------

def test_hidden_state_figure_lines_and_threshold():
    x = np.arange(200, dtype=float)
    fig = plots.hidden_state_figure({"origin": x / 100, "mesa": np.minimum(x, 100) / 100},
                                    train_length=100, threshold=1.0, title="layer 1, dim 6")
    assert [t.name for t in fig.data] == ["origin", "mesa"]
    np.testing.assert_array_equal(fig.data[0].y, x / 100)
    tl, th = fig.layout.shapes
    assert (tl.name, tl.x0, tl.x1) == ("train_length", 100, 100)
    assert (th.name, th.y0, th.y1) == ("threshold", 1.0, 1.0)
    assert fig.layout.title.text == "layer 1, dim 6"
    no_thr = plots.hidden_state_figure({"origin": x}, train_length=50)
    assert shape_names(no_thr) == ["train_length"]


def test_hidden_state_figure_envelope_keeps_extremes():
    rng = np.random.default_rng(1)
    y = rng.normal(size=20000)
    y[12345] = 50.0
    fig = plots.hidden_state_figure({"origin": y}, train_length=8192, max_points=1000)
    (t,) = fig.data
    assert len(t.y) <= 1000 + 20
    assert max(t.y) == 50.0 and min(t.y) == y.min()
    assert 12345 in list(t.x)
    assert np.all(np.diff(t.x) > 0)


def test_hidden_state_figure_smooth_and_positions():
    y = np.r_[np.zeros(10), np.ones(10)]
    fig = plots.hidden_state_figure({"m": y}, train_length=5, positions=np.arange(100, 120),
                                    smooth=4)
    assert fig.data[0].x[0] == 100
    np.testing.assert_allclose(fig.data[0].y[8:14], [0, 0, 0.25, 0.5, 0.75, 1])  # trailing


@pytest.mark.parametrize("values, kwargs, match", [
    ({}, {}, "empty"),
    ({"m": np.zeros((3, 3))}, {}, r"allowed \[pos\]"),
    ({"m": np.zeros(5)}, {"positions": np.arange(4)}, "positions has 4"),
    ({"m": np.zeros(5)}, {"smooth": 2.5}, "smooth=2.5"),
])
def test_hidden_state_figure_errors(values, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plots.hidden_state_figure(values, train_length=3, **kwargs)


# -- passkey / bench ---------------------------------------------------------------------

def passkey_rows():
    rows = []
    for method, ok_until in (("origin", 200), ("mesa", 10 ** 9)):
        for length in (100, 200, 400):
            for depth in (0.0, 0.5, 1.0):
                for seed in range(2):
                    correct = length <= ok_until and not (method == "mesa" and seed and depth == 1.0)
                    rows.append(dict(method=method, length=length, depth=depth, seed=seed,
                                     correct=correct))
    return rows


def test_passkey_heatmap_accuracy_grid():
    fig = plots.passkey_heatmap(passkey_rows())
    assert [t.name for t in fig.data] == ["origin", "mesa"]
    origin, mesa = (np.array(t.z, dtype=float) for t in fig.data)
    assert origin.shape == (3, 3)                    # depth x length
    np.testing.assert_array_equal(origin[:, :2], 1.0)
    np.testing.assert_array_equal(origin[:, 2], 0.0)
    np.testing.assert_array_equal(mesa[2], 0.5)      # depth 1.0: 1 of 2 seeds
    assert list(fig.data[0].x) == ["100", "200", "400"]
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == 1


def test_passkey_heatmap_leaves_missing_cells_blank():
    rows = [dict(method="m", length=10, depth=0.0, correct=True),
            dict(method="m", length=20, depth=1.0, correct=False)]
    z = np.array(plots.passkey_heatmap(rows).data[0].z, dtype=float)
    assert np.isnan(z[0, 1]) and np.isnan(z[1, 0]) and z[0, 0] == 1 and z[1, 1] == 0


def test_passkey_accuracy_lines():
    fig = plots.passkey_accuracy_lines(passkey_rows(), train_length=256)
    origin, mesa = fig.data
    assert list(origin.x) == [100, 200, 400]
    np.testing.assert_allclose(origin.y, [1, 1, 0])
    np.testing.assert_allclose(mesa.y, [5 / 6] * 3)
    assert shape_names(fig) == ["train_length"]
    assert fig.layout.shapes[0].x0 == pytest.approx(np.log10(256))


@pytest.mark.parametrize("rows, match", [
    ([], "empty"),
    ([dict(method="m", length=1, depth=0)], r"lacks \['correct'\]"),
    (["row"], "allowed dict"),
])
def test_passkey_errors(rows, match):
    with pytest.raises(ValueError, match=match):
        plots.passkey_heatmap(rows)


def bench_rows():
    rows = [dict(method=m, length=L, prefill_s=L * k / 1000, peak_mem_bytes=L * k * 2 ** 20,
                 decode_ms_per_token=5.0 * k)
            for m, k in (("origin", 4), ("mesa", 1)) for L in (1000, 2000, 4000)]
    rows.append(dict(method="origin", length=8000, oom=True, prefill_s=None, peak_mem_bytes=None,
                     decode_ms_per_token=None, predicted_mem_bytes=64 * 2 ** 30))
    rows.append(dict(method="mesa", length=8000, prefill_s=8.0, peak_mem_bytes=8000 * 2 ** 20,
                     decode_ms_per_token=5.0))
    return rows


def test_bench_figure_bars_lines_and_oom():
    fig = plots.bench_figure(bench_rows())
    names = [(t.type, t.name) for t in fig.data]
    assert names == [("bar", "origin"), ("scatter", "origin"), ("scatter", "origin"),
                     ("scatter", "origin OOM"), ("bar", "mesa"), ("scatter", "mesa"),
                     ("scatter", "mesa")]
    bar_origin = fig.data[0]
    assert list(bar_origin.x) == ["1000", "2000", "4000"]
    np.testing.assert_allclose(bar_origin.y, np.array([1000, 2000, 4000]) * 4 / 1024)
    oom = fig.data[3]
    assert list(oom.text) == ["OOM"] and list(oom.x) == ["8000"] and oom.y[0] == 64.0
    np.testing.assert_allclose(fig.data[5].y, [1, 2, 4, 8])         # mesa prefill seconds
    assert fig.layout.barmode == "group"
    assert fig.layout.xaxis2.type == "log"


def test_bench_figure_ignores_machine_and_skipped_rows():
    rows = [{"kind": "machine", "matmul_gflops": 50.0}, *bench_rows(),
            dict(kind="point", method="mesa", length=16000, skipped="time budget spent",
                 prefill_s=None, peak_mem_bytes=None, decode_ms_per_token=None)]
    fig = plots.bench_figure(rows)
    assert list(fig.data[4].x) == ["1000", "2000", "4000", "8000"]      # mesa bars


def test_bench_figure_errors():
    with pytest.raises(ValueError, match=r"lacks \['length'\]"):
        plots.bench_figure([dict(method="m")])


# -- html ------------------------------------------------------------------------------

def test_save_html_is_self_contained(tmp_path):
    figs = [plots.layout_heatmap(figure1_mesa()), "<h2>section</h2>",
            plots.chunk_plan_figure(figure1_mesa())]
    path = plots.save_html(figs, tmp_path / "sub" / "r.html", title="T & <x>")
    text = path.read_text()
    assert text.count("<h2>section</h2>") == 1
    assert "<title>T &amp; &lt;x&gt;</title>" in text
    assert text.count("Plotly.newPlot") == 2
    assert "<script src=" not in text                  # nothing fetched at load
    bundle = len(get_plotlyjs())
    assert bundle < len(text) < 2 * bundle               # plotly.js inlined, once
    one = plots.save_html(figs[0], tmp_path / "one.html")
    assert one.read_text().count("Plotly.newPlot") == 1


def test_save_html_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plots.save_html([], tmp_path / "x.html")
    with pytest.raises(ValueError, match=r"fig_or_figs\[0\] is int"):
        plots.save_html([3], tmp_path / "x.html")


def test_method_colors_are_stable():
    assert plots.method_color("mesa") == plots.method_color("mesa")
    assert len({plots.method_color(m) for m in mesa_viz.METHODS}) == len(mesa_viz.METHODS)
    assert plots.method_color("something-else").startswith("#")
