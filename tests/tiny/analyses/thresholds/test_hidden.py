"""The paper's views and the crossing-vs-failure measurement on a tiny random
model: the inputs, the heat-map data equal to the traced hidden states, saved
traces reused, rows resumed, both CLI commands end to end and the heat-map
explorer driven from Python."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from mesa_viz import widgets
from mesa_viz.analyses import crossings as failure, thresholds
from mesa_viz.analyses.thresholds import compute as thresholds_compute
from mesa_viz.cli import main
from mesa_viz.models import tiny_model
from mesa_viz.analyses.passkey import make_sample
from mesa_viz.runs import read_jsonl
from mesa_viz.runtime import trace

T = 64
MEASURE = dict(methods=["origin", "mesa", "rerope"], lengths=[96, 128], hidden_layers=[1, 2],
               window=16, min_correlation=0.0, top=4)


@pytest.fixture(scope="module")
def tiny_lm():
    return tiny_model("llama", max_position_embeddings=T)


@pytest.fixture(autouse=True)
def _quiet(caplog):
    caplog.set_level(logging.ERROR, logger="mesa_viz")


def count_traces(monkeypatch) -> list:
    traced, real = [], thresholds_compute.trace

    def counted(model, ids, method="origin", **kw):
        traced.append((method, len(ids)))
        return real(model, ids, method, **kw)
    monkeypatch.setattr(thresholds_compute, "trace", counted)
    return traced


# -- inputs ---------------------------------------------------------------------------

def test_inputs(tiny_lm):
    tok = tiny_lm[1]
    unit = tok(" hello", add_special_tokens=False)["input_ids"]
    word = thresholds.threshold_input(tok, 50, "word")
    assert len(word) == 50 and word[0] == tok.bos_token_id                 # the paper's <bos>
    assert word[1:1 + 3 * len(unit)] == unit * 3
    other = thresholds.threshold_input(tok, 50, "word", word="green")
    assert other[1:1 + 2] != word[1:1 + 2]
    assert thresholds.threshold_input(tok, 120, "passkey", depth=0.2, seed=3) == \
        make_sample(tok, 120, 0.2, 3)["input_ids"]
    assert thresholds.threshold_input(tok, 30) == thresholds.threshold_input(tok, 30, "filler")
    for kwargs, match in ((dict(text="hello"), "text='hello'"), (dict(text="word", word=" "),
                                                                 "word=' '"),
                          (dict(text="word", length=1), "length=1")):
        with pytest.raises(ValueError, match=match):
            thresholds.threshold_input(tok, **{"length": 30, **kwargs})


def test_a_repeated_token_needs_a_distinct_first_token(tiny_lm):
    """Why the word input starts with BOS: one token repeated gives every
    position the same value vectors, so attention weights (the only place
    position enters) cannot change the hidden state."""
    model = tiny_lm[0]
    word, bos = 300, tiny_lm[1].bos_token_id

    def spread(ids):
        h = trace(model, ids, "origin", layers=[], hidden_layers=[2], dims=range(8)).hidden
        return float(np.abs(h[0] - h[0, -1]).max())
    assert spread([word] * 96) < 1e-5
    assert spread([bos] + [word] * 95) > 1e-3


# -- views ------------------------------------------------------------------------------

def test_hidden_view_of_a_traced_word_equals_the_trace(tiny_lm, tmp_path, monkeypatch):
    model, tok = tiny_lm
    kw = dict(length=120, methods=["origin", "mesa"], text="word", hidden_layers=[0, 2],
              dims=[1, 3, 4], folder=tmp_path)
    traces = thresholds.trace_methods(model, tok, **kw)
    assert list(traces) == ["origin", "mesa"]
    for tr in traces.values():
        assert tr.hidden.shape == (2, 120, 3) and tr.dims == [1, 3, 4]
        v = thresholds.hidden_view(tr, dims=[3, 4])
        assert v.pool == 1 and v.windows == thresholds.paper_windows(120, T)
        for (a, b), values in zip(v.windows, v.values):
            np.testing.assert_array_equal(values, np.transpose(tr.hidden[:, a:b, 1:], (0, 2, 1)))
    # a direct trace agrees with the saved one
    direct = trace(model, thresholds.threshold_input(tok, 120, "word"), "mesa",
                   layers=[], hidden_layers=[2], dims=[4])
    np.testing.assert_allclose(direct.hidden[0, :, 0], traces["mesa"].hidden_values(2, 4),
                               atol=1e-6)
    traced = count_traces(monkeypatch)
    thresholds.trace_methods(model, tok, **kw)
    assert traced == []                                                   # reused
    thresholds.trace_methods(model, tok, **{**kw, "dims": [1, 3]})
    assert traced == [("origin", 120), ("mesa", 120)]                     # other dims: traced


# -- crossing vs failure ------------------------------------------------------------------

def test_measure_streams_rows_and_resumes(tiny_lm, tmp_path, monkeypatch):
    model, tok = tiny_lm
    out = tmp_path / "c.jsonl"
    traced = count_traces(monkeypatch)
    rows = list(failure.measure(model, tok, out=out, **MEASURE))
    assert [(r["method"], r["length"]) for r in rows] == [
        (m, n) for n in (96, 128) for m in ("origin", "mesa", "rerope")]
    assert read_jsonl(out) == rows
    # the finder once on origin at the longest length; its trace serves (origin, 128)
    assert traced.count(("origin", 128)) == 1 and len(traced) == 6
    pairs = read_jsonl(failure.pairs_file(out))
    assert 0 < len(pairs) <= 4 and all(r["pairs"] == len(pairs) for r in rows)
    assert all(r["thresholds"] == [[p["layer"], p["dim"], p["threshold"]] for p in pairs]
               for r in rows)
    for r in rows:                                                # each row's own trace
        assert r["crossed"] == sum(p["first_crossing"] is not None for p in r["per_pair"])
        assert r["crossed"] - r["crossed_at_end"] == r["turned_back"] >= 0
    origin_long = next(r for r in rows if (r["method"], r["length"]) == ("origin", 128))
    assert [p["past_fraction"] for p in origin_long["per_pair"]] == \
        [p["past_fraction"]["origin"] for p in pairs]
    traced.clear()
    assert list(failure.measure(model, tok, out=out, **MEASURE)) == rows and traced == []
    with pytest.raises(ValueError, match="other settings"):
        list(failure.measure(model, tok, out=out, **{**MEASURE, "window": 8}))
    with pytest.raises(ValueError, match=r"lengths \[64\] <= train_length=64"):
        list(failure.measure(model, tok, out=tmp_path / "x.jsonl", **{**MEASURE,
                                                                      "lengths": [64, 96]}))


def test_crossings_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "c"
    passkey = tmp_path / "passkey.jsonl"
    passkey.write_text("\n".join(json.dumps(dict(method=m, length=n, depth=0.5, seed=s,
                                                 correct=m != "origin" or s == 0))
                                 for m in ("origin", "mesa") for n in (96, 128)
                                 for s in range(2)))
    args = ["crossings", "--tiny", "--methods", "origin,mesa", "--lengths", "96,128",
            "--hidden-layers", "1,2", "--window", "16", "--min-correlation", "0", "--top", "3",
            "--out", str(out), "--passkey", str(passkey)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "| method | length | pairs crossed" in text and "50% (1/2)" in text
    assert "100% (2/2)" in text and "Pearson r" in text
    joined = read_jsonl(out / "crossings_joined.jsonl")
    assert len(joined) == 4 and {r["passkey_n"] for r in joined} == {2}
    page = (out / "crossings.html").read_text()
    assert "does crossing predict failure?" in page and "| origin | 96 |" in page
    ppl = tmp_path / "ppl.jsonl"
    ppl.write_text(json.dumps(dict(method="mesa", length=128, text="book", bucket_start=64,
                                   bucket_end=128, tokens=64, nll=1.0)))
    assert main(["crossings", "--join-only", "--out", str(out), "--ppl", str(ppl)]) == 0
    assert "| mesa | 128 |" in capsys.readouterr().out
    mesa = [r for r in read_jsonl(out / "crossings_joined.jsonl") if r["method"] == "mesa"]
    assert [r["ppl_past_t"] for r in mesa] == [None, pytest.approx(np.e)]
    with pytest.raises(SystemExit, match="holds no rows"):
        main(["crossings", "--join-only", "--out", str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="--ppl .*nope.jsonl: no such file"):
        main([*args, "--ppl", str(tmp_path / "nope.jsonl")])


def test_hidden_map_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "hm"
    assert main(["hidden-map", "--tiny", "--length", "128", "--methods", "rerope",
                 "--hidden-layers", "0-2", "--dims", "0-5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "origin:" in text and "rerope:" in text and "L2 " in text
    page = (out / "hidden-map.html").read_text()
    assert "hidden states around and past T=64" in page and "minus origin" in page
    assert {p.name for p in (out / "hidden-map_traces").glob("*.npz")} == {
        "trace_origin.npz", "trace_rerope.npz"}
    with pytest.raises(SystemExit, match="--length 64"):
        main(["hidden-map", "--tiny", "--length", "64", "--out", str(out)])
    with pytest.raises(SystemExit):                           # argparse: exit 2, message
        main(["hidden-map", "--tiny", "--windows", "a:b", "--out", str(out)])
    assert "allowed paper, all or START:STOP" in capsys.readouterr().err


# -- the explorer ----------------------------------------------------------------------------

def test_hidden_heatmap_explorer(tiny_lm):
    model, tok = tiny_lm
    traces = thresholds.trace_methods(model, tok, length=160, methods=["origin", "mesa"],
                                      text="word", hidden_layers=[0, 1, 2], dims=range(6))
    ex = widgets.hidden_heatmap_explorer(traces)
    fig = ex.figures["heatmap"]
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 3 * 2 * 2                             # layers x methods x paper windows
    assert "origin:" in ex.outputs["change"].value and not ex.message
    first = np.array(heat[2].z, dtype=float)
    ex.controls["relative"].value = True                      # minus origin's value at T - 1
    rel = np.array([t for t in fig.data if t.type == "heatmap"][2].z, dtype=float)
    base = traces["origin"].hidden[0, T - 1, :6]             # layer 0, mesa, window 0
    np.testing.assert_allclose(rel, first - base[:, None], atol=1e-5)
    ex.controls["windows"].value = "all"
    assert len([t for t in fig.data if t.type == "heatmap"]) == 3 * 2
    ex.controls["layers"].value = (2,)
    ex.controls["methods"].value = ("mesa",)
    assert len([t for t in fig.data if t.type == "heatmap"]) == 1
    ex.controls["methods"].value = ()
    assert "choose at least one" in fig.layout.annotations[0].text
    with pytest.raises(ValueError, match="traces is empty"):
        widgets.hidden_heatmap_explorer({})
