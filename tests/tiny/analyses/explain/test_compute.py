"""explain(): one result row re-run under two methods with the answer step
captured; its derived views, save/load, bad input, and the two CLI commands."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mesa_viz as mv
from mesa_viz import plots
from mesa_viz.analyses import passkey
from mesa_viz.cli import main
from mesa_viz.analyses.explain import Explanation, file_name, sample_of
from mesa_viz.models import tiny_model
from mesa_viz.analyses.attention_map.pooling import AttentionMap

T, N = 64, 160


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", attn_implementation="eager", max_position_embeddings=T)


@pytest.fixture(scope="module")
def rows(lm, tmp_path_factory):
    """Real passkey rows of the tiny model (origin and mesa, two depths)."""
    out = tmp_path_factory.mktemp("pk") / "passkey.jsonl"
    return list(passkey.evaluate(*lm, methods=["origin", "mesa"], lengths=[N],
                                 depths=[0.2, 0.8], samples=1, out=out, max_new_tokens=4))


@pytest.fixture(scope="module")
def explained(lm, rows):
    return mv.explain(rows[0], *lm, max_new_tokens=4)          # origin, depth 0.2, vs mesa


def test_attention_sums_to_one_and_follows_the_model(lm, explained):
    model, _ = lm
    e = explained
    L, H = model.config.num_hidden_layers, model.config.num_attention_heads
    assert e.methods == ["origin", "mesa"] and e.attention.shape == (2, L, H, N)
    np.testing.assert_allclose(e.attention.sum(-1), 1, atol=1e-5)
    # the answer step's logits are the ones the probabilities come from
    soft = torch.softmax(torch.as_tensor(e.logits), -1).numpy()
    np.testing.assert_allclose(soft, e.attention, atol=1e-6)
    # origin's rows are the model's own eager attention at the last prompt token
    with torch.no_grad():
        out = model(torch.as_tensor(e.input_ids)[None], output_attentions=True)
    eager = np.stack([a[0, :, -1].numpy() for a in out.attentions])
    np.testing.assert_allclose(e.attention[0], eager, atol=1e-5)
    assert e.query_row == N - 1 and e.params[1]["train_length"] == T


def test_reproduces_the_row_and_says_who_answers(explained, rows):
    a = explained.answers[0]
    assert a["reproduced"] is True and a["text"] == rows[0]["text"]
    assert a["correct"] == rows[0]["correct"]
    assert all(isinstance(x["correct"], bool) for x in explained.answers)


def test_a_mesa_row_runs_with_its_own_parameters(lm, rows):
    row = rows[3]
    assert row["method"] == "mesa" and row["params"]["prefill_length"] == N
    e = mv.explain(row, *lm, max_new_tokens=4)
    assert e.methods == ["mesa", "origin"] and e.answers[0]["reproduced"] is True
    assert e.params[0] == row["params"]
    assert e.chunk_plans[0] is not None and e.chunk_plans[1] is None
    # its chunks (at most T/8 tokens) cut the needle where the row says, and the summary says so
    assert e.needle_cuts[0] == row["needle_cuts"] != [] and e.needle_cuts[1] == []
    assert f"mesa cuts the needle at token {row['needle_cuts'][0]}" in e.summary()
    assert "origin cuts" not in e.summary()


def test_needle_mass_moves_with_the_needle(lm, explained, rows):
    other = mv.explain(rows[1], *lm, max_new_tokens=0)          # the same method, depth 0.8
    assert rows[1]["method"] == "origin" and rows[1]["depth"] == 0.8
    (a0, b0), (a1, b1) = explained.needle[0], other.needle[0]
    assert a1 > b0                                               # the needle moved past itself
    for e, (a, b) in ((explained, (a0, b0)), (other, (a1, b1))):
        np.testing.assert_allclose(e.needle_mass(), e.attention[..., a:b].sum(-1), rtol=1e-6)
    assert np.abs(explained.needle_mass() - other.needle_mass()).max() > 1e-3
    assert other.answers[0]["text"] is None and other.answers[0]["correct"] == rows[1]["correct"]


def test_views_add_up(explained):
    e = explained
    d = np.arange(N)
    far = e.attention[..., (N - 1 - d) >= T].sum(-1)
    np.testing.assert_allclose(e.far_mass(), far, rtol=1e-6)
    np.testing.assert_allclose(e.sink_mass(), e.attention[..., :4].sum(-1), rtol=1e-6)
    p = e.attention.astype(float)
    np.testing.assert_allclose(e.entropy(), -(p * np.log(p)).sum(-1), rtol=1e-6)
    assert np.all(e.max_logit(far=True) <= e.logits.max(-1) + 1e-6)
    near_and_far = np.maximum(e.max_logit(far=True), e.max_logit(far=False))
    np.testing.assert_allclose(near_and_far, e.logits.max(-1))


def test_retrieval_heads_rank_by_the_method_that_answers(explained):
    for ok, answering in (((False, True), 1), ((True, False), 0), ((False, False), 0)):
        answers = [dict(a, correct=c) for a, c in zip(explained.answers, ok)]
        e = dataclasses.replace(explained, answers=answers)
        assert e.order()[0] == answering
        heads = e.retrieval_heads(top=3)
        mass = e.needle_mass()[answering]
        assert [h["needle"][e.methods[answering]] for h in heads] == \
            pytest.approx(sorted(mass.ravel(), reverse=True)[:3])
        h = heads[0]
        assert h["sinks"][e.methods[1]] == pytest.approx(e.sink_mass()[1, h["layer"], h["head"]])
        assert h["top_keys"][e.methods[0]][0]["p"] == pytest.approx(
            e.attention[0, h["layer"], h["head"]].max())
    assert "heads carrying the needle under" in explained.summary()


def test_masked_keys_have_no_logit(lm, rows):
    e = mv.explain(rows[0], *lm, against="streaming-llm", against_params=dict(sink_tokens=4),
                   max_new_tokens=0)
    hidden = np.zeros(N, bool)
    hidden[4:N - 1 - (T - 4) + 1] = True                         # not a sink, not in the window
    assert np.isneginf(e.logits[1][..., hidden]).all() and (e.attention[1][..., hidden] == 0).all()
    assert np.isfinite(e.logits[1][..., ~hidden]).all()


def test_rows_with_and_without_the_sample_fields(lm, explained, rows):
    model, tok = lm
    s = passkey.make_sample(tok, N, 0.2, 0)
    full = dict(rows[0], input_ids=s["input_ids"], needle_span=s["needle_span"])
    e = mv.explain(full, model, None, max_new_tokens=0)          # no tokenizer needed
    np.testing.assert_array_equal(e.attention, explained.attention)
    assert e.answers[0]["correct"] == rows[0]["correct"] and e.answers[1]["correct"] is None
    assert sample_of(rows[0], tok)["needle"] == [s["needle_span"]]


@pytest.mark.parametrize("change, match", [
    (dict(expected=12345), "expects key 12345 but its rebuilt sample holds"),
    (dict(needle_span=[3, 9]), r"has needle_span \[3, 9\] but its rebuilt sample has"),
    (dict(input_ids=[1, 2, 3], needle_span=[2, 5]), r"needle span \[2, 5\] is outside the "
                                                    r"3-token input"),
    (dict(input_ids=[1, 2, 3], needle_span=None), "has input_ids but no needle_span"),
    (dict(method="nope"), r"unknown method 'nope'"),
])
def test_bad_rows(lm, rows, change, match):
    with pytest.raises(ValueError, match=match):
        row = {k: v for k, v in dict(rows[0], **change).items() if v is not None}
        mv.explain(row, *lm, max_new_tokens=0)


def test_bad_calls(lm, rows):
    model, tok = lm
    for q in (N, -1, 2.5):
        with pytest.raises(ValueError, match=rf"query_row={q!r} is outside the input: "
                                             rf"allowed 0..{N - 1}"):
            mv.explain(rows[0], model, tok, query_row=q)
    with pytest.raises(ValueError, match="cannot rebuild the sample.*missing \\['tokenizer'\\]"):
        mv.explain(rows[0], model, None)
    with pytest.raises(ValueError, match="against='origin' is the row's own method"):
        mv.explain(rows[0], model, tok, against="origin")


def test_save_load_redraws_without_the_model(explained, tmp_path):
    explained.save(tmp_path / "e_0.8_x")                         # dots in the name are kept
    assert (tmp_path / "e_0.8_x.npz").exists() and (tmp_path / "e_0.8_x.json").exists()
    back = Explanation.load(tmp_path / "e_0.8_x.json")
    for name in ("attention", "logits", "input_ids"):
        np.testing.assert_array_equal(getattr(back, name), getattr(explained, name))
    assert back.answers == explained.answers and back.needle == explained.needle
    figs, again = plots.explanation_figures(explained), plots.explanation_figures(back)
    assert list(figs) == ["needle", "heads", "rows", "distance", "logits", "entropy"]
    for k in figs:
        assert figs[k].to_json() == again[k].to_json(), k
    names = [s.name for s in figs["logits"].layout.shapes]
    assert "train_length" in names and "distance >= T" in names


def test_cli_explain_and_attention_map(rows, tmp_path, capsys):
    results = tmp_path / "passkey.jsonl"
    results.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "explain"
    assert main(["explain", "--tiny", "--passkey", str(results), "--index", "0",
                 "--max-new-tokens", "4", "--out", str(out)]) == 0
    path = out / file_name(rows[0], "mesa")
    assert Path(f"{path}.npz").exists() and (out / "explain.html").exists()
    assert "heads carrying the needle" in capsys.readouterr().out
    assert main(["explain", "--passkey", str(results), "--index", "0", "--out", str(out)]) == 0
    assert "loaded" in capsys.readouterr().out                   # a rerun needs no model
    with pytest.raises(SystemExit, match="--index 9: allowed 0..3"):
        main(["explain", "--tiny", "--passkey", str(results), "--index", "9", "--out", str(out)])

    maps = tmp_path / "maps"
    assert main(["attention-map", "--tiny", "--length", "120", "--layer", "1", "--head", "0",
                 "--grid", "30", "--out", str(maps)]) == 0
    printed = capsys.readouterr().out
    assert "mesa: layer 1, head 0, 120 tokens, 30x30 cells (max)" in printed and "peak" in printed
    amap = AttentionMap.load(maps / "map_mesa")
    assert amap.values.shape == (30, 30) and amap.q is not None
    assert (maps / "attention-map.html").exists()
    with pytest.raises(SystemExit, match=r"grid=500: allowed an integer in \[1, 120\]"):
        main(["attention-map", "--tiny", "--length", "120", "--layer", "0", "--head", "0",
              "--grid", "500", "--out", str(tmp_path / "x")])


@pytest.mark.parametrize("command", [["explain", "--tiny", "--index", "0"],
                                     ["report", "--no-model"]])
def test_a_broken_results_line_stops_with_its_file_and_line(rows, tmp_path, command):
    """``explain --passkey`` and ``report --passkey`` read the rows strictly:
    a broken line in the middle is an error naming the file and the line."""
    results = tmp_path / "passkey.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines[1] = lines[1][:30]                       # e.g. two runs writing one file
    results.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit, match=f"{results}, line 2: not a JSON row"):
        main([*command, "--passkey", str(results), "--out", str(tmp_path / "out")])
