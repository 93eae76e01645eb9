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
from plotly.subplots import make_subplots

import mesa_viz
from mesa_viz import plots
from mesa_viz.methods import ChunkPlan


PLOTS_SRC = Path(plots.__file__)


@pytest.fixture(autouse=True)
def _quiet_layout_warnings(caplog):
    caplog.set_level(logging.ERROR, logger="mesa_viz.methods.layouts")


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


def annotation(fig, name):
    (a,) = [a for a in fig.layout.annotations if a.name == name]
    return a


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
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert {s.x0 + 0.5 for s in lines if s.xref == "x"} == {2, 5, 8, 11}      # keys
    assert {s.y0 + 0.5 for s in lines if s.yref == "y"} == {2, 5, 8, 11}      # queries
    spans = {s.name: (s.x0 + 0.5, s.x1 + 0.5) for s in fig.layout.shapes if s.type == "rect"}
    assert spans["chunk first 0"] == (0, 2) and spans["chunk last 11"] == (11, 13)
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
    # rows without query positions: each row is the query at the last key (16499), so
    # keys at distance >= T are k <= 16499 - 8192 (the old line sat at key T itself)
    fig = plots.attention_heatmap(a, marks={"needle": (8000, 8020)}, train_length=8192)
    assert shape_names(fig) == ["needle", "train_length"]
    needle, tl = fig.layout.shapes
    assert (needle.x0, needle.x1) == (7999.5, 8019.5)
    assert tl.x0 == tl.x1 == 16499 - 8192 + 0.5
    assert "q=16499" in annotation(fig, "train_length").text
    # a mark outside the window is not drawn; its label stays as a note at the edge
    zoom = plots.attention_heatmap(a, marks={"needle": (8000, 8020)}, window=(0, 100))
    assert not zoom.layout.shapes
    note = annotation(zoom, "needle")
    assert note.xref == "x domain" and note.x == 1 and "▶" in note.text


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
    assert shape_names(fig) == ["train_length", "distance >= T"]
    assert fig.layout.shapes[0].x0 == 64                  # shapes take data values on log axes
    assert annotation(fig, "train_length").x == pytest.approx(np.log10(64))   # labels log10
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
    ({"m": np.zeros(5)}, {"smooth": 2.5}, "window=2.5"),
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
                    correct = length <= ok_until and not (
                        method == "mesa" and seed and depth == 1.0)
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


def test_passkey_heatmap_shows_cells_never_run_as_not_run():
    rows = [dict(method="m", length=10, depth=0.0, correct=True),
            dict(method="m", length=20, depth=1.0, correct=False)]
    fig = plots.passkey_heatmap(rows)
    z = np.array(fig.data[0].z, dtype=float)
    assert np.isnan(z[0, 1]) and np.isnan(z[1, 0]) and z[0, 0] == 1 and z[1, 1] == 0
    (grey,) = [t for t in fig.data if t.name == "not run"]     # drawn, not the background
    cover = np.isfinite(np.array(grey.z, dtype=float))
    assert cover.tolist() == [[False, True], [True, False]]
    assert [list(r) for r in grey.text] == [["", "not run"], ["not run", ""]]
    assert [t.name for t in fig.data if t.showlegend] == ["not run (grey)"]
    full = plots.passkey_heatmap(rows + [dict(method="m", length=20, depth=0.0, correct=1),
                                         dict(method="m", length=10, depth=1.0, correct=1)])
    assert [t.name for t in full.data] == ["m"]                # nothing missing: no key


def test_passkey_heatmap_marks_cells_whose_needle_was_cut():
    rows = [dict(method="mesa", length=9216, depth=d, seed=s, correct=d != 0.5,
                 needle_cuts=[4608] if d == 0.5 and s else [])
            for d in (0.1, 0.5) for s in range(4)] + [dict(method="origin", length=9216,
                                                           depth=0.5, correct=True)]
    mesa, origin = plots.passkey_heatmap(rows).data[:2]
    assert [list(r) for r in mesa.text] == [["100%"], ["0% ✂"]]
    assert np.array(mesa.customdata).tolist() == [[[4, 0]], [[4, 3]]]      # n, cut
    assert [list(r) for r in origin.text] == [[""], ["100%"]] and "cut" in mesa.hovertemplate
    # a row written before the field: the cut comes from its method, params and needle span
    old = dict(method="mesa", length=8704, depth=0.5, correct=False, needle_span=[4349, 4374],
               params=dict(train_length=8192, first_chunk=512, chunk_size=960, last_chunk=512))
    assert [list(r) for r in plots.passkey_heatmap([old]).data[0].text] == [["0% ✂"]]


def test_passkey_accuracy_lines():
    fig = plots.passkey_accuracy_lines(passkey_rows(), train_length=256)
    origin, mesa = fig.data
    assert list(origin.x) == [100, 200, 400]
    np.testing.assert_allclose(origin.y, [1, 1, 0])
    np.testing.assert_allclose(mesa.y, [5 / 6] * 3)
    assert shape_names(fig) == ["train_length"]
    assert fig.layout.shapes[0].x0 == 256                 # data value (the old code: log10)
    assert annotation(fig, "train_length").x == pytest.approx(np.log10(256))


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


# -- the marker helper ---------------------------------------------------------------------

def line_figure(x, log=False):
    fig = go.Figure(go.Scatter(x=x, y=np.arange(len(x)), mode="lines+markers"))
    fig.update_xaxes(type="log" if log else "linear")
    return fig


def data_ref_coordinates(fig, letter="x"):
    """Every coordinate a shape or annotation puts on the data axis ``letter``
    (annotations on a log axis converted back from log10)."""
    log = fig.layout[f"{letter}axis"].type == "log"
    out = [v for s in fig.layout.shapes if s[f"{letter}ref"] == letter
           for v in (s[f"{letter}0"], s[f"{letter}1"])]
    out += [10 ** a[letter] if log else a[letter] for a in fig.layout.annotations
            if a[f"{letter}ref"] == letter]
    return out


@pytest.mark.parametrize("log", [False, True])
def test_mark_line_on_linear_and_log_axes(log):
    fig = line_figure([1000, 2000, 4000, 16000, 32000], log=log)
    assert plots.mark(fig, 8192, name="train_length", label="T=8192") is True
    (shape,) = fig.layout.shapes
    assert (shape.name, shape.type, shape.xref, shape.yref) == ("train_length", "line", "x",
                                                                "y domain")
    assert shape.x0 == shape.x1 == 8192                   # shapes: data values on any axis
    label = annotation(fig, "train_length")
    assert label.x == pytest.approx(np.log10(8192) if log else 8192)     # labels: log10 on log
    assert label.text == "T=8192" and label.yref == "y domain"
    assert label.bgcolor and label.bordercolor            # a light box: readable on dark maps
    # 8192 is in the right half of [1000, 32000] on a log axis and the left half on a
    # linear one: the label runs toward the middle of the plot
    assert label.xanchor == ("right" if log else "left")


@pytest.mark.parametrize("log", [False, True])
def test_mark_outside_the_data_draws_no_shape_and_keeps_the_range(log):
    fig = line_figure([2000, 4000, 8000], log=log)
    before = plots.axis_info(fig, "x")
    assert plots.mark(fig, 16384, name="train_length", label="T=16384") is False
    assert plots.mark(fig, 100, name="low", label="low") is False
    assert plots.mark(fig, 500, to=1000, name="span") is False        # span outside: nothing
    assert not fig.layout.shapes
    assert not data_ref_coordinates(fig)                 # nothing in data units to stretch
    notes = {a.name: a for a in fig.layout.annotations}
    assert notes["train_length"].xref == "x domain" and notes["train_length"].x == 1
    assert notes["train_length"].text == "T=16384 ▶"
    assert notes["low"].x == 0 and notes["low"].text == "◀ low"
    after = plots.axis_info(fig, "x")
    assert (after.lo, after.hi) == (before.lo, before.hi) == (2000, 8000)


def test_mark_span_is_clipped_to_the_data():
    fig = line_figure([0, 10, 20, 30])
    assert plots.mark(fig, 25, to=99, name="beyond", label="beyond", fill_opacity=0.2)
    (s,) = fig.layout.shapes
    assert (s.type, s.x0, s.x1, s.opacity) == ("rect", 25, 30, 0.2)
    assert max(data_ref_coordinates(fig)) <= 30
    label = annotation(fig, "beyond")
    assert (label.x, label.xanchor) == (30, "right")      # inside the span, from its outer end


def test_mark_on_y_axis_and_in_subplots():
    fig = make_subplots(rows=1, cols=2)
    fig.add_trace(go.Scatter(x=[0, 1, 2], y=[0.5, 1.5, 2.5]), row=1, col=1)
    fig.add_trace(go.Scatter(x=[10, 100, 1000], y=[1, 2, 3]), row=1, col=2)
    fig.update_xaxes(type="log", row=1, col=2)
    assert plots.mark(fig, 2.0, axis="y", name="threshold", label="thr", row=1, col=1)
    assert plots.mark(fig, 50, name="T", label="T", row=1, col=2)
    thr, T = fig.layout.shapes
    assert (thr.yref, thr.y0, thr.xref) == ("y", 2.0, "x domain")
    assert (T.xref, T.x0, T.yref) == ("x2", 50, "y2 domain")
    assert annotation(fig, "T").x == pytest.approx(
        np.log10(50)) and annotation(fig, "T").xref == "x2"
    assert annotation(fig, "threshold").y == 2.0


def test_mark_on_category_axes():
    fig = go.Figure(go.Heatmap(z=np.zeros((2, 3)), x=["4096", "8192", "16384"], y=["a", "b"]))
    fig.update_xaxes(type="category")
    info = plots.axis_info(fig, "x")
    assert (info.type, info.lo, info.hi, info.categories) == ("category", -0.5, 2.5,
                                                              ("4096", "8192", "16384"))
    # numeric-looking names are passed to plotly as indices (plotly.js reads "8192" as 8192)
    assert plots.mark(fig, "8192", name="name")
    assert plots.mark(fig, plots.category_boundary([4096, 8192, 16384], 8192), name="T",
                      label="T")
    assert plots.mark(fig, 1.0, axis="y", name="row b")              # y auto-typed: text
    by_name = {s.name: s for s in fig.layout.shapes}
    assert by_name["name"].x0 == 1.0 and by_name["T"].x0 == 1.5 and by_name["row b"].y0 == 1.0
    assert plots.category_boundary([4096, 8192], 100) == -0.5
    assert plots.category_boundary([4096, 8192], 10 ** 6) == 1.5


def test_mark_reversed_axis_edge_note_side():
    fig = go.Figure(go.Heatmap(z=np.zeros((4, 4))))
    fig.update_yaxes(autorange="reversed")
    info = plots.axis_info(fig, "y")
    assert info.reversed and (info.lo, info.hi) == (-0.5, 3.5)
    plots.mark(fig, 10, axis="y", name="below", label="below")     # past the end: drawn low
    note = annotation(fig, "below")
    assert (note.y, note.text) == (0, "▼ below")


@pytest.mark.parametrize("kwargs, match", [
    (dict(at=5, name="m", axis="z"), "axis='z'"),
    (dict(at=5, name=""), "name is empty"),
    (dict(at=-1, name="m"), "log axis"),
    (dict(at=5, name="m", row=1), "row=1, col=None"),
    (dict(at=5, name="m", label_at=2), "label_at=2"),
])
def test_mark_errors(kwargs, match):
    fig = line_figure([1, 10, 100], log=True)
    with pytest.raises(ValueError, match=match):
        plots.mark(fig, **kwargs)


def test_mark_needs_data_first_and_known_categories():
    with pytest.raises(ValueError, match="nothing is drawn on xaxis"):
        plots.mark(go.Figure(), 3, name="m")
    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))
    with pytest.raises(ValueError, match="'c' is not a category"):
        plots.mark(fig, "c", name="m")


def test_plots_marks_only_through_the_helper():
    src = PLOTS_SRC.read_text()
    for call in ("add_vline(", "add_hline(", "add_vrect(", "add_hrect(", "_log_vline"):
        assert call not in src, f"plots.py marks with {call} instead of mark()"


# -- distance, attention rows, thresholds, sweeps ------------------------------------------

def test_attention_by_distance_has_an_edge_at_T_and_reports_mass_beyond():
    n, T = 5000, 1000
    rng = np.random.default_rng(3)
    a = rng.random((2, n))
    a /= a.sum(axis=1, keepdims=True)
    rows = [n - 1, 2500]
    for bins in (24, 5, [0, 10, 100, 4000, 5000]):
        fig = plots.attention_by_distance(a, rows, bins=bins, train_length=T)
        edges = np.array(fig.data[0].customdata, dtype=float)
        assert T in edges[:, 0]                              # a bin starts exactly at T
        assert not np.any((edges[:, 0] < T) & (edges[:, 1] > T))     # none straddles T
        d = np.array(rows)[:, None] - np.arange(n)[None, :]
        expect = (a * (d >= T)).sum(axis=1)
        far = edges[:, 0] >= T
        for t, e in zip(fig.data, expect):
            assert np.sum(np.asarray(t.y)[far]) == pytest.approx(e)
            assert fig.layout.meta["mass_beyond_train_length"][t.name] == pytest.approx(e)
        assert f"{expect[0]:.2%}" in fig.layout.title.subtitle.text
        span = next(s for s in fig.layout.shapes if s.name == "distance >= T")
        assert span.type == "rect" and span.x0 == T and span.x1 > T
        assert min(t.x[list(far).index(True)] for t in fig.data) > T    # points past the line


def test_attention_by_distance_linear_axis_and_T_beyond_all_distances():
    a = np.full((1, 100), 0.01)
    fig = plots.attention_by_distance(a, [99], train_length=40, log_x=False)
    assert fig.layout.xaxis.type == "linear"
    assert annotation(fig, "train_length").x == 40
    short = plots.attention_by_distance(a, [99], train_length=500)
    assert not short.layout.shapes and "no bin reaches" in short.layout.title.subtitle.text
    assert annotation(short, "train_length").text == "T=500 ▶"


def test_attention_heatmap_marks_distance_T_per_row():
    a = attention_rows(4, 3000)
    T = 1000
    fig = plots.attention_heatmap(a, query_rows=[500, 1500, 2500, 2999], train_length=T)
    segs = [s for s in fig.layout.shapes if s.name == "train_length"]
    assert [s.x0 for s in segs] == [1500 - T + 0.5, 2500 - T + 0.5, 2999 - T + 0.5]
    assert [(s.y0, s.y1) for s in segs] == [(0.5, 1.5), (1.5, 2.5), (2.5, 3.5)]  # rows 1..3
    assert "distance ≥ T" in annotation(fig, "train_length").text
    # explicit query positions for rows labelled by layer; all rows share q: one line
    lay = plots.attention_heatmap(a, ["layer 0", "layer 1", "layer 2", "layer 3"],
                                  query_positions=[2999] * 4, train_length=T)
    (line,) = lay.layout.shapes
    assert line.x0 == 2999 - T + 0.5 and line.yref == "y domain"
    none = plots.attention_heatmap(a, query_rows=[10, 20, 30, 40], train_length=T)
    assert not none.layout.shapes                        # no row reaches distance T
    with pytest.raises(ValueError, match="query_positions"):
        plots.attention_heatmap(a, query_positions=[1, 2], train_length=T)


def test_attention_heatmap_block_centres():
    a = attention_rows(1, 1000)
    fig = plots.attention_heatmap(a, block=10)
    x = np.asarray(fig.data[0].x)
    assert x[0] == 4.5 and x[1] == 14.5                  # block [0, 10) centred at 4.5


def hidden_curves(n=4000, T=2000):
    pos = np.arange(n, dtype=float)
    origin = np.log1p(pos) / 10
    origin[T:] += np.linspace(0, 0.2, n - T)
    mesa = np.log1p(np.minimum(pos, T)) / 10
    origin[0] = mesa[0] = 50.0                           # the position-0 transient
    return {"origin": origin, "mesa": mesa}


def test_hidden_state_zoom_excludes_the_transient_and_includes_threshold():
    values = hidden_curves()
    thr = float(np.log1p(2000) / 10)
    fig = plots.hidden_state_figure(values, 2000, threshold=thr, smooth=16)
    lo, hi = fig.layout.yaxis.range
    assert hi < 5                                          # not the transient's 50/16
    assert lo <= thr <= hi
    tail = np.concatenate([plots.smooth_values(v, 16)[16:] for v in values.values()])
    assert lo < np.percentile(tail, 1) and hi > np.percentile(tail, 99)
    assert "clipped" in fig.layout.title.subtitle.text
    assert plots.trend_range([np.r_[100.0, np.zeros(50)]], 1, include=3.0)[:2] == (
        pytest.approx(-0.15), pytest.approx(3.15))
    full = plots.hidden_state_figure(values, 2000, threshold=thr, smooth=16, zoom=False)
    assert full.layout.yaxis.range is None
    # a threshold far above the trend stays inside the zoomed range
    high = plots.hidden_state_figure(values, 2000, threshold=3.0, smooth=16)
    assert high.layout.yaxis.range[1] > 3.0


def test_hidden_state_relative_to_threshold():
    values = hidden_curves()
    thr = 0.5
    up = plots.hidden_state_figure(values, 2000, threshold=thr, relative=True, correlation=0.9,
                                   zoom=False)
    np.testing.assert_allclose(up.data[0].y, values["origin"] - thr)
    down = plots.hidden_state_figure(values, 2000, threshold=thr, relative=True,
                                     correlation=-0.9, zoom=False)
    np.testing.assert_allclose(down.data[0].y, thr - values["origin"])
    zero = next(s for s in down.layout.shapes if s.name == "threshold")
    assert zero.y0 == 0 and "sign(r)" in down.layout.yaxis.title.text
    with pytest.raises(ValueError, match="relative=True needs a threshold"):
        plots.hidden_state_figure(values, 2000, relative=True)


def test_hidden_state_log_axis_marks_T_in_log_units():
    fig = plots.hidden_state_figure(hidden_curves(), 2000, log_x=True)
    assert fig.layout.xaxis.type == "log"
    assert fig.layout.shapes[0].x0 == 2000
    assert annotation(fig, "train_length").x == pytest.approx(np.log10(2000))


def test_passkey_accuracy_wilson_intervals_and_counts():
    fig = plots.passkey_accuracy_lines(passkey_rows(), train_length=256)
    mesa = fig.data[1]
    lo, hi = plots.wilson_interval(5, 6)
    np.testing.assert_allclose(mesa.error_y.array, [hi - 5 / 6] * 3)
    np.testing.assert_allclose(mesa.error_y.arrayminus, [5 / 6 - lo] * 3)
    assert np.asarray(mesa.customdata)[0, :2].tolist() == [5, 6]     # hits, n
    assert 0 < lo < 5 / 6 < hi < 1
    assert plots.wilson_interval(0, 10)[0] == 0 and plots.wilson_interval(10, 10)[1] == 1
    assert list(fig.layout.xaxis.tickvals) == [100, 200, 400]
    lin = plots.passkey_accuracy_lines(passkey_rows(), train_length=256, log_x=False)
    assert lin.layout.xaxis.type == "linear" and annotation(lin, "train_length").x == 256
    past = plots.passkey_accuracy_lines(passkey_rows(), train_length=50)
    assert not past.layout.shapes and annotation(past, "train_length").text == "◀ T=50"


def test_passkey_heatmap_marks_T_between_length_categories():
    rows = passkey_rows() + [dict(r, method="rerope") for r in passkey_rows()[:18]]
    fig = plots.passkey_heatmap(rows, train_length=200, cols=2)
    lines = [s for s in fig.layout.shapes if s.name == "train_length"]
    assert [(s.xref, s.x0) for s in lines] == [("x", 1.5), ("x2", 1.5), ("x3", 1.5)]
    # axis titles only on the outer subplots, rows far enough apart for the titles
    assert fig.layout.xaxis.title.text is None and fig.layout.xaxis3.title.text
    assert fig.layout.xaxis2.title.text and fig.layout.yaxis2.title.text is None
    gap = fig.layout.yaxis.domain[0] - fig.layout.yaxis3.domain[1]
    plot_px = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    assert gap * plot_px >= 90


def test_bench_figure_ignores_rows_without_method():
    rows = [{"cpu": "x", "matmul_gflops": 50.0, "method": None, "length": None},
            {"kind": "machine", "method": None}, *bench_rows()]
    fig = plots.bench_figure(rows)
    assert "None" not in {t.name for t in fig.data}
    assert [t.name for t in fig.data if t.type == "bar"] == ["origin", "mesa"]
    oom = next(t for t in fig.data if t.name == "origin OOM")
    assert oom.cliponaxis is False and oom.textfont.size >= 12
    with pytest.raises(ValueError, match="bench rows are empty"):
        plots.bench_figure([{"kind": "machine", "method": None}])


def test_layout_heatmap_labels_few_chunks_each_and_many_chunks_once():
    many = plots.layout_heatmap(mesa_viz.layout("mesa", 96, train_length=32))
    texts = [a.text for a in many.layout.annotations]
    assert texts[0] == "first" and texts[-1] == "last" and len(texts) == 3
    assert texts[1].startswith("middle ×")
    for a in many.layout.annotations:
        assert a.yref == "y domain" and -0.5 <= a.x <= 95.5    # inside the keys drawn
