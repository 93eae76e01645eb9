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
from mesa_viz.runtime.probes import capture_qk, capture_rows
from mesa_viz.models import tiny_model
from reference import (hybrid_layers, reference_attention, reference_logits, rule_frequencies,
                       window_above)


T = 64
#: How each family pairs RoPE channels, read from its ``apply_rotary_pos_emb``
#: (this test's own table: the library's is not consulted).
PAIRS = {"cohere": "interleaved", "cohere2": "interleaved", "glm": "interleaved",
         "glm4": "interleaved", "deepseek_v3": "rope-last", "gptj": "interleaved"}
SUPPORTED = ["llama", "mistral", "qwen2", "qwen3", "phi", "phi3", "gemma", "gpt_neox", "olmo",
             "olmo2", "granite", "stablelm", "persimmon", "starcoder2", "cohere", "glm", "glm4",
             "deepseek_v3"]
#: family -> (model overrides, words the refusal must contain)
REFUSED = {
    "falcon": ({}, "'falcon' is not supported: its attention never calls"),
    "gpt2": ({}, "(gpt2) has no rotary position embedding"),
}
#: A window below T on a sliding layer beside a full-attention one.
_MIXED = dict(sliding_window=24, layer_types=["sliding_attention", "full_attention"])
#: Families with sliding-window layers (W = 24 <= T: the model's own attention) and
#: per-layer-type RoPE: model overrides.  Gemma 2's softcap is 1.0 and its query and key
#: weights x10 (:func:`_hybrid`), so that the cap changes this tiny model's logits (by
#: 0.29; at its real 50 with random weights, by 1e-7).
HYBRID = {
    "gemma2": dict(_MIXED, attn_implementation="eager", attn_logit_softcapping=1.0),
    "gemma3_text": dict(_MIXED),
    "olmo3": dict(_MIXED, rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "default", "rope_theta": 500000.0}}),
    "cohere2": dict(_MIXED),
    "mistral": dict(sliding_window=24),
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
    assert sorted(set(SUPPORTED) | set(HYBRID) | {"gptj"}) == sorted(SUPPORTED_FAMILIES)
    assert {"falcon"} <= set(REFUSED_FAMILIES)
    assert not set(HYBRID) & set(REFUSED_FAMILIES)


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


def test_gptj_runs_past_its_sin_cos_table():
    """GPT-J's RoPE is a fixed table of ``n_positions = T`` rows (its own
    forward fails past ``T``); under a method its rotary module computes the
    same rows for any position: below ``T`` the model's own logits (prompt
    and 3 generated tokens), past it Mesa, Self-Extend, Dual Chunk and ReRoPE
    equal the dense reference with interleaved pairs.  Frequency rules are
    refused: the table has no ``rope_parameters`` to rebuild."""
    model = _model("gptj", n_positions=T)
    _assert_own_below_T(model)
    n, k = 120, 3
    ids = _ids(n, seed=1)
    with pytest.raises(IndexError):
        model(ids)
    for method, params in [*PAST_T[:3], ("rerope", dict(window=12))]:
        seq, got = _generate(model, ids, k, method, **params)
        ref = _reference(model, "gptj", seq[:, :n + k - 1], method, n, params)
        assert (got - ref[n - 1:]).abs().max().item() <= 1e-4, method
    assert type(model.transformer.rotary_emb).__name__ == "GPTJRotaryEmbedding"
    for method in ("yarn", "pi", "ntk", "dynamic-ntk"):
        with pytest.raises(ValueError, match=rf"method '{method}' replaces the RoPE frequencies, "
                                             r"but this gptj model's RoPE is a fixed sin/cos"):
            with mv.apply(model, method, factor=2.0):
                pass


def _reference(model, family, ids, method, prefill, params, per_layer=None):
    """The dense reference with the family's pairs (YaRN: its frequencies from
    the formula); ``per_layer``: layers with their own rules (``hybrid_layers``),
    or a function of the method's mask giving them (``window_above``)."""
    n = ids.shape[1]
    m = mv.methods.resolve(method, n, train_length=T, prefill_length=prefill, **params)
    lay = mv.layout(m, n)
    per_layer = per_layer(lay.mask) if callable(per_layer) else per_layer
    inv_freq, rope_scale = rule_frequencies(model, m, n, prefill)
    return reference_logits(model, ids, lay.relative_positions, lay.mask,
                            m.query_scale(np.arange(n)), inv_freq, PAIRS.get(family, "half"),
                            rope_scale, per_layer=per_layer)


def _hybrid(family):
    """The tiny model of a :data:`HYBRID` family (Gemma 2's queries and keys
    sharpened x10, so that its logits reach the cap)."""
    model = _model(family, **HYBRID[family])
    if family == "gemma2":
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.mul_(10.0)
                layer.self_attn.k_proj.weight.mul_(10.0)
    return model


def _generate(model, ids, k, method="origin", **params):
    """Greedy ``k`` tokens under ``method``: ``(sequences, logits [k, vocab])``."""
    with mv.apply(model, method, **params), torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=k,
                             do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0)
    return out.sequences, torch.stack(out.logits, 1)[0].double()


def _assert_own_below_T(model, n=48, k=3):
    """Below ``T`` Mesa and Origin equal the model's own logits (prompt and
    ``k`` generated tokens) to 1e-5."""
    ids = _ids(n)
    with torch.no_grad():
        own = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=k,
                             do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0)
    own = torch.stack(own.logits, 1)[0].double()
    for method in ("mesa", "origin"):
        assert (_generate(model, ids, k, method)[1] - own).abs().max().item() <= 1e-5, method


@pytest.mark.parametrize("family", sorted(HYBRID))
def test_windowed_family_is_exact_below_and_matches_the_reference_past(family):
    """Sliding-window layers with ``W <= T`` keep the model's own attention
    (its window, its layer type's RoPE, its softcap); the full-attention
    layers run the method with their own rotary rule: below ``T`` equal to the
    model's own logits (prompt and 3 generated tokens), past it to the dense
    reference written with the window and the per-layer rules."""
    model = _hybrid(family)
    _assert_own_below_T(model)
    n, k = 120, 3
    ids = _ids(n, seed=1)
    layers = hybrid_layers(model, n + k - 1, T, nope_full=family == "cohere2")
    assert layers, "no layer of the test model keeps its own window"
    for method, params in [*PAST_T, ("rerope", dict(window=12))]:
        seq, got = _generate(model, ids, k, method, **params)
        ref = _reference(model, family, seq[:, :n + k - 1], method, n, params, layers)
        assert (got - ref[n - 1:]).abs().max().item() <= 1e-4, method


def test_gemma3_global_layers_keep_their_linear_scaling():
    """Gemma 3's global layers scale their RoPE linearly (factor 8 from 4B up):
    Mesa runs there with ``theta_k / factor`` (written here from the formula),
    the local layers keep their own base; a frequency rule, which would drop
    that scaling, is refused."""
    model = _model("gemma3_text", **_MIXED, rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6}})
    n, k = 120, 3
    seq, got = _generate(model, _ids(n, seed=1), k, PAST_T[0][0], **PAST_T[0][1])
    layers = hybrid_layers(model, n + k - 1, T)
    dim = model.config.head_dim
    layers[1] = dict(inv_freq=1.0 / 1e6 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
                     / 4.0)
    ref = _reference(model, "gemma3_text", seq[:, :n + k - 1], "mesa", n, PAST_T[0][1], layers)
    assert (got - ref[n - 1:]).abs().max().item() <= 1e-4
    with pytest.raises(ValueError, match=r"rope_type is 'linear', whose scaling would be dropped"):
        with mv.apply(model, "yarn", factor=2.0):
            pass


def test_softcapping_and_the_window_change_what_the_reference_checks():
    """The tiny Gemma 2's softcap and the tiny Mistral's window change the
    logits far past the tolerance, so the tests above would see them ignored."""
    gemma2 = _hybrid("gemma2")
    ids = _ids(48)
    with torch.no_grad():
        capped = gemma2(ids).logits
        for layer in gemma2.model.layers:
            layer.self_attn.attn_logit_softcapping = None
        assert (gemma2(ids).logits - capped).abs().max().item() > 0.1
    mistral, full = _model("mistral", **HYBRID["mistral"]), _model("mistral")
    with torch.no_grad():
        assert (mistral(ids).logits - full(ids).logits).abs().max().item() > 1e-3


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


def test_probes_capture_windowed_and_softcapped_layers_as_computed():
    """``capture_rows`` on the tiny Gemma 2 past ``T``: the sliding layer's rows
    are its own windowed attention, the full layer's Mesa's, both capped;
    equal to the dense reference's probabilities.  Capturing queries and keys
    for attention maps (which pool ``q . k`` uncapped) is refused there."""
    model = _hybrid("gemma2")
    n, rows = 100, [60, 99]
    ids = _ids(n, seed=2)
    params = dict(PAST_T[0][1])
    got = capture_rows(model, ids, "mesa", rows=rows, train_length=T, **params)
    m = mv.methods.resolve("mesa", n, train_length=T, prefill_length=n, **params)
    lay, record = mv.layout(m, n), {}
    with reference_attention(model, lay.relative_positions, lay.mask, m.query_scale(np.arange(n)),
                             record=record, per_layer=hybrid_layers(model, n, T)), torch.no_grad():
        model(ids, position_ids=torch.zeros_like(ids))
    for layer in (0, 1):
        want = record[layer][:, rows].numpy()
        assert np.abs(got.attention[layer] - want).max() <= 1e-5, layer
    with pytest.raises(ValueError, match=r"capturing queries and keys of layer 0: it runs the "
                                         r"model's own sliding-window attention"):
        capture_qk(model, ids, "mesa", layer=0, train_length=T, **params)
    with pytest.raises(ValueError, match=r"capturing queries and keys of layer 1: its logits "
                                         r"are softcapped \(1.0\)"):
        capture_qk(model, ids, "mesa", layer=1, train_length=T, **params)


def test_a_window_above_T_runs_the_method_within_the_window():
    """A window ``T < W`` below the prompt's length gets the method within the
    window: query ``i`` sees key ``j`` where the method does and ``i - j < W``,
    at the method's position (prompt and 3 generated tokens through the
    model's sliding-window cache, equal to the dense reference); below ``T``
    the model's own logits.  Settings the kernels cannot compute are refused
    before anything changes."""
    mistral = _model("mistral", sliding_window=100)
    ids = _ids(48)
    with torch.no_grad():
        own = torch.stack(mistral.generate(ids, attention_mask=torch.ones_like(ids),
                                           max_new_tokens=3, do_sample=False,
                                           output_logits=True, return_dict_in_generate=True,
                                           pad_token_id=0).logits, 1)[0].double()
    assert (_generate(mistral, ids, 3, "mesa")[1] - own).abs().max().item() <= 1e-5
    n, k = 120, 3
    ids = _ids(n, seed=1)
    cut = lambda mask: window_above(mistral, mask, T)                          # noqa: E731
    for method, params in [*PAST_T, ("rerope", dict(window=12))]:
        seq, got = _generate(mistral, ids, k, method, **params)
        ref = _reference(mistral, "mistral", seq[:, :n + k - 1], method, n, params, cut)
        whole = _reference(mistral, "mistral", seq[:, :n + k - 1], method, n, params)
        assert (got - ref[n - 1:]).abs().max().item() <= 1e-4, method
        assert (got - whole[n - 1:]).abs().max().item() > 1e-3, method   # the window matters
    with pytest.raises(ValueError, match=r"capturing layer 0: it runs the method within its "
                                         r"sliding window \(100 > train_length=64\)"):
        capture_rows(mistral, ids, "mesa", rows=[n - 1], train_length=T, **PAST_T[0][1])
    gemma2 = _model("gemma2", attn_implementation="eager", attn_logit_softcapping=-1.0)
    with pytest.raises(ValueError, match=r"attn_logit_softcapping=-1.0: allowed a positive"):
        with mv.apply(gemma2, "mesa"):
            pass


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
