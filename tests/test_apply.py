"""Methods on tiny random-weight models of two RoPE families (Llama with GQA,
GPT-NeoX with partial rotary): equivalence with origin, an independent dense
reference built from ``layout(...)``, generation, restoring the model, errors."""

import numpy as np
import pytest
import torch

import mesa_viz as mv
from mesa_viz.kernels import query_scale
from mesa_viz.models import tiny_model
from reference import reference_logits

pytestmark = pytest.mark.tiny

ALL = ["origin", "mesa", "rerope", "leaky-rerope", "dynamic-ntk", "streaming-llm", "lm-infinite"]
SMALL_T = {
    "mesa": dict(first_chunk=8, chunk_size=16, last_chunk=16),
    "mesa-fixed": dict(first_chunk=8, chunk_size=16, last_chunk=16, stair_start=8, stair_width=3),
    "mesa-anchored": dict(first_chunk=8, chunk_size=20, last_chunk=10, stair="anchored",
                          stair_start=6, stair_width=4),
    "mesa-log": dict(first_chunk=5, chunk_size=16, last_chunk=16, log_scaling=True),
    "rerope": dict(window=20),
    "leaky-rerope": dict(window=20),
    "streaming-llm": dict(sink_tokens=4),
    "lm-infinite": dict(sink_tokens=4),
}


def _ids(n, seed=0, vocab=500):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, n), generator=g)


def _logits(model, ids, method="origin", **params):
    with mv.apply(model, method, **params) as state, torch.no_grad():
        out = model(ids).logits[0]
    return out, state


# below train_length every window must cover the input for the claim to hold
COVER = {"rerope": dict(window=255), "leaky-rerope": dict(window=255)}


@pytest.mark.parametrize("method", ALL)
def test_equals_origin_below_train_length(tiny, method):
    ids = _ids(200)
    base = tiny(ids).logits[0]
    got, _ = _logits(tiny, ids, method, train_length=256, **COVER.get(method, {}))
    assert (got - base).abs().max().item() <= 1e-4


@pytest.mark.parametrize("case", sorted(SMALL_T))
def test_matches_dense_reference_past_train_length(tiny, case):
    method = case.split("-")[0] if case.startswith("mesa") else case
    ids = _ids(150, seed=1)
    got, state = _logits(tiny, ids, method, train_length=64, **SMALL_T[case])
    m = state.resolved
    L = mv.layout(method, 150, **m.params())
    ref = reference_logits(tiny, ids, L.relative_positions, L.mask, query_scale(m, np.arange(150)))
    assert (got.double() - ref).abs().max().item() <= 1e-4
    # and it really is a different computation from origin past T
    assert (got - tiny(ids).logits[0]).abs().max().item() > 1e-3


@pytest.mark.parametrize("case", ["mesa-fixed", "mesa-anchored"])
def test_generation_matches_reference(tiny, case):
    params = dict(SMALL_T[case], train_length=64)
    ids = _ids(150, seed=2)
    with mv.apply(tiny, "mesa", **params), torch.no_grad():
        out = tiny.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                            do_sample=False, output_logits=True,
                            return_dict_in_generate=True, pad_token_id=0)
    steps = torch.stack(out.logits, 1)[0].double()                    # [5, vocab]
    seq = out.sequences[:, :155]
    m = mv.get_method("mesa", **params).resolve(155, prefill_length=150)
    L = mv.layout("mesa", 155, prefill_length=150, **params)
    ref = reference_logits(tiny, seq, L.relative_positions, L.mask,
                           query_scale(m, np.arange(155)))
    assert (steps - ref[149:154]).abs().max().item() <= 1e-4


def test_middle_chunks_are_independent(tiny_llama):
    """Changing one middle chunk's tokens leaves other middle chunks untouched."""
    p = dict(train_length=64, first_chunk=8, chunk_size=16, last_chunk=16)
    ids = _ids(150, seed=3)
    a, state = _logits(tiny_llama, ids, "mesa", **p)
    chunks = state.resolved.plan().middle
    ids2 = ids.clone()
    s0, e0 = chunks[0]
    ids2[0, s0:e0] = (ids2[0, s0:e0] + 1) % 500
    b, _ = _logits(tiny_llama, ids2, "mesa", **p)
    s1, e1 = chunks[1]
    assert torch.equal(a[s1:e1], b[s1:e1])
    assert not torch.equal(a[s0:e0], b[s0:e0])


def test_eager_backend_matches_sdpa():
    eager = tiny_model("llama", attn_implementation="eager")[0]
    sdpa = tiny_model("llama")[0]
    ids = _ids(150, seed=4)
    for method, p in [("mesa", SMALL_T["mesa"]), ("rerope", SMALL_T["rerope"])]:
        a, _ = _logits(eager, ids, method, train_length=64, **p)
        b, _ = _logits(sdpa, ids, method, train_length=64, **p)
        assert (a - b).abs().max().item() <= 1e-4


def test_model_restored_after_exit_and_exception(tiny_llama):
    ids = _ids(120, seed=5)
    before = tiny_llama(ids).logits
    impl = tiny_llama.config._attn_implementation
    rotary = tiny_llama.model.rotary_emb
    for method in ["mesa", "dynamic-ntk"]:
        with pytest.raises(RuntimeError, match="boom"):
            with mv.apply(tiny_llama, method, train_length=32):
                tiny_llama(ids)
                raise RuntimeError("boom")
        assert tiny_llama.config._attn_implementation == impl
        assert tiny_llama.model.rotary_emb is rotary
        assert not rotary._forward_hooks and not tiny_llama._forward_pre_hooks
        assert torch.equal(tiny_llama(ids).logits, before)
    from transformers import AttentionInterface
    assert not [k for k in AttentionInterface._global_mapping if k.startswith("mesa_viz")]


def test_two_models_carry_different_methods_at_once():
    a, b = tiny_model("llama")[0], tiny_model("llama")[0]
    ids = _ids(150, seed=6)
    ref_mesa, _ = _logits(a, ids, "mesa", train_length=64)
    ref_rerope, _ = _logits(b, ids, "rerope", train_length=64, window=20)
    with mv.apply(a, "mesa", train_length=64), mv.apply(b, "rerope", train_length=64, window=20), \
            torch.no_grad():
        assert torch.equal(a(ids).logits[0], ref_mesa)
        assert torch.equal(b(ids).logits[0], ref_rerope)


def test_dynamic_ntk_uses_transformers_rope_parameters(tiny_llama):
    ids = _ids(100, seed=7)
    with mv.apply(tiny_llama, "dynamic-ntk", train_length=32, factor=2.0) as st, torch.no_grad():
        got = tiny_llama(ids).logits[0]
        assert tiny_llama.model.rotary_emb.rope_type == "dynamic"
    assert tiny_llama.model.rotary_emb.rope_type == "default"
    assert (got - tiny_llama(ids).logits[0]).abs().max().item() > 1e-3


def test_unknown_method_and_parameters(tiny_llama):
    with pytest.raises(ValueError, match="unknown method 'yarn-ish'.*allowed"):
        with mv.apply(tiny_llama, "yarn-ish"):
            pass
    with pytest.raises(ValueError, match=r"chunk_size=10 .*allowed in \[1, 4\] \(first_chunk \+ chunk_size <= train_length=64\)"):
        with mv.apply(tiny_llama, "mesa", train_length=64, first_chunk=60, chunk_size=10):
            pass


def test_empty_input_is_refused(tiny_llama):
    for method in ["origin", "mesa"]:
        with pytest.raises(ValueError, match="empty input"):
            with mv.apply(tiny_llama, method):
                tiny_llama(torch.zeros(1, 0, dtype=torch.long))


def test_model_without_rope_is_refused():
    gpt2 = tiny_model("gpt2")[0]
    with pytest.raises(ValueError, match="no rotary position embedding"):
        with mv.apply(gpt2, "mesa"):
            pass


def test_padded_batch_is_refused(tiny_llama):
    ids = _ids(20).repeat(2, 1)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with pytest.raises(ValueError, match="padded"):
        with mv.apply(tiny_llama, "mesa", train_length=16):
            tiny_llama(ids, attention_mask=mask)


def test_batch_of_equal_sequences(tiny_llama):
    ids = torch.cat([_ids(150, seed=8), _ids(150, seed=9)])
    with mv.apply(tiny_llama, "mesa", train_length=64) as st, torch.no_grad():
        both = tiny_llama(ids).logits
    for r in range(2):
        one, _ = _logits(tiny_llama, ids[r:r + 1], "mesa", train_length=64)
        assert (both[r] - one).abs().max().item() <= 1e-4


def test_transformers_range_is_checked():
    from mesa_viz.compat import check_transformers
    check_transformers("5.24.0")
    with pytest.raises(RuntimeError, match="4.31.0 is outside"):
        check_transformers("4.31.0")
