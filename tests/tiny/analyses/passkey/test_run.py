"""mesa_viz.passkey: exact-length prompts with a real (tiny, in-process)
tokenizer, answer parsing, the evaluation loop on a tiny random model
(streamed rows, resume, memory refusal), the summary, the data script and the
CLI end to end."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from mesa_viz.analyses import passkey
from mesa_viz.analyses.passkey import run as passkey_run
from mesa_viz.cli import main as cli_main
from mesa_viz.methods import resolve
from mesa_viz.models import tiny_model
from mesa_viz.runs import read_jsonl, wilson_interval

from repo import ROOT  # noqa: E402
T_TINY = 128                       # tiny model's training length: 200 tokens extrapolate
FIELDS = {"method", "length", "depth", "seed", "expected", "answer", "correct", "seconds",
          "params", "model"}


@pytest.fixture(scope="module")
def tiny_lm():
    return tiny_model("llama", max_position_embeddings=T_TINY)


@pytest.fixture(scope="module")
def tok(tiny_lm):
    return tiny_lm[1]


@pytest.fixture(scope="module")
def tiny(tiny_lm):
    return tiny_lm[0]


@pytest.fixture
def counted(tiny, monkeypatch):
    """The tiny model with its ``generate`` calls counted."""
    calls = []
    real = tiny.generate

    def generate(*args, **kwargs):
        calls.append(kwargs.get("input_ids", args[0] if args else None).shape[-1])
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny, "generate", generate, raising=False)
    return tiny, calls


# -- samples -----------------------------------------------------------------------

@pytest.mark.parametrize("length", [66, 101, 257, 1000, 2048, 8193])
@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_sample_has_exact_length_and_reencodes(tok, length, depth):
    s = passkey.make_sample(tok, length, depth, seed=7)
    assert len(s["input_ids"]) == s["length"] == length
    assert tok(s["prompt"])["input_ids"] == s["input_ids"]
    assert s["prompt"].rstrip().endswith("What is the pass key? The pass key is")
    assert s["input_ids"][0] == tok.bos_token_id and s["input_ids"].count(tok.bos_token_id) == 1
    assert (s["depth"], s["seed"]) == (depth, 7)


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_needle_sits_at_the_requested_depth(tok, depth):
    length = 4096
    s = passkey.make_sample(tok, length, depth, seed=3)
    start, stop = s["needle_span"]
    needle = tok.decode(s["input_ids"][start:stop])
    assert needle == f" The pass key is {s['passkey']}. Remember it. {s['passkey']} is the pass key."
    assert s["prompt"].count(str(s["passkey"])) == 2
    assert abs(start / length - depth) < 0.03
    # depth is measured in the haystack: 0 and 1 touch its ends
    short = passkey.make_sample(tok, 200, depth, seed=3)
    others = [passkey.make_sample(tok, 200, d, 3)["needle_span"][0] for d in (0.0, 1.0)]
    assert others[0] <= short["needle_span"][0] <= others[1]


def test_passkey_comes_from_the_seed(tok):
    a, b = (passkey.make_sample(tok, 300, 0.5, s) for s in (1, 1))
    assert a == b
    keys = {passkey.make_sample(tok, 300, 0.5, s)["passkey"] for s in range(20)}
    assert len(keys) > 15 and all(10000 <= k <= 99999 for k in keys)


def test_bad_sample_requests_are_refused(tok):
    with pytest.raises(ValueError, match="too short"):
        passkey.make_sample(tok, 20, 0.5, 0)
    for depth in (-0.1, 1.5, "middle"):
        with pytest.raises(ValueError, match="depth"):
            passkey.make_sample(tok, 300, depth, 0)


@pytest.mark.parametrize("text, key", [
    (" 71432. Remember", 71432), ("71432", 71432), (" is 12345 or 54321", 12345),
    (" 714320 then 11111.", 11111), (" 7143", None), ("", None), (None, None),
    ("key=99999!", 99999), (" 12 345", None)])
def test_parse_answer(text, key):
    assert passkey.parse_answer(text) == key


# -- evaluation --------------------------------------------------------------------

def run(model, tok, path, **kwargs) -> list[dict]:
    return list(passkey.evaluate(model, tok, out=path, **kwargs))


def test_evaluate_streams_rows_and_resumes(tok, counted, tmp_path):
    model, calls = counted
    grid = dict(methods=["origin", "mesa"], lengths=[100, 200], depths=[0.2, 0.8])
    path = tmp_path / "passkey.jsonl"
    stream = passkey.evaluate(model, tok, samples=1, out=path, max_new_tokens=3, **grid)
    assert not path.exists() and calls == []                   # nothing runs until asked
    first = next(stream)                                       # saved before it is yielded
    assert read_jsonl(path) == [first] and len(calls) == 1
    rows = [first, *stream]
    assert len(rows) == len(calls) == 8 == len(read_jsonl(path))
    for row in read_jsonl(path):
        assert FIELDS <= set(row)
        assert row["correct"] == (row["answer"] == row["expected"])
        assert row["seconds"] > 0 and row["model"]
        assert row["params"]["train_length"] == row["train_length"] == T_TINY
        assert row["train_length_from"] == "max_position_embeddings"
        json.dumps(row)
    mesa_long = next(r for r in rows if r["method"] == "mesa" and r["length"] == 200)
    assert mesa_long["params"]["first_chunk"] == T_TINY // 16
    assert mesa_long["params"]["prefill_length"] == 200

    again = run(model, tok, path, samples=1, max_new_tokens=3, **grid)
    assert len(calls) == 8 and again == rows                   # nothing recomputed

    more = run(model, tok, path, samples=2, max_new_tokens=3, **grid)
    assert len(calls) == 16 and len(more) == 16 == len(read_jsonl(path))
    assert {(r["seed"]) for r in more} == {0, 1}


def test_batches_write_the_rows_of_one_at_a_time(tok, tiny, tmp_path, monkeypatch):
    """Samples of one method, length and depth answered in batches of 3 write
    the rows answered one at a time (all but ``seconds``), in the same order;
    a rerun with a batch's rows partly there runs only its missing samples."""
    shapes = []
    real = tiny.generate

    def generate(*args, **kwargs):
        shapes.append(tuple(kwargs.get("input_ids", args[0] if args else None).shape))
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny, "generate", generate, raising=False)
    grid = dict(methods=["origin", "mesa"], lengths=[200], depths=[0.2, 0.8], samples=3,
                max_new_tokens=3)
    one = run(tiny, tok, tmp_path / "one.jsonl", **grid)
    assert shapes == [(1, 200)] * 12
    del shapes[:]
    three = run(tiny, tok, tmp_path / "three.jsonl", batch_size=3, **grid)
    assert shapes == [(3, 200)] * 4
    assert len({r["text"] for r in one}) > 1                   # the rows differ

    def same(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert same(three) == same(one) == same(read_jsonl(tmp_path / "three.jsonl"))

    partial = tmp_path / "partial.jsonl"                       # origin at 0.2: seed 1 done
    partial.write_text(json.dumps(one[1]) + "\n")
    del shapes[:]
    resumed = run(tiny, tok, partial, batch_size=3, **grid)
    assert shapes == [(2, 200)] + [(3, 200)] * 3
    assert same(resumed) == same(one) and resumed[1] == one[1]
    assert len(read_jsonl(partial)) == 12


def test_evaluate_passes_method_params(tok, tiny, tmp_path):
    rows = run(tiny, tok, tmp_path / "p.jsonl", methods=["mesa"], lengths=[200], depths=[0.5],
               method_params={"mesa": {"stair": "anchored", "chunk_size": 16}},
               max_new_tokens=2)
    assert rows[0]["params"]["stair"] == "anchored"
    assert rows[0]["params"]["chunk_size"] == 16


def test_rows_record_where_the_layout_cuts_the_needle(tok, tiny, tmp_path):
    """Mesa's chunks of at most T/8 tokens cut a needle longer than them: the
    row names the cuts, the same as the layout rule gives (a query that cannot
    see the token before it), origin's row none; old rows without the field
    get them from their params."""
    rows = run(tiny, tok, tmp_path / "p.jsonl", methods=["origin", "mesa"], lengths=[200],
               depths=[0.5], samples=2, max_new_tokens=2)
    by = {(r["method"], r["seed"]): r for r in rows}
    for seed in (0, 1):
        mesa, origin = by["mesa", seed], by["origin", seed]
        a, b = mesa["needle_span"]
        method = resolve("mesa", 200, train_length=T_TINY)
        rel, vis = method.relative(np.arange(a + 1, b), np.arange(a, b - 1))
        assert mesa["needle_cuts"] == [i for i, v in zip(range(a + 1, b), vis) if not v]
        assert mesa["needle_cuts"] and origin["needle_cuts"] == []
        starts = [c[0] for c in method.plan().middle[1:]]
        assert set(mesa["needle_cuts"]) == {s for s in starts if a < s < b}
        old = {k: v for k, v in mesa.items() if k != "needle_cuts"}
        assert passkey.needle_cuts(old) == mesa["needle_cuts"]
    o, m = passkey.summary(rows)                               # first-seen order
    assert (m["method"], m["needles_cut"], o["needles_cut"]) == ("mesa", 2, 0)
    assert passkey.needle_cuts(dict(method="mesa", length=200)) is None


def test_evaluate_scores_a_right_answer(tok, tiny, tmp_path, monkeypatch):
    def oracle(model, tokenizer, batch, method, params, max_new_tokens):
        return ([f" {s['passkey']}. Remember" for s in batch],
                resolve(method, batch[0]["length"], train_length=T_TINY), 0.01)

    monkeypatch.setattr(passkey_run, "_generate", oracle)
    rows = run(tiny, tok, tmp_path / "p.jsonl", methods=["origin"], lengths=[100],
               depths=[0.5], samples=2)
    assert [r["correct"] for r in rows] == [True, True]
    assert rows[0]["answer"] == rows[0]["expected"]


def test_evaluate_skips_lengths_that_do_not_fit(tok, counted, tmp_path, monkeypatch):
    from mesa_viz.runtime import memory
    model, calls = counted
    est = {n: memory.check_fits(model, "origin", n, decode_tokens=2) for n in (100, 200)}
    assert est[200] > est[100]
    avail = (est[100] + est[200]) / 2 / 0.9          # 100 tokens fit, 200 do not
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: avail)
    rows = run(model, tok, tmp_path / "p.jsonl", methods=["origin"], lengths=[100, 200],
               depths=[0.5], max_new_tokens=2)
    assert [r["length"] for r in rows] == [100] and calls == [100]


def test_evaluate_with_given_samples(tok, tiny, tmp_path):
    samples = [passkey.make_sample(tok, L, 0.5, 4) for L in (90, 120)]
    rows = run(tiny, tok, tmp_path / "p.jsonl", methods=["origin"], samples=samples,
               max_new_tokens=2)
    assert [(r["length"], r["seed"]) for r in rows] == [(90, 4), (120, 4)]
    only = run(tiny, tok, tmp_path / "p.jsonl", methods=["origin"], lengths=[120],
               samples=samples)
    assert [r["length"] for r in only] == [120]


@pytest.mark.parametrize("kwargs, match", [
    (dict(methods=["nope"]), "unknown method 'nope'"),
    (dict(methods=[]), "methods is empty"),
    (dict(lengths=[]), "lengths is empty"),
    (dict(lengths=[0]), r"lengths \[0\]: allowed positive integers"),
    (dict(depths=[]), "depths is empty"),
    (dict(depths=[2.0]), "depth"),
    (dict(method_params={"mesa": {"bogus": 1}}), "unknown parameter"),
    (dict(method_params={"rerope": {"window": 8}}), "not among methods"),
    (dict(samples=0), "samples=0"),
    (dict(lengths=None), "lengths given"),
    (dict(out="."), "is a folder"),
    (dict(batch_size=0), "batch_size=0: allowed an int >= 1"),
])
def test_evaluate_refuses_bad_input(tok, tiny, tmp_path, kwargs, match):
    args = {**dict(methods=["origin", "mesa"], lengths=[100], depths=[0.5], samples=1,
                   out=tmp_path / "passkey.jsonl"), **kwargs}
    with pytest.raises(ValueError, match=match):
        passkey.evaluate(tiny, tok, **args)                # refused at the call, not later
    assert not (tmp_path / "passkey.jsonl").exists()


def test_summary():
    rows = [dict(method=m, length=L, depth=d, correct=c) for m, L, d, c in [
        ("mesa", 200, 0.1, True), ("mesa", 200, 0.9, False), ("origin", 200, 0.1, True),
        ("origin", 100, 0.1, True), ("origin", 100, 0.9, True), ("mesa", 100, 0.1, False)]]
    table = passkey.summary(rows)
    assert [(t["method"], t["length"], t["n"], t["accuracy"]) for t in table] == [
        ("mesa", 100, 1, 0.0), ("mesa", 200, 2, 0.5), ("origin", 100, 2, 1.0),
        ("origin", 200, 1, 1.0)]
    deep = passkey.summary(rows, by_depth=True)
    assert len(deep) == 6 and deep[0] == dict(method="mesa", length=100, depth=0.1, n=1,
                                              correct=0, accuracy=0.0, ci_low=0.0,
                                              ci_high=wilson_interval(0, 1)[1], needles_cut=0)
    text = passkey.format_table(table)
    assert "50%" in text and "origin" in text


# -- data script and CLI -----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(tok, tiny, tmp_path_factory):
    """The tiny model saved with its tokenizer, loadable by ``--model``."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _data_script():
    spec = importlib.util.spec_from_file_location("make_passkey_data",
                                                  ROOT / "datas" / "make_passkey_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_script_writes_samples(tok, tiny_dir, tmp_path):
    out = tmp_path / "data.jsonl"
    assert _data_script().main(["--lengths", "100,150", "--depths", "0.25,0.75",
                                "--seeds", "3,9", "--out", str(out),
                                "--tokenizer", str(tiny_dir)]) == 0
    samples = passkey.read_samples(out)
    assert len(samples) == 8
    assert {(s["length"], s["depth"], s["seed"]) for s in samples} == {
        (L, d, s) for L in (100, 150) for d in (0.25, 0.75) for s in (3, 9)}
    for s in samples:
        assert len(s["input_ids"]) == s["length"]
        assert s == {**passkey.make_sample(tok, s["length"], s["depth"], s["seed"]),
                     "tokenizer": s["tokenizer"]}
    with pytest.raises(SystemExit):
        _data_script().main(["--lengths", "100", "--depths", "1.5", "--out", str(out),
                             "--tokenizer", str(tiny_dir)])


def _cli(*args):
    return cli_main(["passkey", *map(str, args)])


def test_cli_end_to_end(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = _cli("--methods", "origin,mesa", "--lengths", "100,200", "--depths", "0.1,0.9",
              "--samples", "1", "--out", out, "--model", tiny_dir,
              "--param", "mesa.stair=anchored", "--max-new-tokens", "2")
    assert rc == 0
    rows = read_jsonl(out / "passkey.jsonl")
    assert len(rows) == 8 and all(FIELDS <= set(r) for r in rows)
    assert all(r["params"]["stair"] == "anchored" for r in rows if r["method"] == "mesa")
    assert all(r["model"] == str(tiny_dir) for r in rows)
    html = (out / "passkey.html").read_text()
    assert "passkey retrieval accuracy" in html and "<html" in html.lower()
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "mesa" in printed and "origin" in printed


def test_cli_resumes_a_run_killed_while_writing_a_row(tiny_dir, tmp_path, caplog):
    """The file a run killed mid-write leaves (its last row cut short): the
    rerun warns with the file and line, keeps the half line in
    ``passkey.jsonl.torn`` and runs again only that row's sample."""
    import logging
    out = tmp_path / "run"
    args = ("--methods", "origin,mesa", "--lengths", "100", "--depths", "0.5",
            "--samples", "2", "--out", out, "--model", tiny_dir, "--max-new-tokens", "1")
    assert _cli(*args) == 0
    rows_file = out / "passkey.jsonl"
    text = rows_file.read_text()
    half = text.splitlines()[-1][:40]
    rows_file.write_text(text[: text.rstrip("\n").rindex("\n") + 1] + half)
    with caplog.at_level(logging.WARNING):
        assert _cli(*args) == 0
    assert f"{rows_file}, line 4: a torn last line" in caplog.text
    assert (out / "passkey.jsonl.torn").read_text().splitlines()[1] == half
    again = read_jsonl(rows_file)
    assert len(again) == 4 and again[:3] == [json.loads(x) for x in text.splitlines()[:3]]
    assert (again[3]["method"], again[3]["seed"]) == (json.loads(text.splitlines()[3])["method"],
                                                      json.loads(text.splitlines()[3])["seed"])


def test_cli_with_data_file(tiny_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    _data_script().main(["--lengths", "90", "--depths", "0.5", "--samples", "2",
                         "--out", str(data), "--tokenizer", str(tiny_dir)])
    out = tmp_path / "run"
    assert _cli("--methods", "origin", "--data", data, "--out", out, "--model", tiny_dir,
                "--max-new-tokens", "1", "--batch-size", "2") == 0
    assert [(r["length"], r["seed"]) for r in read_jsonl(out / "passkey.jsonl")] == [
        (90, 0), (90, 1)]


@pytest.mark.parametrize("args, match", [
    (("--methods", "origin,bogus", "--lengths", "100"), "unknown method 'bogus'"),
    (("--lengths", ""), "lengths is empty"),
    (("--methods", "mesa", "--lengths", "100", "--param", "mesa=1"), "METHOD.KEY=VALUE"),
    (("--lengths", "100", "--depths", "0.5,3"), "depth"),
    (("--lengths", "100", "--batch-size", "0"), "batch_size=0"),
])
def test_cli_refuses_bad_input(tmp_path, args, match):
    with pytest.raises(SystemExit, match=match):
        _cli(*args, "--out", tmp_path / "x", "--model", tmp_path / "never-loaded")
