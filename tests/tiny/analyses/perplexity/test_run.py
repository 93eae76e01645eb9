"""mesa_viz.perplexity (the analysis) on tiny random models of three families: the sliced
NLL equals a direct computation from the model's full logits (origin and
methods past T), the head never scores more than a slice, buckets, streamed
rows, resume, the CLI and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mesa_viz
from mesa_viz.analyses import perplexity as ppl
from mesa_viz.runtime import apply
from mesa_viz.cli import main as cli_main
from mesa_viz.data import FILLER
from mesa_viz.models import tiny_model
from mesa_viz.runs import read_jsonl

T = 64
N = 300                                  # past T: every method extrapolates
TEXT = " ".join(f"{FILLER} Line {k}." for k in range(60))
FIELDS = {"method", "length", "text", "bucket_start", "bucket_end", "tokens", "nll", "ppl",
          "train_length", "train_length_from", "params", "model", "source", "seconds"}


@pytest.fixture(scope="module", params=["llama", "gpt_neox", "qwen3"])
def family(request):
    return tiny_model(request.param, max_position_embeddings=T)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", max_position_embeddings=T)


def _ids(n=N, seed=1):
    return torch.randint(3, 512, (n,), generator=torch.Generator().manual_seed(seed))


def _direct_nll(model, ids, method, **params) -> np.ndarray:
    """NLL of tokens 1..n-1 from the model's own full ``[n, vocab]`` logits."""
    with torch.inference_mode(), apply(model, method, **params):
        logits = model(ids[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits
    return F.cross_entropy(logits[0, :-1].float(), ids[1:], reduction="none").numpy()


@pytest.mark.parametrize("method, params", [("origin", {}), ("mesa", {}),
                                            ("rerope", {"window": 16}),
                                            ("streaming-llm", {})])
def test_sliced_nll_equals_full_logits(family, method, params):
    model, _ = family
    ids = _ids()
    nll, resolved = ppl.token_nll(model, ids, method, slice_tokens=37, **params)
    assert nll.shape == (N - 1,) and nll.dtype == np.float32
    np.testing.assert_allclose(nll, _direct_nll(model, ids, method, **params), atol=1e-5)
    assert resolved["train_length"] == T


def test_origin_equals_the_plain_model(llama):
    """Without any application at all, origin's NLL is the model's."""
    model, _ = llama
    ids = _ids()
    with torch.inference_mode():
        logits = model(ids[None]).logits[0, :-1]
    direct = F.cross_entropy(logits, ids[1:], reduction="none").numpy()
    np.testing.assert_allclose(ppl.token_nll(model, ids, "origin")[0], direct, atol=1e-5)


def test_methods_equal_origin_within_T_and_differ_past_it(llama):
    model, _ = llama
    short, long = _ids(T), _ids()
    for method in ("mesa", "dynamic-ntk"):
        np.testing.assert_allclose(ppl.token_nll(model, short, method)[0],
                                   ppl.token_nll(model, short, "origin")[0], atol=1e-5)
        diff = ppl.token_nll(model, long, method)[0] - ppl.token_nll(model, long, "origin")[0]
        assert np.abs(diff).max() > 1e-3


def test_head_never_scores_more_than_a_slice(llama):
    """No [n, vocab] logits: the head sees at most ``slice_tokens`` positions."""
    model, _ = llama
    rows = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda m, args, out: rows.append(out.shape[-2]))
    try:
        ppl.token_nll(model, _ids(), "mesa", slice_tokens=50)
    finally:
        hook.remove()
    assert max(rows) == 50 and sum(rows) == N - 1


def test_post_processed_logits_are_refused(tmp_path):
    """A model whose logits are not head(hidden) (here doubled) is refused."""
    model, tok = tiny_model("llama", max_position_embeddings=T)
    hook = model.register_forward_hook(lambda m, args, out: out.__setitem__(
        "logits", out["logits"] * 2) or out)
    with pytest.raises(ValueError, match="differs from the model's logits"):
        mesa_viz.perplexity.evaluate(model, tok, methods=["origin"], lengths=[100], texts={"t": TEXT},
                                     out=tmp_path / "p.jsonl")
    hook.remove()


# -- buckets --------------------------------------------------------------------------

@pytest.mark.parametrize("length, T_, buckets, edges", [
    (20000, 8192, None, [0, 8192, 12288, 16384, 20000]),
    (16384, 8192, None, [0, 8192, 12288, 16384]),
    (4000, 8192, None, [0, 4000]),
    (300, 64, [0, 10, 100], [0, 10, 100, 300]),
    (50, 64, [0, 10, 100], [0, 10, 50]),
])
def test_bucket_edges(length, T_, buckets, edges):
    assert ppl.bucket_edges(length, T_, buckets) == edges


@pytest.mark.parametrize("buckets", [[5, 10], [0, 10, 10], [0, 20, 10]])
def test_bad_buckets(buckets):
    with pytest.raises(ValueError, match="buckets="):
        ppl.bucket_edges(100, 64, buckets)


def test_by_bucket_positions_and_means():
    """nll[k] is the NLL of position k + 1: bucket [0, T) holds T - 1 tokens."""
    nll = np.arange(1, 100, dtype=np.float32)          # NLL of position p is p
    rows = ppl.by_bucket(nll, [0, 10, 40, 100])
    assert [(r["bucket_start"], r["bucket_end"], r["tokens"]) for r in rows] == [
        (0, 10, 9), (10, 40, 30), (40, 100, 60)]
    assert [r["nll"] for r in rows] == [5.0, 24.5, 69.5]


# -- the run --------------------------------------------------------------------------

class _DecoderCalls:
    """Counts the outermost forwards of the decoder stack (a prefill in pieces
    runs the stack again from inside its own pre-hook: one call)."""

    def __init__(self, model, calls):
        self.calls, self.depth = calls, 0
        decoder = model.get_decoder()
        self.handles = [decoder.register_forward_pre_hook(self.enter),
                        decoder.register_forward_hook(self.leave)]

    def enter(self, *_):
        self.depth += 1
        if self.depth == 1:
            self.calls.append(1)

    def leave(self, *_):
        self.depth -= 1

    def remove(self):
        for h in self.handles:
            h.remove()


def test_rows_stream_save_and_resume(llama, tmp_path):
    model, tok = llama
    out = tmp_path / "ppl.jsonl"
    calls = []
    hook = _DecoderCalls(model, calls)
    try:
        rows = list(mesa_viz.perplexity.evaluate(model, tok, methods=["origin", "mesa"], lengths=[200],
                                                 texts={"filler": TEXT}, out=out))
        assert len(calls) == 2 + 2 and read_jsonl(out) == rows   # head check (2) + 2 texts
        assert [(r["method"], r["bucket_start"]) for r in rows] == [
            (m, b) for m in ("origin", "mesa") for b in (0, 64, 96, 128, 160, 192)]
        for r in rows:
            assert FIELDS <= set(r) and math.isclose(r["ppl"], math.exp(r["nll"]))
            json.dumps(r)
        assert sum(r["tokens"] for r in rows if r["method"] == "mesa") == 199
        again = list(mesa_viz.perplexity.evaluate(model, tok, methods=["origin", "mesa"],
                                                  lengths=[200], texts={"filler": TEXT}, out=out))
        assert again == rows and len(calls) == 2 + 2 + 2                 # head check only
        out.write_text("".join(line + "\n" for line in out.read_text().splitlines()[:-1]))
        third = list(mesa_viz.perplexity.evaluate(model, tok, methods=["origin", "mesa"],
                                                  lengths=[200], texts={"filler": TEXT}, out=out))
        timeless = [{k: v for k, v in r.items() if k != "seconds"} for r in third]
        assert timeless == [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
        assert len(read_jsonl(out)) == len(rows)                          # no duplicate
    finally:
        hook.remove()


def test_the_text_is_the_tokenized_prefix(llama, tmp_path):
    model, tok = llama
    rows = list(mesa_viz.perplexity.evaluate(model, tok, methods=["origin"], lengths=[150],
                                             texts={"t": TEXT}, out=tmp_path / "p.jsonl"))
    ids = tok(TEXT)["input_ids"][:150]                  # BOS first, as the tokenizer puts it
    nll = ppl.token_nll(model, ids, "origin")[0]
    assert [r["nll"] for r in rows] == pytest.approx(
        [r["nll"] for r in ppl.by_bucket(nll, ppl.bucket_edges(150, T))], abs=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(methods=["nope"]), "unknown method 'nope'"),
    (dict(methods=[]), "methods is empty"),
    (dict(lengths=[]), "lengths is empty"),
    (dict(lengths=[100000]), r"length=100000 is longer than text 't'"),
    (dict(texts=["nope"]), r"texts \['nope'\]: allowed names from \['book', 'code'\]"),
    (dict(texts={}), "texts: allowed"),
    (dict(out="."), "is a folder"),
    (dict(method_params={"mesa": {"bogus": 1}}), "unknown parameter"),
    (dict(slice_tokens=0), "slice_tokens=0"),
])
def test_bad_input(llama, tmp_path, kwargs, match):
    model, tok = llama
    args = {**dict(methods=["origin", "mesa"], lengths=[100], texts={"t": TEXT},
                   out=tmp_path / "p.jsonl"), **kwargs}
    with pytest.raises(ValueError, match=match):
        list(mesa_viz.perplexity.evaluate(model, tok, **args))
    assert not (tmp_path / "p.jsonl").exists()


def test_summary_table():
    rows = [dict(method=m, length=L, text="t", bucket_start=a, bucket_end=b, nll=v)
            for m, L, a, b, v in [("origin", 100, 0, 64, 2.0), ("origin", 100, 64, 100, 3.0),
                                  ("mesa", 100, 0, 64, 2.0), ("origin", 50, 0, 50, 9.0)]]
    assert ppl.summary(rows) == [dict(method="origin", text="t", **{"[0, 64)": 2.0,
                                                                    "[64, 100)": 3.0}),
                                 dict(method="mesa", text="t", **{"[0, 64)": 2.0})]


def test_the_analysis_is_a_module_with_one_entry():
    """``mesa_viz.perplexity`` is the analysis (a plain module, no call trick):
    its sweep is ``evaluate``, as passkey's and RULER's are."""
    assert mesa_viz.perplexity is ppl and not callable(mesa_viz.perplexity)
    assert callable(ppl.evaluate) and not hasattr(ppl, "perplexity")


def test_cli(tmp_path, capsys):
    text = tmp_path / "mine.txt"
    text.write_text(TEXT)
    out = tmp_path / "ppl"
    assert cli_main(["ppl", "--tiny", "--methods", "origin,mesa", "--lengths", "150",
                     "--texts", f"mine={text}", "--out", str(out)]) == 0
    rows = read_jsonl(out / "perplexity.jsonl")
    assert {r["text"] for r in rows} == {"mine"} and len(rows) == 2 * 4
    assert "negative log-likelihood by position" in (out / "perplexity.html").read_text()
    printed = capsys.readouterr().out
    assert "[64, 96)" in printed and "mesa" in printed
    with pytest.raises(SystemExit, match="unknown method 'bogus'"):
        cli_main(["ppl", "--tiny", "--methods", "bogus", "--lengths", "150", "--out",
                  str(out)])
    with pytest.raises(SystemExit, match="is not a file"):
        cli_main(["ppl", "--tiny", "--lengths", "150", "--texts", "x=/no/such/file",
                  "--out", str(out)])
