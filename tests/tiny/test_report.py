"""mesa_viz.report on a tiny random model: every section drawn, the model
traced once per method, missing inputs said (not silently left out), bad
options refused.  (The browser test renders the page.)"""

from __future__ import annotations

import html
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


def test_report_says_why_no_threshold_pair_was_found(tiny_lm, tmp_path):
    """0 pairs: no figure, and the text says why and which option to change
    (not the pairs it would have shown)."""
    from mesa_viz.analyses.thresholds.section import thresholds_section
    model, tok = tiny_lm
    ctx = report.Context(tmp_path, model, tok, length=96, layers=[0], min_correlation=1.0,
                         window=16)
    (text,) = thresholds_section(ctx)
    text = html.unescape(text)
    assert isinstance(text, str) and "0 (layer, dim) pairs found, so no figure" in text
    assert "--min-correlation" in text and "--window" in text and "|r| >= 1.0" in text
    assert "shown first those origin crosses" not in text


def test_report_passkey_marks_T_and_cells_never_run(tmp_path):
    rows = tmp_path / "passkey.jsonl"
    rows.write_text("\n".join(json.dumps(dict(method=m, length=L, depth=d, correct=L <= 64,
                                              train_length=64))
                              for m in ("origin", "mesa") for L in (32, 128)
                              for d in (0.1, 0.5) if not (m == "mesa" and L == 128 and d == 0.5)))
    from mesa_viz.analyses.passkey.section import passkey_section
    ctx = report.Context(tmp_path, results={"passkey": rows})
    lines, heat = [i for i in passkey_section(ctx) if not isinstance(i, str)]
    for fig in (lines, heat):
        assert [s for s in fig.layout.shapes if s.name == "train_length"], fig.layout.title
    assert "T=64" in heat.layout.title.subtitle.text
    (grey,) = [t for t in heat.data if t.name == "not run"]
    assert sum(v == "not run" for row in grey.text for v in row) == 1
