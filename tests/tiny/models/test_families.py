"""Every RoPE family transformers 5.24 builds, as a new user would try it:
each tiny random model is either exact below the training length under the
kernels and equal to the dense reference past it (prefill and generated
tokens), or refused at ``apply()`` with a message naming it.  And the guard
that makes this hold for families nobody listed: a model whose attention
bypasses the registered function, or whose RoPE pairs channels differently,
is refused with the measured difference, leaving the model as it was."""

import numpy as np
import pytest
import torch

import mesa_viz as mv
from mesa_viz.models import CHANNELS, REFUSED_FAMILIES, SUPPORTED_FAMILIES
from mesa_viz.runtime.guard import guard_ids, judge_guard, own_spread
from mesa_viz.models import tiny_model
from reference import reference_logits, rule_frequencies


T = 64
#: How each family pairs RoPE channels, read from its ``apply_rotary_pos_emb``
#: (this test's own table: the library's is not consulted).
PAIRS = {"cohere": "interleaved", "glm": "interleaved", "glm4": "interleaved",
         "deepseek_v3": "rope-last"}
SUPPORTED = ["llama", "mistral", "qwen2", "qwen3", "phi", "phi3", "gemma", "gpt_neox", "olmo",
             "olmo2", "granite", "stablelm", "persimmon", "starcoder2", "cohere", "glm", "glm4",
             "deepseek_v3"]
#: family -> (model overrides, words the refusal must contain)
REFUSED = {
    "falcon": ({}, "'falcon' is not supported: its attention never calls"),
    "gemma2": (dict(attn_implementation="eager"), "'gemma2' is not supported: attention logit "
                                                  "softcapping"),
    "gptj": ({}, "'gptj' is not supported: its RoPE is a fixed sin/cos table"),
    "gpt2": ({}, "(gpt2) has no rotary position embedding"),
    "mistral": (dict(sliding_window=32), "'mistral' uses sliding-window attention of 32 tokens"),
    "gemma3_text": ({}, "'gemma3_text' is not supported: per-layer-type RoPE"),
    "olmo3": ({}, "'olmo3' is not supported: per-layer-type RoPE"),
    "cohere2": ({}, "'cohere2' is not supported: sliding-window layers"),
}
#: Methods run past T on every supported family: each kernel shape (stair
#: residue classes, chunks, near/far sets, frequency rules through the family's
#: own rotary class).
PAST_T = [("mesa", dict(first_chunk=8, chunk_size=16, last_chunk=16, stair_start=8,
                        stair_width=3)),
          ("self-extend", dict(group_size=3, window=12)),
          ("dual-chunk", dict(chunk_size=40, local_window=16)),
          ("yarn", dict(factor=2.5))]


def _ids(n, seed=0):
    return torch.randint(0, 500, (1, n), generator=torch.Generator().manual_seed(seed))


def _model(family, **overrides):
    kw = {"max_position_embeddings": T} if family not in ("gpt2", "gptj") else {}
    return tiny_model(family, **{**kw, **overrides})[0]


def test_the_lists_cover_what_the_library_claims():
    assert sorted(SUPPORTED) == sorted(SUPPORTED_FAMILIES)
    assert {"falcon", "gemma2", "gptj"} <= set(REFUSED_FAMILIES)


@pytest.mark.parametrize("family", SUPPORTED)
def test_supported_family_is_exact_below_and_matches_the_reference_past(family):
    model = _model(family)
    ids = _ids(48)
    with torch.no_grad():
        own = model(ids).logits[0]
        with mv.apply(model, "mesa"):
            below = model(ids).logits[0]
    assert (below - own).abs().max().item() <= 1e-5
    n, k = 120, 3
    ids = _ids(n, seed=1)
    for method, params in PAST_T:
        with mv.apply(model, method, **params), torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=k,
                                 do_sample=False, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=0)
        got = torch.stack(out.logits, 1)[0].double()
        ref = _reference(model, family, out.sequences[:, :n + k - 1], method, n, params)
        assert (got - ref[n - 1:]).abs().max().item() <= 1e-4, method


def _reference(model, family, ids, method, prefill, params):
    """The dense reference with the family's pairs (YaRN: its frequencies from
    the formula)."""
    n = ids.shape[1]
    m = mv.methods.resolve(method, n, train_length=T, prefill_length=prefill, **params)
    lay = mv.layout(m, n)
    inv_freq, rope_scale = rule_frequencies(model, m, n, prefill)
    return reference_logits(model, ids, lay.relative_positions, lay.mask,
                            m.query_scale(np.arange(n)), inv_freq, PAIRS.get(family, "half"),
                            rope_scale)


@pytest.mark.parametrize("family", sorted(REFUSED))
def test_unsupported_family_is_refused_naming_it(family):
    overrides, words = REFUSED[family]
    model = _model(family, **overrides)
    impl = model.config._attn_implementation
    with pytest.raises(ValueError) as e:
        with mv.apply(model, "mesa"):
            pytest.fail("entered the block")
    assert words in str(e.value)
    assert "supported" in str(e.value)
    assert model.config._attn_implementation == impl and not hasattr(model, "_mesa_viz_applied")


def test_guard_refuses_attention_that_bypasses_the_kernels(monkeypatch):
    """Falcon's attention never calls the registered function: even if the
    library did not list it, the guard counts 0 calls and refuses."""
    monkeypatch.delitem(REFUSED_FAMILIES, "falcon")
    model = _model("falcon")
    with pytest.raises(ValueError, match=r"'falcon': the registered attention function ran 0 "
                                         r"times for 2 layers"):
        with mv.apply(model, "origin"):
            pass
    _assert_untouched(model)


@pytest.mark.parametrize("family", ["cohere", "glm", "deepseek_v3"])
def test_guard_refuses_an_unknown_channel_layout(family, monkeypatch):
    """A family whose RoPE pairs channels unlike the kernels' half split, if the
    library did not know it, is refused with the measured logit difference."""
    monkeypatch.delitem(CHANNELS, family)
    model = _model(family)
    with pytest.raises(ValueError, match=rf"'{family}': mesa_viz's kernels .* differ from the "
                                         r"model's own attention .* max \|logit difference\| "):
        with mv.apply(model, "rerope"):
            pass
    _assert_untouched(model)


def test_softcapping_and_windows_are_refused_whatever_the_family(monkeypatch):
    """Gemma-2 with only full-attention layers, if not listed: its softcapping
    (silently ignored, 3.6e-4 off, before this check) is refused; a sliding
    window at least T long is accepted until a forward outgrows it."""
    monkeypatch.delitem(REFUSED_FAMILIES, "gemma2")
    gemma2 = _model("gemma2", attn_implementation="eager",
                    layer_types=["full_attention", "full_attention"])
    with pytest.raises(ValueError, match=r"'gemma2' uses attention logit softcapping \(50.0\)"):
        with mv.apply(gemma2, "mesa"):
            pass
    mistral = _model("mistral", sliding_window=100)
    with mv.apply(mistral, "mesa"), torch.no_grad():
        mistral(_ids(90))
        with pytest.raises(ValueError, match=r"sliding-window attention \(window 100 < 120 keys\)"):
            mistral(_ids(120))


def test_guard_leaves_nothing_behind():
    """The guard's two forwards use no cache and leave no hook, registration or
    mode change: the model in training mode stays so, and a refused model
    computes what it computed before."""
    model = _model("llama")
    model.train()
    ids = _ids(20)
    before = model(ids).logits
    with mv.apply(model, "origin"):
        assert model.training
    assert model.training and torch.equal(model(ids).logits, before)
    _assert_untouched(model)
    model.eval()


def _assert_untouched(model):
    from transformers import AttentionInterface
    assert not hasattr(model, "_mesa_viz_applied")
    assert not model._forward_pre_hooks
    assert all(not m._forward_hooks for m in model.modules())
    assert not [k for k in AttentionInterface._global_mapping if k.startswith("mesa_viz")]


@pytest.mark.parametrize("family", ["cohere"])
def test_guard_in_bfloat16_still_refuses_an_unknown_channel_layout(family, monkeypatch):
    """In half precision the guard also allows a few times the spread of the
    model's own two attention implementations; a wrong channel layout is
    still far past it here (37 times; a tiny GLM's, 1.6 times, cannot be told
    from rounding in bfloat16: ``judge_guard``)."""
    monkeypatch.delitem(CHANNELS, family)
    model = _model(family).to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"max \|logit difference\| .* own two attentions "
                                         r"differ by"):
        with mv.apply(model, "rerope"):
            pass
    _assert_untouched(model)


def test_guard_allows_the_models_own_rounding_spread_in_half_precision():
    """``_judge_guard``: fp32 holds its fixed tolerance; half precision accepts
    up to ``_GUARD_SPREAD`` times the model's own spread (capped), no more."""
    llama = _model("llama")
    own = torch.zeros(1, 4, 8)
    own[0, 0, 0] = 4.0                                     # logits up to 4
    layers = llama.config.num_hidden_layers
    judge_guard(llama, layers, own, own + 3e-4)
    with pytest.raises(ValueError, match="allowed 0.0004"):
        judge_guard(llama, layers, own, own + 5e-4, floor=0.1)
    half = _model("llama").to(torch.bfloat16)
    judge_guard(half, layers, own, own + 0.35, floor=0.1)     # 4 x 0.1 = 0.4
    with pytest.raises(ValueError, match="allowed 0.08"):                  # 2 % of 4, no spread
        judge_guard(half, layers, own, own + 0.1)
    with pytest.raises(ValueError, match=r"allowed 0.4; the model's own two attentions differ "
                                         r"by 0.1"):
        judge_guard(half, layers, own, own + 0.45, floor=0.1)
    with pytest.raises(ValueError, match="allowed 0.4"):                  # ceiling: 10 % of 4
        judge_guard(half, layers, own, own + 0.45, floor=1.0)


def test_own_spread_is_measured_in_half_precision_only():
    llama = _model("llama")
    ids = guard_ids(llama)
    with torch.no_grad():
        own = llama(ids, use_cache=False).logits.float()
        assert own_spread(llama, ids, own, "sdpa") == 0.0
        half = _model("llama").to(torch.bfloat16)
        impl = half.config._attn_implementation
        own = half(ids, use_cache=False).logits.float()
        spread = own_spread(half, ids, own, impl)
    assert 0.0 <= spread < 0.1 * max(1.0, float(own.abs().max()))
    assert half.config._attn_implementation == impl


def test_own_spread_is_zero_where_the_other_attention_does_not_run():
    """A tiny DeepSeek-V3 in bfloat16: transformers' eager attention raises on
    its heads; the guard measures no spread (its fixed tolerance holds), says
    so, and leaves the model's own attention set."""
    model = _model("deepseek_v3").to(torch.bfloat16)
    impl = model.config._attn_implementation
    ids = guard_ids(model)
    with torch.no_grad():
        own = model(ids, use_cache=False).logits.float()
        assert own_spread(model, ids, own, impl) == 0.0
    assert model.config._attn_implementation == impl
    with mv.apply(model, "mesa"):
        pass
