"""Every explorer on the one mechanism (``mesa_viz.viz.explorer``): while it redraws
its busy line says so and is empty after; an exception raised while it draws is
shown in its error line (type, message, traceback), never raised into the widget
machinery, and the explorer draws again once the cause is gone.  One test
iterates over ``widgets.EXPLORERS``: an explorer added there without a case here
fails it."""

from __future__ import annotations

import importlib

import pytest
import torch

from mesa_viz import widgets
from mesa_viz.analyses.passkey import evaluate, make_sample
from mesa_viz.models import tiny_model
from mesa_viz.runtime import trace

T, N = 64, 100


@pytest.fixture(scope="module")
def tiny_lm():
    return tiny_model("llama", max_position_embeddings=T)


@pytest.fixture(scope="module")
def sample(tiny_lm):
    return make_sample(tiny_lm[1], N, 0.5, seed=0)


@pytest.fixture(scope="module")
def traces(tiny_lm, sample):
    model, tok = tiny_lm
    return {m: trace(model, sample["input_ids"], m, layers=[], hidden_layers=[0, 1, 2],
                     dims=[0, 1, 2, 3], train_length=T) for m in ("origin", "mesa")}


@pytest.fixture(scope="module")
def passkey_rows(tiny_lm, tmp_path_factory):
    model, tok = tiny_lm
    out = tmp_path_factory.mktemp("passkey") / "passkey.jsonl"
    return list(evaluate(model, tok, methods=["origin", "mesa"], lengths=[N], depths=[0.5],
                         samples=1, out=out, max_new_tokens=2))


def _bench_rows():
    return [dict(kind="point", method=m, length=n, prefill_s=0.1 * n, peak_mem_bytes=2 ** 20 * n,
                 decode_ms_per_token=1.0, predicted_mem_bytes=2 ** 20 * n)
            for m in ("origin", "mesa") for n in (64, 128)]


def _ppl_rows():
    return [dict(method=m, length=128, text="book", bucket_start=a, bucket_end=b, tokens=b - a,
                 nll=2.0 + a / 128, train_length=T)
            for m in ("origin", "mesa") for a, b in ((0, 64), (64, 128))]


def _task_rows():
    return [dict(method=m, task="niah_single_1", length=n, sample=0, score=1.0)
            for m in ("origin", "mesa") for n in (64, 128)]


#: explorer -> (its module, the figure function its draw calls, how to build it)
CASES = {
    "layout_explorer": ("layouts", "layout_heatmap", lambda f: widgets.layout_explorer()),
    "attention_explorer": ("attention", "attention_heatmap", lambda f: widgets.attention_explorer(
        *f["tiny_lm"], f["sample"]["input_ids"], methods=("origin", "mesa"),
        needle=tuple(f["sample"]["needle_span"]), train_length=T)),
    "threshold_explorer": ("thresholds", "hidden_state_figure", lambda f: widgets.threshold_explorer(
        [dict(layer=1, dim=0, threshold=0.0, correlation=0.9)], f["traces"])),
    "hidden_heatmap_explorer": ("thresholds", "hidden_heatmap",
                                lambda f: widgets.hidden_heatmap_explorer(f["traces"])),
    "theorem_explorer": ("theory", "theorem_figure",
                         lambda f: widgets.theorem_explorer(length=96)),
    "explain_explorer": ("explain", "explanation_figures", lambda f: _clicked(
        widgets.explain_explorer(f["passkey_rows"], *f["tiny_lm"], train_length=T),
        f["passkey_rows"][0])),
    "attention_map_explorer": ("attention_map", "attention_maps_figure",
                               lambda f: widgets.attention_map_explorer(
                                   f["tiny_lm"][0], f["sample"]["input_ids"], train_length=T,
                                   grid=20)),
    "passkey_viewer": ("passkey", "passkey_heatmap",
                       lambda f: widgets.passkey_viewer(f["passkey_rows"], train_length=T)),
    "bench_viewer": ("bench", "bench_figure", lambda f: widgets.bench_viewer(_bench_rows())),
    "eval_viewer": ("ruler", "ppl_by_position",
                    lambda f: widgets.eval_viewer(_ppl_rows(), _task_rows(), train_length=T)),
}


def _clicked(ex, row):
    widgets.click_cell(ex, row["method"], row["length"], row["depth"])
    return ex


def test_every_explorer_has_a_case():
    assert set(CASES) == set(widgets.EXPLORERS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_busy_and_error_lines(name, tiny_lm, sample, traces, passkey_rows, monkeypatch):
    analysis, figure, build = CASES[name]
    fixtures = dict(tiny_lm=tiny_lm, sample=sample, traces=traces, passkey_rows=passkey_rows)
    with torch.no_grad():
        ex = build(fixtures)
    assert ex.message == "" or not ex.message.startswith(("invalid", "error")), ex.message
    assert ex.status == ""
    seen = []
    ex.outputs["status"].observe(lambda change: seen.append(change["new"]), names="value")
    ex.redraw()
    assert any("redrawing" in v for v in seen) and ex.status == "", seen
    module = importlib.import_module(f"mesa_viz.analyses.{analysis}.explorer")
    real = getattr(module, figure)

    def broken(*args, **kwargs):
        raise RuntimeError(f"{figure} broke")
    monkeypatch.setattr(module, figure, broken)
    ex.redraw()                                          # raises nothing: shown in the widget
    assert ex.message.startswith("error: RuntimeError") and f"{figure} broke" in ex.message
    assert "traceback" in ex.outputs["message"].value and ex.status == ""
    monkeypatch.setattr(module, figure, real)
    ex.redraw()
    assert not ex.message.startswith("error"), ex.message
