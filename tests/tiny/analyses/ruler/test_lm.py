"""The ``mesa-viz`` lm-eval model type and offline RULER runs, end to end on a
tiny random Llama (saved with its in-process tokenizer; no network): lm-eval's
own ``simple_evaluate`` and its literal CLI through the ``.pth`` hook, the
method really applied, no truncation, device fallback, bad model args, the
generators against lm-eval's stock ones, the runner's rows, pairing and
resume, and ``mesa-viz ruler``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

import _mesa_viz_lm_eval as hook
from mesa_viz.cli import main as cli_main
from mesa_viz.analyses.ruler import TASK_DIR
from mesa_viz.models import tiny_model
from mesa_viz.runs import read_jsonl

hook.install()
import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from mesa_viz.analyses import ruler
from mesa_viz.analyses.ruler import lm as lme, run as lme_run  # noqa: E402
from mesa_viz.analyses.ruler.tasks import ruler_offline  # noqa: E402

from repo import ROOT  # noqa: E402
T = 64
LENGTHS = [640, 768]           # the tiny tokenizer spends ~250 tokens on RULER's template
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", max_position_embeddings=T)


@pytest.fixture(scope="module")
def tiny_dir(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny[0].save_pretrained(path)
    tiny[1].save_pretrained(path)
    return path


def test_model_type_is_registered_beside_the_builtins():
    from lm_eval.api.registry import get_model
    from lm_eval.models.huggingface import HFLM
    assert get_model("mesa-viz") is lme.MesaVizLM and get_model("hf") is HFLM


def test_simple_evaluate_runs_a_task_end_to_end(tiny_dir):
    manager = TaskManager(include_path=str(TASK_DIR), metadata=dict(
        pretrained=str(tiny_dir), max_seq_lengths=[LENGTHS[0]], num_samples=2))
    res = lm_eval.simple_evaluate(
        model="mesa-viz", model_args=f"pretrained={tiny_dir},method=mesa,stair_start=8",
        tasks=["niah_multivalue_noise"], task_manager=manager, gen_kwargs="max_gen_toks=4",
        device="cpu", log_samples=True, bootstrap_iters=0)
    score = res["results"]["niah_multivalue_noise"][f"{LENGTHS[0]},none"]
    assert 0 <= score <= 1
    samples = res["samples"]["niah_multivalue_noise"]
    assert len(samples) == 2
    for s in samples:                           # four values of one key, all in the prompt
        assert len(s["doc"]["outputs"]) == 4
        assert all(v in s["arguments"][0][0] for v in s["doc"]["outputs"])
    assert "method=mesa" in res["config"]["model_args"] or \
        res["config"]["model_args"].get("method") == "mesa"


def test_literal_cli_through_the_pth_hook(tiny_dir, tmp_path):
    """``lm_eval --model mesa-viz`` with the hook the installed .pth runs
    (``site.addsitedir`` runs this checkout's .pth like site-packages does);
    lm-eval's default device cuda:0 falls back to the CPU with a log line."""
    args = ["--model", "mesa-viz", "--model_args",
            f"pretrained={tiny_dir},method=rerope,window=16", "--include_path", str(TASK_DIR),
            "--tasks", "niah_multikey_1_noise", "--metadata",
            json.dumps({"max_seq_lengths": [LENGTHS[0]], "num_samples": 1}),
            "--gen_kwargs", "max_gen_toks=4", "--output_path", str(tmp_path / "out"),
            "--log_samples"]
    code = ("import site, sys; site.addsitedir(sys.argv[1]); "
            "from lm_eval.__main__ import cli_evaluate; sys.argv = ['lm_eval', *sys.argv[2:]]; "
            "cli_evaluate()")
    done = subprocess.run([sys.executable, "-c", code, str(ROOT), *args], capture_output=True,
                          text=True, env={**OFFLINE, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert results["config"]["model"] == "mesa-viz"
    assert "method" in json.dumps(results["config"]["model_args"])
    assert next((tmp_path / "out").rglob("samples_niah_multikey_1_noise_*.jsonl"))
    if not torch.cuda.is_available():
        assert "device='cuda:0': CUDA is not available here; mesa-viz runs on cpu" in done.stderr


def test_the_method_is_applied(tiny):
    model, tok = tiny
    lms = {m: lme.MesaVizLM(pretrained=model, tokenizer=tok, method=m) for m in ("origin", "mesa")}
    for n, same in ((T, True), (5 * T, False)):
        ids = torch.randint(3, 512, (1, n), generator=torch.Generator().manual_seed(n))
        a, b = (lms[m]._model_call(ids) for m in ("origin", "mesa"))
        assert torch.allclose(a, b, atol=1e-5) == same


def test_prompts_are_never_truncated(tiny):
    model, tok = tiny
    lm = lme.MesaVizLM(pretrained=model, tokenizer=tok, max_length=50)
    with pytest.raises(ValueError, match="never truncates"):
        lm.tok_batch_encode([" The sky is blue." * 40], left_truncate_len=40)
    with pytest.raises(ValueError, match="never truncates"):
        lm._loglikelihood_tokens([(("a", "b"), [5] * 60, [6])])
    assert lme.MesaVizLM(pretrained=model, tokenizer=tok).max_length == lme.NO_TRUNCATION


def test_absent_gpu_falls_back_to_cpu(tiny_dir, caplog):
    lm = lme.MesaVizLM(pretrained=str(tiny_dir), device="cuda:0")
    if torch.cuda.is_available():
        assert lm.device.type == "cuda"
    else:
        assert lm.device.type == "cpu" and "CUDA is not available here" in caplog.text


@pytest.mark.parametrize("args, match", [
    (dict(method="nope"), "unknown method 'nope'"),
    (dict(method="mesa", stair_strat=8), r"model args \[.stair_strat.\] are not used"),
    (dict(revision="main"), r"model args \[.revision.\] are not used"),
    (dict(method="mesa", stair="sideways"), "stair=.sideways.: allowed"),
    (dict(batch_size=4), "batch_size=4: .* allowed 1"),
    (dict(batch_size="auto"), "allowed 1"),
])
def test_bad_model_args(tiny, args, match):
    model, tok = tiny
    with pytest.raises(ValueError, match=match):
        lme.MesaVizLM(pretrained=model, tokenizer=tok, **args)


def test_loaded_model_needs_its_tokenizer(tiny):
    with pytest.raises(ValueError, match="tokenizer= given too"):
        lme.MesaVizLM(pretrained=tiny[0])


def test_ruler_tokenizer_falls_back_to_the_mesa_viz_model(monkeypatch):
    """With the hook, RULER's lookup names mesa-viz's default tokenizer when
    the model args name none (``pretrained`` left out); others are unchanged."""
    from lm_eval.tasks.ruler import common_utils
    monkeypatch.setattr(lme, "default_tokenizer_name", lambda: "/the/default")
    assert common_utils.resolve_tokenizer_name({"method": "mesa"}) == "/the/default"
    assert common_utils.resolve_tokenizer_name({"pretrained": "/x"}) == "/x"
    assert common_utils.resolve_tokenizer_name.__wrapped__({}) is None


@pytest.mark.parametrize("task", ["niah_single_1", "niah_multikey_2", "niah_multikey_3"])
def test_needle_generators_are_lm_evals(tiny_dir, task):
    """The first prompts of our sampled task equal lm-eval's stock task's
    (500 prompts) from the same RNG state: same generator, same arguments."""
    from lm_eval.tasks.ruler import niah_utils
    import random
    seed = zlib.crc32(f"{task}:{LENGTHS[0]}".encode())
    random.seed(seed)
    np.random.seed(seed)
    stock = getattr(niah_utils, task)(tokenizer=str(tiny_dir), max_seq_lengths=[LENGTHS[0]])
    ours = ruler_offline.sampled(task, tokenizer=str(tiny_dir), max_seq_lengths=[LENGTHS[0]],
                                 num_samples=2)
    assert len(stock["test"]) == 500 and len(ours["test"]) == 2
    assert [dict(d) for d in ours["test"]] == [dict(stock["test"][k]) for k in range(2)]


def test_runner_rows_pairing_and_resume(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    out = tmp_path / "ruler.jsonl"
    calls = []
    real = lme.MesaVizLM._model_generate
    monkeypatch.setattr(lme.MesaVizLM, "_model_generate",
                        lambda self, *a, **k: calls.append(self.method) or real(self, *a, **k))
    grid = dict(methods=["origin", "mesa"], tasks=["niah_single_1"], lengths=LENGTHS, samples=2,
                out=out, gen_kwargs={"max_gen_toks": 4})
    rows = list(lme_run.evaluate(model, tok, **grid))
    assert len(rows) == len(calls) == 8 and read_jsonl(out) == rows
    assert {(r["length"], r["sample"]) for r in rows} == {(L, i) for L in LENGTHS for i in (0, 1)}
    for r in rows:
        assert 0 <= r["score"] <= 1 and r["train_length"] == T and r["target"]
        assert r["prompt_tokens"] <= r["length"]
    hashes = {m: [r["prompt_hash"] for r in rows if r["method"] == m] for m in ("origin", "mesa")}
    assert hashes["origin"] == hashes["mesa"] and len(set(hashes["mesa"])) == 4  # same prompts
    assert list(lme_run.evaluate(model, tok, **grid)) == rows and len(calls) == 8    # all there
    out.write_text("".join(json.dumps(r) + "\n" for r in rows[:5]))              # lose 3 rows
    assert list(lme_run.evaluate(model, tok, **grid)) == rows and len(calls) == 8    # from cache


def test_another_engine_runs_one_model_at_a_time(tiny, tmp_path):
    """``evaluate_lms`` (the grid any engine runs: the vLLM plugin's too)
    builds one method's model at a time and releases each when its method is
    done, the last one too; its rows are ``evaluate``'s."""
    model, tok = tiny
    events = []

    def lm_for(method, params):
        events.append(("build", method))
        return lme.MesaVizLM(pretrained=model, tokenizer=tok, method=method, train_length=T,
                             **params)

    grid = dict(methods=["origin", "mesa"], tasks=["niah_single_1", "niah_multivalue_noise"],
                lengths=[640], samples=1, gen_kwargs={"max_gen_toks": 4})
    rows = list(lme_run.evaluate_lms(
        lm_for, tok, out=tmp_path / "a.jsonl", method_params={},
        fields=dict(train_length=T, train_length_from="train_length="), name="tiny",
        prompt_ids=lambda lm, text: lm.tok_batch_encode([text])[0][0].tolist(),
        close=lambda lm: events.append(("close", lm.method)), **grid))
    assert events == [("build", "origin"), ("close", "origin"), ("build", "mesa"),
                      ("close", "mesa")]
    reference = list(lme_run.evaluate(model, tok, out=tmp_path / "b.jsonl", train_length=T,
                                      **grid))
    drop = lambda r: {k: v for k, v in r.items() if k != "model"}  # noqa: E731
    assert list(map(drop, rows)) == list(map(drop, reference)) and len(rows) == 4


def test_runner_refuses_bad_input(tiny, tmp_path):
    model, tok = tiny
    base = dict(methods=["mesa"], tasks=["niah_single_1"], lengths=[640], samples=1,
                out=tmp_path / "r.jsonl")
    for change, match in [(dict(tasks=["niah_single_2"]), "needs the network"),
                          (dict(methods=["nope"]), "unknown method"),
                          (dict(samples=0), "samples=0"), (dict(lengths=[]), "lengths is empty")]:
        with pytest.raises(ValueError, match=match):
            lme_run.evaluate(model, tok, **{**base, **change})


def test_cli_ruler(tmp_path, capsys):
    out = tmp_path / "ruler"
    assert cli_main(["ruler", "--tiny", "--methods", "origin,mesa", "--tasks", "ruler_fwe",
                     "--lengths", "768", "--samples", "1", "--max-gen-toks", "4",
                     "--out", str(out)]) == 0
    rows = read_jsonl(out / "ruler.jsonl")
    assert [(r["method"], r["task"], r["length"]) for r in rows] == [
        ("origin", "ruler_fwe", 768), ("mesa", "ruler_fwe", 768)]
    assert "task score against length" in (out / "ruler.html").read_text()
    assert "score" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="task 'ruler_qa_squad' needs the network"):
        cli_main(["ruler", "--tiny", "--tasks", "ruler_qa_squad", "--lengths", "768",
                  "--out", str(out)])


def test_runner_rows_place_and_cut_the_needles(tiny, tmp_path):
    """Each row names the needles' tokens (the asked values' lines, as the
    model read them) and where the method's layout cuts them: Mesa at the
    starts of its later middle chunks inside a needle, origin nowhere; a task
    without needles says None."""
    from mesa_viz.methods import get_method
    model, tok = tiny
    rows = list(lme_run.evaluate(model, tok, methods=["origin", "mesa"],
                                 tasks=["niah_multivalue_noise", "ruler_fwe"], lengths=[640],
                                 samples=1, out=tmp_path / "r.jsonl", gen_kwargs={"max_gen_toks": 2}))
    by = {(r["method"], r["task"]): r for r in rows}
    needle = by["mesa", "niah_multivalue_noise"]
    assert by["origin", "niah_multivalue_noise"]["needle_spans"] == needle["needle_spans"]
    assert len(needle["needle_spans"]) == len(needle["target"]) == 4
    doc = ruler_offline.sampled("niah_multivalue_noise", tokenizer=_saved_tokenizer(tok, tmp_path),
                                max_seq_lengths=[640], num_samples=1)["test"][0]
    ids = tok(doc["input"] + doc["gen_prefix"])["input_ids"]     # as HFLM encodes it: BOS first
    assert needle["input_tokens"] == len(ids) and ids[0] == tok.bos_token_id
    values = sorted(needle["target"], key=doc["input"].find)
    for (a, b), value in zip(needle["needle_spans"], values):
        text = tok.decode(ids[a:b])
        assert "special magic" in text and value in text and "grass" not in text
    plan = get_method("mesa", train_length=T).resolve(len(ids), prefill_length=len(ids)).plan()
    starts = [c for c, _ in plan.middle[1:]]
    assert needle["needle_cuts"] == [c for c in starts
                                     if any(a < c < b for a, b in needle["needle_spans"])] != []
    assert by["origin", "niah_multivalue_noise"]["needle_cuts"] == []
    assert by["mesa", "ruler_fwe"]["needle_spans"] is by["mesa", "ruler_fwe"]["needle_cuts"] is None
    fields = ("input_tokens", "needle_spans", "needle_cuts")
    old = [{k: v for k, v in r.items() if k not in fields} for r in rows]   # rows before the fields
    again = ruler.with_needles(old, tok)               # prompts rebuilt, needles placed again
    for r, a in zip(rows, again):
        kept = fields if r["task"] != "ruler_fwe" else fields[1:]    # no needles: not rebuilt
        assert {k: a[k] for k in kept} == {k: r[k] for k in kept}
    niah = next(r for r in old if r["task"] == "niah_multivalue_noise")
    with pytest.raises(ValueError, match="prompt_hash differs"):
        ruler.with_needles([dict(niah, prompt_hash="0" * 64)], tok)


def _saved_tokenizer(tok, folder):
    tok.save_pretrained(folder / "tok")
    return str(folder / "tok")


def test_needle_tokens_refuse_a_prompt_that_is_not_the_text(tiny):
    _, tok = tiny
    text = "One of the special magic numbers for a-b is: 12."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ruler.needle_tokens([(0, len(text))], text, ids, tok) == [[0, len(ids)]]
    assert ruler.needle_tokens([(0, len(text))], text, [99] + ids, tok) == [[1, len(ids) + 1]]
    with pytest.raises(ValueError, match="not its text's tokenization"):
        ruler.needle_tokens([(0, 3)], text, ids[1:], tok)


def test_needles_that_cannot_be_placed_are_unknown_not_a_lost_run(tiny, caplog):
    """A tokenizer that appends a token, or an answer missing from its
    prompt: the row's needle fields say None (unknown) with a warning; the
    row itself is not lost."""
    from mesa_viz.methods import get_method
    _, tok = tiny
    text = "Hay.\nOne of the special magic numbers for a-b is: 12.\nWhat is it?"

    def encode(text):                                # an engine's encoding, one token appended
        return tok(text)["input_ids"] + [0]

    needles = lme_run._needle_locator(encode, tok, "niah_single_1",
                                      get_method("mesa", train_length=T))
    with caplog.at_level("WARNING", logger="mesa_viz.lm_eval_model"):
        got = needles(text, ["12"])
        missing = needles(text, ["34"])
    assert got == dict(input_tokens=len(tok(text)["input_ids"]) + 1, needle_spans=None,
                       needle_cuts=None) and missing["needle_cuts"] is None
    assert "not its text's tokenization" in caplog.text and "answer '34'" in caplog.text
