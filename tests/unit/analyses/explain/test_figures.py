"""The drill-down and whole-map figures, from plain arrays (no model)."""

from types import SimpleNamespace

import numpy as np
import pytest

from mesa_viz import plots


def test_needle_mass_figure_draws_both_methods_and_their_difference():
    mass = np.random.default_rng(0).random((2, 5, 3))
    fig = plots.needle_mass_figure(mass, ["mesa", "origin"])
    assert [t.name for t in fig.data] == ["mesa", "origin", "difference"]
    np.testing.assert_allclose(np.array(fig.data[2].z), mass[0] - mass[1])
    assert fig.layout.coloraxis2.cmin == -fig.layout.coloraxis2.cmax
    with pytest.raises(ValueError, match=r"mass has shape \(5, 3\).*\[method, layer, head\]"):
        plots.needle_mass_figure(mass[0], ["mesa"])


def test_distance_profile_takes_the_largest_value_of_each_bin():
    q, T = 99, 40
    # value = key position: largest at the nearest key
    row = np.arange(100, dtype=float)
    row[90:] = -np.inf                             # hidden keys never count
    fig = plots.distance_profile_figure({"origin": row}, q, "max", bins=[0, 20, 40, 100],
                                        train_length=T)
    np.testing.assert_allclose(fig.data[0].y, [89, 79, 59])   # nearest key of d >= 10, 20, 40
    assert {s.name for s in fig.layout.shapes} == {"train_length", "distance >= T"}
    sums = plots.distance_profile_figure({"a": np.ones(100)}, q, "sum", bins=[0, 50, 100])
    np.testing.assert_allclose(sums.data[0].y, [50, 50])
    with pytest.raises(ValueError, match="stat='mean': allowed 'max' or 'sum'"):
        plots.distance_profile_figure({"a": row}, q, "mean")


def _map(method="mesa", region=(0, 100, 0, 100), seed=0, chunk_plan=None, T=40):
    q0, q1, k0, k1 = region
    qe, ke = np.linspace(q0, q1, 11).astype(int), np.linspace(k0, k1, 11).astype(int)
    values = np.random.default_rng(seed).random((10, 10)) * np.tri(10)
    return SimpleNamespace(method=method, layer=3, head=1, seq_len=100, pool="max",
                           region=list(region), q_edges=qe, k_edges=ke, values=values,
                           train_length=T, chunk_plan=chunk_plan)


def test_attention_map_figure_marks_T_and_the_chunks():
    plan = [[0, 10], [10, 30], [30, 60], [60, 100]]
    fig = plots.attention_map_figure(_map(chunk_plan=plan))
    heat = fig.data[0]
    np.testing.assert_allclose(heat.x, np.linspace(0, 100, 11).astype(int) - 0.5)   # cell edges
    np.testing.assert_allclose(np.array(heat.z), np.log10(np.maximum(
        heat.customdata, fig.layout.meta["floor"])))
    names = [s.name for s in fig.layout.shapes]
    assert names.count("train_length") == 1 and names.count("chunk boundary") == 6  # 3 on x and y
    diag = next(t for t in fig.data if t.name == "distance = T")
    assert list(diag.x) == [0, 59] and list(diag.y) == [40, 99]                     # k = q - T
    assert list(fig.layout.yaxis.range) == [99.5, -0.5]                             # query 0 on top
    early = plots.attention_map_figure(_map(region=(0, 30, 0, 30)), log_color=False)
    assert not early.layout.shapes and [t.name for t in early.data] == ["mesa"]    # no T inside


def test_attention_maps_figure_side_by_side_and_difference():
    a, b = _map("mesa", seed=1), _map("origin", seed=2)
    fig = plots.attention_maps_figure([a, b])
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert [t.name for t in heat] == ["mesa", "origin", "difference"]
    np.testing.assert_allclose(np.array(heat[2].z), np.array(heat[0].z) - np.array(heat[1].z))
    assert fig.layout.meta["floor"] > 0
    with pytest.raises(ValueError, match="maps cover different cells"):
        plots.attention_maps_figure([a, _map(region=(0, 50, 0, 100))])


def test_retrieval_heads_figure_groups_bars_by_method():
    heads = [dict(layer=l, head=h, needle={"mesa": 0.5, "origin": 0.1},
                  sinks={"mesa": 0.1, "origin": 0.6}, far={"mesa": 0.0, "origin": 0.2})
             for l, h in ((3, 1), (5, 0))]
    fig = plots.retrieval_heads_figure(heads, ["mesa", "origin"])
    assert len(fig.data) == 6 and list(fig.data[0].x) == ["L3H1", "L5H0"]
    assert [t.y[0] for t in fig.data if t.name == "origin"] == [0.1, 0.6, 0.2]
    with pytest.raises(ValueError, match="lacks"):
        plots.retrieval_heads_figure([dict(layer=1)], ["mesa"])
