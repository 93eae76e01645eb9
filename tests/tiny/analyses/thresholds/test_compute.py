"""mesa_viz.thresholds: smoothing and crossings against hand computations, and
the finder on a tiny random model: pairs and traces saved, a rerun reusing
the traces, bad input refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mesa_viz.analyses import thresholds
from mesa_viz.analyses.thresholds import compute as thresholds_compute
from mesa_viz.models import tiny_model
from mesa_viz.runs import read_jsonl

T = 64
FIND = dict(length=160, methods=["origin", "mesa"], hidden_layers=[1, 2], window=16,
            min_correlation=0.0, top=4)


@pytest.fixture(scope="module")
def tiny_lm():
    return tiny_model("llama", max_position_embeddings=T)


def test_smooth_is_a_trailing_mean():
    x = np.random.default_rng(0).normal(size=(3, 50))
    for w in (1, 4, 50, 80):
        want = np.stack([[x[k, max(0, p - w + 1):p + 1].mean() for p in range(50)]
                         for k in range(3)])
        np.testing.assert_allclose(thresholds.smooth(x, w), want, rtol=1e-12)
    for bad in (0, 2.5, True, None):
        with pytest.raises(ValueError, match="window="):
            thresholds.smooth(x, bad)


def test_crossings_by_hand():
    v = np.array([0, 1, 2, 3, 5, 1, 6, 2.0])
    assert thresholds.crossings(v, 4, 2.5) == (2, 0.5, 4)           # 5 and 6 are above
    assert thresholds.crossings(v, 4, 2.5, correlation=-0.9) == (2, 0.5, 5)   # 1 and 2 below
    assert thresholds.crossings(v, 4, 10.0) == (0, 0.0, None)
    assert thresholds.crossings(v, 8, 0.0) == (0, 0.0, None)         # nothing past T


def test_find_saves_pairs_and_traces_and_a_rerun_reuses_them(tiny_lm, tmp_path, monkeypatch):
    model, tok = tiny_lm
    out = tmp_path / "th.jsonl"
    found = thresholds.find(model, tok, out=out, **FIND)
    pairs, traces = found
    assert list(traces) == ["origin", "mesa"] and 0 < len(pairs) <= 4
    assert [abs(p.correlation) for p in pairs] == sorted((abs(p.correlation) for p in pairs),
                                                         reverse=True)
    rows = read_jsonl(out)
    assert rows == [dataclasses.asdict(p) for p in pairs]
    assert set(rows[0]) == {"layer", "dim", "correlation", "threshold", "past_fraction",
                            "first_crossing"}
    assert (tmp_path / "th_traces" / "trace_mesa.npz").exists()
    for p in pairs:                                  # the fraction is the crossings' fraction
        for m, tr in traces.items():
            sm = thresholds.smooth(tr.hidden_values(p.layer, p.dim), FIND["window"])
            hit = thresholds.crossings(sm, T, p.threshold, p.correlation)
            assert (p.past_fraction[m], p.first_crossing[m]) == (hit.fraction, hit.first)
            assert sm[T - 1] == pytest.approx(p.threshold) or m != "origin"

    def no_trace(*a, **k):
        raise AssertionError("a saved trace was computed again")
    monkeypatch.setattr(thresholds_compute, "trace", no_trace)
    again = thresholds.find(model, tok, out=out, **FIND)
    assert again.pairs == pairs and read_jsonl(out) == rows
    with pytest.raises(AssertionError, match="computed again"):      # other parameters: rerun
        thresholds.find(model, tok, out=out, **{**FIND, "method_params": {"mesa": {
            "stair": "anchored"}}})


@pytest.mark.parametrize("kwargs, match", [
    (dict(methods=["nope"]), "unknown method 'nope'"),
    (dict(method_params={"rerope": {"window": 8}}), "not among methods"),
    (dict(method_params={"mesa": {"bogus": 1}}), "unknown parameter"),
    (dict(length=40), "needs >= train_length=64"),
])
def test_find_refuses_bad_input(tiny_lm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        thresholds.find(*tiny_lm, **{**FIND, **kwargs})


def test_format_pairs():
    pair = thresholds.ThresholdPair(2, 17, -0.995, 1.25, {"origin": 0.84, "mesa": 0.0}, {})
    text = thresholds.format_pairs([pair])
    assert text == ("layer  2 dim   17 r=-0.9950 threshold=+1.2500 past T beyond it: "
                    "origin 84%, mesa 0%")
    assert thresholds.format_pairs([dataclasses.asdict(pair)]) == text
    assert "no (layer, dim) pair" in thresholds.format_pairs([])


def test_order_pairs_by_what_they_show():
    """Origin's past-threshold fraction first (the crossing the theory predicts
    is seen there), then |r|; dicts and ThresholdPairs alike."""
    def pair(dim, r, origin):
        return thresholds.ThresholdPair(0, dim, r, 1.0, {"origin": origin, "mesa": 0.0}, {})
    pairs = [pair(1, -0.999, 0.13), pair(2, 0.99, 0.84), pair(3, 0.995, 0.84),
             pair(4, 0.9999, 0.0)]
    assert [p.dim for p in thresholds.order_pairs(pairs)] == [3, 2, 1, 4]
    as_dicts = [dataclasses.asdict(p) for p in pairs]
    assert [p["dim"] for p in thresholds.order_pairs(as_dicts)] == [3, 2, 1, 4]
    assert [p.dim for p in thresholds.order_pairs(pairs, "mesa")] == [4, 1, 3, 2]   # |r| only
