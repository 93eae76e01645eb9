"""mesa_viz.report on a tiny random model: every section drawn, the model
traced once per method, missing inputs said (not silently left out), bad
options refused.  (The browser test renders the page.)"""

from __future__ import annotations

import json

import pytest

from mesa_viz import report
from mesa_viz.analyses import thresholds
from mesa_viz.models import tiny_model

OPTIONS = dict(length=160, layers=[0, 1], min_correlation=0.0, window=16)


@pytest.fixture(scope="module")
def tiny_lm():
    return tiny_model("llama", max_position_embeddings=64)


def test_report_traces_each_method_once_and_says_what_is_missing(tiny_lm, tmp_path,
                                                                 monkeypatch):
    model, tok = tiny_lm
    traced = []
    real = report.trace

    def counted(model, ids, method="origin", **kw):
        traced.append(method)
        return real(model, ids, method, **kw)
    monkeypatch.setattr(report, "trace", counted)
    path = report.build(tmp_path / "r.html", model=model, tokenizer=tok,
                        methods=("mesa", "rerope"), **OPTIONS)
    assert sorted(traced) == ["mesa", "origin", "rerope"]       # origin for the thresholds
    page = path.read_text()
    for section in report.SECTIONS:
        assert section.title in page
    assert "Not included: no passkey results" in page and "--passkey" in page
    assert "Not included: no bench results" in page and "make bench" in page
    assert "Figure 1" in page and "stair: n=10, T=8" in page       # the paper's toy layouts
    data = tmp_path / "r_data"
    pairs = json.loads((data / "thresholds.json").read_text())
    assert pairs and set(pairs[0]["past_fraction"]) == {"origin", "mesa", "rerope"}
    assert [(p["layer"], p["dim"]) for p in pairs] == [         # origin's crossings first
        (p["layer"], p["dim"]) for p in thresholds.order_pairs(pairs)]
    assert {p.name for p in data.glob("trace_*.npz")} == {
        "trace_origin.npz", "trace_mesa.npz", "trace_rerope.npz"}


def test_report_without_a_model_draws_layouts_and_results(tmp_path):
    rows = tmp_path / "passkey.jsonl"
    rows.write_text("\n".join(json.dumps(dict(method=m, length=L, depth=0.5, correct=m == "mesa"))
                              for m in ("origin", "mesa") for L in (100, 200)))
    page = report.build(tmp_path / "r.html", results={"passkey": rows}).read_text()
    assert page.count("Not included: no model was given") == 4     # attention, thresholds (2), map
    assert "4 samples from passkey.jsonl" in page and "Not included: no passkey" not in page
    assert json.loads((tmp_path / "r_data" / "passkey.json").read_text())[0]["method"] == "origin"


@pytest.mark.parametrize("kwargs, match", [
    (dict(results={"pasky": "x.jsonl"}), r"results for \['pasky'\]"),
    (dict(colour="red"), r"unknown report options \['colour'\]"),
    (dict(methods=("mesa", "nope")), r"unknown methods \['nope'\]"),
])
def test_report_refuses_bad_options(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        report.build(tmp_path / "r.html", **kwargs)


def test_report_needs_model_and_tokenizer_together(tiny_lm, tmp_path):
    with pytest.raises(ValueError, match="model and tokenizer"):
        report.build(tmp_path / "r.html", model=tiny_lm[0])
