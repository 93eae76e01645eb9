"""Crossing vs failure and the paper's heat-map views, as pure code: crossing
rows of hand-made traces, the join with passkey and perplexity rows, the
view extraction (values equal the trace's slices, means when pooled), and the
figures' structure (T marked, one colour scale per layer)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mesa_viz import plots
from mesa_viz.analyses import crossings as failure, thresholds
from mesa_viz.runtime import Trace

T = 10


def make_trace(hidden, method="origin", layers=(0,), dims=None, train_length=T) -> Trace:
    """A Trace holding only ``hidden [layer, pos, dim]``."""
    hidden = np.asarray(hidden, dtype=np.float32)
    n = hidden.shape[1]
    return Trace(method=method, params={}, train_length=train_length,
                 input_ids=np.zeros(n, np.int64), tokens=[], layers=[], heads=[],
                 query_rows=[], attention=np.zeros((0, 0, 0, n)), hidden_layers=list(layers),
                 dims=list(range(hidden.shape[2])) if dims is None else list(dims),
                 hidden=hidden, norms=np.zeros(hidden.shape[:2]))


def three_dims(n=20) -> np.ndarray:
    """dim 0 steps up at T and stays; dim 1 goes up at T then back; dim 2 stays."""
    h = np.zeros((1, n, 3))
    h[0, T:, 0] = 2.0
    h[0, T:T + 3, 1] = 2.0
    return h


PAIRS = [dict(layer=0, dim=d, correlation=0.99, threshold=1.0) for d in range(3)]


# -- crossing rows ---------------------------------------------------------------------

def test_pair_crossings_keep_crossed_first_and_at_end_apart():
    per = failure.pair_crossings(make_trace(three_dims()), PAIRS, window=1)
    assert [(p["past_fraction"], p["first_crossing"], p["at_end"]) for p in per] == [
        (1.0, T, True), (0.3, T, False), (0.0, None, False)]


def test_pair_crossings_follow_the_direction_of_growth():
    down = [dict(p, correlation=-0.99, threshold=1.0) for p in PAIRS]    # past = below 1
    per = failure.pair_crossings(make_trace(three_dims()), down, window=1)
    assert [(p["past_fraction"], p["first_crossing"], p["at_end"]) for p in per] == [
        (0.0, None, False), (0.7, T + 3, True), (1.0, T, True)]


def test_crossing_row_counts():
    row = failure.crossing_row(make_trace(three_dims(), "mesa"), PAIRS, window=1, text="filler")
    assert (row["method"], row["length"], row["train_length"], row["pairs"]) == ("mesa", 20, T, 3)
    assert (row["crossed"], row["crossed_at_end"], row["turned_back"]) == (2, 1, 1)
    assert row["crossed_fraction"] == pytest.approx(2 / 3)
    assert row["crossed_at_end_fraction"] == pytest.approx(1 / 3)
    assert row["past_fraction_sum"] == pytest.approx(1.3)
    assert row["past_fraction_mean"] == pytest.approx(1.3 / 3)
    assert row["first_crossing"] == T and row["text"] == "filler" and len(row["per_pair"]) == 3


def test_crossing_row_smooths_before_it_counts():
    # a 3-token bump averaged over 4 tokens never reaches 2 x 3 / 4 = 1.5
    row = failure.crossing_row(make_trace(three_dims()), [dict(PAIRS[1], threshold=1.6)],
                               window=4)
    assert row["crossed"] == 0 and row["first_crossing"] is None


def test_crossing_row_refuses_short_traces_and_no_pairs():
    with pytest.raises(ValueError, match="more than train_length=10"):
        failure.crossing_row(make_trace(three_dims(10)), PAIRS)
    with pytest.raises(ValueError, match="pairs is empty"):
        failure.crossing_row(make_trace(three_dims()), [])


# -- join ---------------------------------------------------------------------------

def crossing_rows():
    rows = []
    for m, crossed in (("origin", 3), ("mesa", 0)):
        for n in (12, 16):
            end = crossed // 2
            rows.append(dict(method=m, length=n, train_length=T, pairs=3, crossed=crossed,
                             crossed_at_end=end, crossed_fraction=crossed / 3,
                             crossed_at_end_fraction=end / 3, turned_back=crossed - end,
                             past_fraction_sum=0.5 * crossed, past_fraction_mean=crossed / 6,
                             first_crossing=T if crossed else None, per_pair=[{}], params={},
                             thresholds=[[0, 1, 1.0]]))
    return rows


def passkey_rows():
    return [dict(method=m, length=n, depth=d, seed=0, correct=m == "mesa" or d == 0.1)
            for m in ("origin", "mesa", "rerope") for n in (12, 16) for d in (0.1, 0.5, 0.9)]


def ppl_rows():
    rows = []
    for text, base in (("book", 2.0), ("code", 1.0)):
        for b0, b1, nll in ((0, 10, 9.0), (10, 13, base), (13, 16, base + 1.0)):
            rows.append(dict(method="origin", length=16, text=text, bucket_start=b0,
                             bucket_end=b1, tokens=b1 - b0, nll=nll))
    return rows


def test_join_adds_accuracy_and_perplexity_past_t():
    joined = failure.join(crossing_rows(), passkey_rows(), ppl_rows())
    by = {(r["method"], r["length"]): r for r in joined}
    assert len(joined) == 4 and "per_pair" not in joined[0] and "thresholds" not in joined[0]
    assert by["origin", 12]["accuracy"] == pytest.approx(1 / 3)
    assert (by["origin", 12]["passkey_correct"], by["origin", 12]["passkey_n"]) == (1, 3)
    assert by["mesa", 16]["accuracy"] == 1.0
    nll = (3 * 2.0 + 3 * 3.0 + 3 * 1.0 + 3 * 2.0) / 12          # buckets from T = 10 on
    assert by["origin", 16]["nll_past_t"] == pytest.approx(nll)
    assert by["origin", 16]["ppl_past_t"] == pytest.approx(math.exp(nll))
    assert by["origin", 16]["ppl_tokens"] == 12
    assert by["origin", 12]["ppl_past_t"] is None and by["mesa", 16]["ppl_tokens"] == 0
    book = failure.join(crossing_rows(), ppl_rows=ppl_rows(), ppl_text="book")
    assert book[1]["nll_past_t"] == pytest.approx(2.5) and book[1]["accuracy"] is None


def test_join_refuses_bad_rows():
    with pytest.raises(ValueError, match="crossing_rows is empty"):
        failure.join([])
    with pytest.raises(ValueError, match=r"passkey row 0 lacks \['correct'\]"):
        failure.join(crossing_rows(), [dict(method="mesa", length=12)])
    with pytest.raises(ValueError, match=r"ppl row 0 lacks \['nll'\]"):
        failure.join(crossing_rows(), ppl_rows=[dict(method="mesa", length=12, text="b",
                                                     bucket_start=0, tokens=3)])


def test_summary_and_table():
    joined = failure.join(crossing_rows(), passkey_rows())
    text = failure.summary(joined)
    assert "some pair crossed: mean accuracy 33% over 2" in text
    assert "none crossed: mean accuracy 100% over 2" in text
    assert "Pearson r(crossed fraction, accuracy) = -1.00" in text
    assert failure.summary(failure.join(crossing_rows())) == "no row has a passkey accuracy yet"
    table = failure.format_table(joined).splitlines()
    assert table[0].startswith("| method | length | pairs crossed | still crossed at end")
    assert table[2] == "| origin | 12 | 3 / 3 | 1 / 3 | 1.50 | 10 | 33% (1/3) | (pending) |"
    assert table[4].endswith("| none | 100% (3/3) | (pending) |")
    wide = failure.format_table(joined[:3], wide=True).splitlines()
    assert wide[0] == "| method | 12 tokens | 16 tokens |"
    assert wide[2] == ("| origin | 3/3 (1 at end) · 1.50 · 33% (1/3) · (pending) | "
                       "3/3 (1 at end) · 1.50 · 33% (1/3) · (pending) |")
    assert wide[3] == "| mesa | 0/3 (0 at end) · 0.00 · 100% (3/3) · (pending) | (pending) |"


# -- figures ------------------------------------------------------------------------------

def test_crossing_scatter_points_colours_symbols_and_panels():
    joined = failure.join(crossing_rows(), passkey_rows(), ppl_rows())
    fig = plots.crossing_scatter(joined)
    acc = [t for t in fig.data if t.xaxis == "x"]
    assert [t.name for t in acc] == ["origin", "mesa"]
    assert [len(t.x) for t in acc] == [2, 2] and list(acc[1].y) == [1.0, 1.0]
    assert acc[0].x[0] == pytest.approx(1.0 - 0.012) and acc[1].x[0] == pytest.approx(0.012)
    assert list(acc[0].marker.symbol) == ["circle", "square"]
    assert acc[0].error_y.array is not None and "33% (1/3)" in acc[0].text[0]
    assert acc[0].marker.color != acc[1].marker.color
    ppl = [t for t in fig.data if t.xaxis == "x2"]
    assert [t.name for t in ppl] == ["origin"] and fig.layout.yaxis2.type == "log"
    only = plots.crossing_scatter(failure.join(crossing_rows(), passkey_rows()))
    assert {t.xaxis for t in only.data} == {"x"}
    with pytest.raises(ValueError, match="no row has accuracy or ppl_past_t"):
        plots.crossing_scatter(failure.join(crossing_rows()))
    with pytest.raises(ValueError, match="x='pairs'"):
        plots.crossing_scatter(joined, x="pairs")


def test_paper_windows():
    assert thresholds.paper_windows(16384, 8192) == [(7936, 9984), (14336, 16384)]
    assert thresholds.paper_windows(9000, 8192) == [(6952, 9000)]           # overlap: merged
    assert thresholds.paper_windows(8000, 8192, 100) == [(7900, 8000)]      # cut at the end
    with pytest.raises(ValueError, match="width=0"):
        thresholds.paper_windows(100, 64, 0)


def ramp_trace(method="origin", n=40, scale=1.0) -> Trace:
    """Value = scale * (position + 100 * layer + 1000 * dim)."""
    pos = np.arange(n)[None, :, None]
    return make_trace(scale * (pos + 100 * np.arange(2)[:, None, None]
                               + 1000 * np.arange(4)[None, None, :]), method, layers=(0, 3),
                      dims=(5, 6, 7, 8), train_length=T)


def test_hidden_view_values_are_the_trace_slices_or_their_means():
    tr = ramp_trace()
    v = thresholds.hidden_view(tr, layers=[3], dims=[6, 8], windows=[(5, 15), (30, 40)])
    assert v.pool == 1 and v.layers == [3] and v.dims == [6, 8]
    np.testing.assert_array_equal(v.values[0][0], tr.hidden[1][5:15][:, [1, 3]].T)
    np.testing.assert_array_equal(v.edges[1], np.arange(30, 41))
    pooled = thresholds.hidden_view(tr, windows=[(5, 20)], columns=4)     # 15 / 4 -> 4 a column
    assert pooled.pool == 4 and list(pooled.edges[0]) == [5, 6, 10, 14, 18, 20]   # T = 10 an edge
    for c, (a, b) in enumerate(zip(pooled.edges[0][:-1], pooled.edges[0][1:])):
        np.testing.assert_allclose(pooled.values[0][:, :, c], tr.hidden[:, a:b].mean(axis=1))
    whole = thresholds.hidden_view(tr, windows="all", columns=10)
    assert whole.windows == [(0, 40)] and whole.values[0].shape == (2, 4, 11)   # aligned on T


def test_hidden_view_relative_to_a_reference():
    tr, other = ramp_trace(), ramp_trace("mesa", scale=2.0)
    v = thresholds.hidden_view(other, windows=[(T, 20)], relative_to=T - 1, reference=tr)
    want = other.hidden[:, T:20] - tr.hidden[:, T - 1:T]
    np.testing.assert_allclose(v.values[0], np.transpose(want, (0, 2, 1)))
    assert (v.relative_to, v.reference) == (T - 1, "origin")
    assert "value minus origin's value at 9" in plots.hidden_heatmap([v]).layout.title.subtitle.text
    own = [thresholds.hidden_view(t, windows=[(T, 20)], relative_to=T - 1) for t in (tr, other)]
    assert "minus each method's own value" in plots.hidden_heatmap(own).layout.title.subtitle.text


@pytest.mark.parametrize("kwargs, match", [
    (dict(windows=[(5, 50)]), "windows="), (dict(windows=[(20, 30), (25, 35)]), "windows="),
    (dict(windows="late"), "windows='late'"), (dict(dims=[1]), r"dims \[1\]"),
    (dict(layers=[]), "hidden layers"), (dict(columns=0), "columns=0"),
    (dict(relative_to=40), "relative_to=40"),
])
def test_hidden_view_refuses_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        thresholds.hidden_view(ramp_trace(), **kwargs)


def test_mean_change_and_layer_changes():
    tr = make_trace(three_dims())
    np.testing.assert_allclose(thresholds.mean_change(tr, T, 3), [[2.0, 2.0, 0.0]])
    np.testing.assert_allclose(thresholds.mean_change(tr, T, 3, to=20), [[2.0, 0.0, 0.0]])
    at, end = thresholds.layer_changes(tr, 3)
    assert at == pytest.approx([4 / 3]) and end == pytest.approx([2 / 3])
    assert "origin: L0 1.33/0.667" in thresholds.format_changes({"origin": tr}, 3)
    with pytest.raises(ValueError, match="width"):
        thresholds.mean_change(tr, T, 11)


def test_hidden_heatmap_marks_t_and_shares_one_scale_per_layer():
    views = [thresholds.hidden_view(ramp_trace(m), windows=[(5, 15), (30, 40)])
             for m in ("origin", "mesa")]
    fig = plots.hidden_heatmap(views)
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 2 * 2 * 2                        # layers x methods x windows
    assert {t.coloraxis for t in heat} == {"coloraxis", "coloraxis2"}
    for axis in (fig.layout.coloraxis, fig.layout.coloraxis2):
        assert axis.cmin == -axis.cmax and axis.cmax > 0 and axis.cmid == 0
    marks = [s for s in fig.layout.shapes if s.name == "train_length"]
    assert len(marks) == 2 * 2                           # layers x methods (window 5-15 only)
    assert all(s.x0 == T for s in marks)
    panels = {(s.xref, s.yref) for s in marks}
    windows_with_t = {fig.get_subplot(r, c).xaxis.anchor for r in (1, 2) for c in (1, 3)}
    assert {y.replace(" domain", "") for _, y in panels} == windows_with_t
    assert not [a for a in fig.layout.annotations if a.name == "train_length"]   # no box
    assert f"black line: T={T}" in fig.layout.title.subtitle.text
    with pytest.raises(ValueError, match="differ"):
        plots.hidden_heatmap([views[0], thresholds.hidden_view(ramp_trace(), windows="all")])
