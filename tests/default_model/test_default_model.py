"""The claims that matter, on the real default model (SmolLM2-135M-Instruct,
offline, float32, train_length 8192): equivalence below the training length,
passkey retrieval past it, and the paper's hidden-state thresholds."""

import pytest
import torch

import mesa_viz as mv
from mesa_viz.analyses import passkey
from mesa_viz.runs import read_jsonl

COVER = {"rerope": dict(window=8191), "leaky-rerope": dict(window=8191)}
#: Every method that promises Origin below T with its defaults (STRING is Origin up
#: to its shifted offset, 2703 tokens here), and Mesa's presets.
BELOW_T = [(name, COVER.get(name, {})) for name in mv.METHODS if name != "origin"] + \
    [("mesa", {"preset": "paper"}), ("mesa", {"preset": "authors-code"})]


@pytest.fixture(scope="module")
def smol(default_model):
    model, tok = default_model
    assert model.config.max_position_embeddings == 8192
    return model, tok


def test_every_method_equals_origin_below_train_length(smol):
    model, tok = smol
    ids = torch.tensor([passkey.make_sample(tok, 1500, 0.5, seed=3)["input_ids"]])
    with torch.no_grad():
        base = model(ids, logits_to_keep=300).logits[0]
    for method, params in BELOW_T:
        with mv.apply(model, method, **params), torch.no_grad():
            got = model(ids, logits_to_keep=300).logits[0]
        assert (got - base).abs().max().item() <= 1e-4, (method, params)


def _answer(model, tok, sample, method):
    ids = torch.tensor([sample["input_ids"]])
    with mv.apply(model, method), torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                             do_sample=False)
    return passkey.parse_answer(tok.decode(out[0, ids.shape[1]:]))


def test_passkey_past_train_length_origin_fails_mesa_retrieves(smol):
    model, tok = smol
    sample = passkey.make_sample(tok, 12288, 0.5, seed=0)
    assert _answer(model, tok, sample, "mesa") == sample["passkey"]
    assert _answer(model, tok, sample, "origin") != sample["passkey"]


def test_hidden_state_thresholds_origin_crosses_mesa_stays_inside(smol, tmp_path):
    """The paper's theory on SmolLM2: the finder, not told where, finds early-layer
    dims following log(position) at |r| >= 0.99 inside [0, 8192); past 8192
    origin's smoothed value is beyond the threshold for some of them at most
    positions, Mesa's for none at any position up to 16k."""
    from mesa_viz.analyses.thresholds import find
    model, tok = smol
    out = tmp_path / "thresholds.jsonl"
    pairs, traces = find(model, tok, length=16384, methods=["origin", "mesa"], out=out)
    assert len(pairs) >= 4
    assert all(abs(p.correlation) >= 0.99 and p.layer <= 8 for p in pairs)
    crossed = [p for p in pairs if p.past_fraction["origin"] > 0.5]
    assert len(crossed) >= 2
    assert all(p.first_crossing["origin"] < 8192 + 512 for p in crossed)
    assert all(p.past_fraction["mesa"] == 0.0 for p in pairs)
    assert (tmp_path / "thresholds_traces" / "trace_mesa.npz").exists()
    assert len(read_jsonl(out)) == len(pairs)
