"""Passkey samples as the field draws them: each sample its own seeded key and
filler offset, the same across methods and lengths, rows that carry them,
old rows (another sampler) kept but not reused, accuracy with its Wilson
interval and the paired comparison of two methods."""

from __future__ import annotations

import json
import logging

import pytest

from mesa_viz.data import FILLER, PASSKEY_INTRO
from mesa_viz.analyses import passkey
from mesa_viz.models import tiny_model
from mesa_viz.runs import read_jsonl, wilson_interval


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", max_position_embeddings=128)


def test_keys_and_offsets_differ_per_sample_and_depth(tiny):
    tok = tiny[1]
    samples = [passkey.make_sample(tok, 400, d, s) for s in range(10) for d in (0.1, 0.5, 0.9)]
    assert len({s["passkey"] for s in samples}) >= 28                 # 30 samples
    assert len({s["filler_offset"] for s in samples}) >= 5
    assert len({tuple(s["input_ids"]) for s in samples}) == 30
    depth_only = {passkey.make_sample(tok, 400, d, 0)["passkey"] for d in (0.1, 0.5, 0.9)}
    assert len(depth_only) == 3                                       # not one key per seed


def test_samples_are_reproducible_and_shared_across_lengths(tiny):
    tok = tiny[1]
    a, b = passkey.make_sample(tok, 400, 0.5, 7), passkey.make_sample(tok, 400, 0.5, 7)
    assert a == b
    longer = passkey.make_sample(tok, 900, 0.5, 7)
    assert (longer["passkey"], longer["filler_offset"]) == (a["passkey"], a["filler_offset"])
    assert passkey.draws(7, 0.5)[0] == a["passkey"] == passkey.passkey_of(7, 0.5)


def test_the_filler_starts_at_the_offset(tiny):
    tok = tiny[1]
    s = passkey.make_sample(tok, 400, 0.5, 3)
    unit = tok(" " + FILLER, add_special_tokens=False)["input_ids"]
    head = len(tok(PASSKEY_INTRO)["input_ids"])
    assert s["input_ids"][head:head + 5] == (unit * 2)[s["filler_offset"]:][:5]


def test_rows_carry_key_span_and_offset_and_old_rows_are_not_reused(tiny, tmp_path, caplog):
    model, tok = tiny
    out = tmp_path / "p.jsonl"
    old = dict(method="origin", length=200, depth=0.5, seed=0, expected=60494, answer=60494,
               correct=True, text="", seconds=1.0, params={}, model="old")
    out.write_text(json.dumps(old) + "\n")
    with caplog.at_level(logging.WARNING, logger="mesa_viz.analyses.passkey"):
        rows = list(passkey.evaluate(model, tok, methods=["origin", "mesa"], lengths=[200],
                                     depths=[0.5], samples=2, out=out, max_new_tokens=2))
    assert "asked with other keys" in caplog.text
    assert len(rows) == 4 and len(read_jsonl(out)) == 5              # the old row stays
    assert passkey.passkey_of(0, 0.5) != 60494                       # so it was asked again
    for r in rows:
        sample = passkey.make_sample(tok, 200, 0.5, r["seed"])
        assert r["expected"] == sample["passkey"]
        assert r["needle_span"] == sample["needle_span"]
        assert r["filler_offset"] == sample["filler_offset"]
    table = passkey.summary(read_jsonl(out))                          # old rows still read
    assert {t["method"] for t in table} == {"origin", "mesa"}


def test_summary_reports_n_and_the_wilson_interval():
    rows = [dict(method="mesa", length=9216, depth=0.5, correct=k != 3) for k in range(20)]
    (cell,) = passkey.summary(rows)
    assert (cell["n"], cell["correct"], cell["accuracy"]) == (20, 19, 0.95)
    assert (cell["ci_low"], cell["ci_high"]) == wilson_interval(19, 20)
    assert 0.76 < cell["ci_low"] < 0.77 and 0.99 < cell["ci_high"] < 1.0


def test_compare_counts_discordant_pairs_on_the_same_samples():
    def rows(method, wrong):
        return [dict(method=method, length=L, depth=0.5, seed=s, expected=100 + s,
                     correct=(L, s) not in wrong) for L in (100, 200) for s in range(10)]
    data = rows("mesa", {(200, s) for s in range(8)}) + rows("origin", {(200, 9)})
    data += [dict(method="origin", length=100, depth=0.5, seed=0, expected=7, correct=False)]
    (short, long) = passkey.compare(data, "mesa", "origin")
    assert short == dict(length=100, pairs=10, only_a=0, only_b=0, p=1.0)
    assert (long["pairs"], long["only_a"], long["only_b"]) == (10, 1, 8)
    assert long["p"] == pytest.approx(2 * (1 + 9) / 2 ** 9)          # exact binomial, 9 pairs
    by_depth = passkey.compare(data, "mesa", "origin", by_depth=True)
    assert [(c["length"], c["depth"]) for c in by_depth] == [(100, 0.5), (200, 0.5)]
