"""Models whose own RoPE is already scaled, as a new user would build them: a
Llama 3.x config (``rope_type="llama3"``) and a Phi-3 with a longrope RoPE
and a vocabulary below 32000.  Which training length ``apply()`` takes, from
which config field, said at ``apply()`` and written in the rows; each model
exact below ``T`` under a kernel and, past ``T``, equal to the dense reference
with the model's own frequencies (longrope: its long factors, the model's own
rule past ``original_max_position_embeddings``)."""

import logging

import numpy as np
import torch

import mesa_viz as mv
from mesa_viz.models import tiny_model, train_length_fields, train_length_source
from reference import reference_logits

T = 64
LONGEST = 1024
ORIGINAL = "rope_parameters['original_max_position_embeddings']"
MESA = dict(first_chunk=8, chunk_size=16, last_chunk=16, stair_start=8, stair_width=3)


def _llama3():
    return tiny_model("llama", max_position_embeddings=LONGEST, rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 16.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": T})[0]


def _phi3_longrope():
    """Phi-3 with a longrope RoPE and 512 ids: ``pad_token_id`` and
    ``eos_token_id`` must be set (their defaults, 32000, are outside the
    vocabulary and the embedding refuses to build)."""
    half = 16 * 3 // 4 // 2                          # head_dim 16, partial rotary 0.75
    return tiny_model("phi3", max_position_embeddings=LONGEST, pad_token_id=0, eos_token_id=1,
                      original_max_position_embeddings=T, rope_parameters={
                          "rope_type": "longrope", "rope_theta": 10000.0,
                          "short_factor": [1.0 + 0.1 * c for c in range(half)],
                          "long_factor": [2.0 + 0.5 * c for c in range(half)]})[0]


def _ids(n, seed=0):
    return torch.randint(0, 500, (1, n), generator=torch.Generator().manual_seed(seed))


def test_scaled_rope_train_length_is_said_at_apply_and_in_rows(caplog):
    model = _llama3()
    assert train_length_source(model) == (T, ORIGINAL)
    assert train_length_fields(model) == {"train_length": T, "train_length_from": ORIGINAL}
    assert train_length_fields(model, 512) == {"train_length": 512,
                                               "train_length_from": "train_length="}
    with caplog.at_level(logging.INFO, logger="mesa_viz.runtime.apply"):
        with mv.apply(model, "mesa") as state:
            assert state.train_length == T
        (warned,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        text = warned.getMessage()
        assert f"train_length={T} from the model's {ORIGINAL}" in text
        assert f"max_position_embeddings is {LONGEST}" in text and "'llama3'" in text
        assert f"pass train_length={LONGEST}" in text
        caplog.clear()
        with mv.apply(model, "mesa", train_length=LONGEST) as state:
            assert state.train_length == LONGEST
        assert not [r for r in caplog.records if r.levelno >= logging.INFO]
    plain = tiny_model("llama", max_position_embeddings=T)[0]
    assert train_length_fields(plain) == {"train_length": T,
                                          "train_length_from": "max_position_embeddings"}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mesa_viz.runtime.apply"):
        with mv.apply(plain, "mesa"):
            pass
    assert [r.levelno for r in caplog.records] == [logging.INFO]


def _exact_and_past(model, inv_freq, rope_scale):
    """Max |difference| below T (mesa vs the model's own logits) and past T
    (mesa's prefill's last token and 3 generated tokens vs the reference)."""
    ids = _ids(48)
    with torch.no_grad():
        own = model(ids).logits[0]
        with mv.apply(model, "mesa", **MESA):
            below = model(ids).logits[0]
    n, k = 120, 3
    ids = _ids(n, seed=1)
    with mv.apply(model, "mesa", **MESA), torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=k,
                             do_sample=False, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0)
    got = torch.stack(out.logits, 1)[0].double()
    seq = out.sequences[:, :n + k - 1]
    m = mv.methods.resolve("mesa", seq.shape[1], train_length=T, prefill_length=n, **MESA)
    lay = mv.layout(m, seq.shape[1])
    ref = reference_logits(model, seq, lay.relative_positions, lay.mask,
                           m.query_scale(np.arange(seq.shape[1])), inv_freq, "half", rope_scale)
    return (below - own).abs().max().item(), (got - ref[n - 1:]).abs().max().item()


def test_llama3_rope_is_exact_below_and_matches_the_reference_past():
    model = _llama3()
    below, past = _exact_and_past(model, None, 1.0)      # the model's own llama3 frequencies
    assert below <= 1e-5 and past <= 1e-4


def test_phi3_longrope_builds_and_runs_its_own_rule():
    """Below ``original_max_position_embeddings`` the short factors (the
    model's own logits), past it the long factors for every position, as
    transformers' longrope does for a sequence past it."""
    model = _phi3_longrope()
    assert train_length_source(model) == (T, ORIGINAL)
    rotary = model.model.rotary_emb
    rot = rotary.inv_freq.numel() * 2
    base = 10000.0 ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    long = torch.tensor(model.config.rope_parameters["long_factor"], dtype=torch.float64)
    # rope_scale 1: the reference calls the model at position 0, where its own
    # rotation still scales cos of query and key by its attention_scaling (1.29 here)
    assert rotary.attention_scaling > 1.2
    below, past = _exact_and_past(model, 1.0 / (long * base), 1.0)
    assert below <= 1e-5 and past <= 1e-4
