"""ALiBi models (a tiny MPT and a tiny BLOOM) under a method, as a new user would
run them: the model's own logits below ``T`` and, past ``T``, the dense ALiBi
reference (``-slope_h * position(i, j)`` from the method's layout) for the
prompt's last token and 3 generated tokens; the frequency methods, query
scaling, probes refused with the reason; the guard refusing a bias the hooks
never reach."""

import numpy as np
import pytest
import torch

import mesa_viz as mv
from mesa_viz.models import tiny_model
from mesa_viz.models.families import ALIBI_FAMILIES
from reference import alibi_reference_logits

T = 64
#: Methods run past T: Mesa's chunk triangle with Stair PE (as the paper ran MPT),
#: and every method that re-places positions.
PAST_T = [("mesa", dict(first_chunk=8, chunk_size=16, last_chunk=16, stair_start=8,
                        stair_width=3)),
          ("rerope", dict(window=24)),
          ("self-extend", dict(group_size=3, window=12)),
          ("dual-chunk", dict(chunk_size=40, local_window=16)),
          ("stair", dict(stair_start=16, stair_width=4)),
          ("streaming-llm", dict(sink_tokens=4, window=40)),
          ("leaky-rerope", dict(window=24, leak=4.0))]


def _model(family):
    """MPT records its training length (``max_seq_len``); BLOOM records none,
    so ``train_length=`` is passed for it."""
    kw = {"max_seq_len": T} if family == "mpt" else {}
    return tiny_model(family, attn_implementation="eager", **kw)[0]


def _given(family):
    return {} if family == "mpt" else {"train_length": T}


def _ids(n, seed=0):
    return torch.randint(0, 500, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["mpt", "bloom"])
def test_alibi_family_is_exact_below_and_matches_the_reference_past(family):
    model = _model(family)
    ids = _ids(48)
    with torch.no_grad():
        own = model(ids).logits[0]
        with mv.apply(model, "mesa", **_given(family)) as state:
            below = model(ids).logits[0]
    assert state.train_length == T and state.calls == 2
    assert (below - own).abs().max().item() <= 1e-5
    n, k = 120, 3
    ids = _ids(n, seed=1)
    for method, params in PAST_T:
        with mv.apply(model, method, **_given(family), **params), torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=k,
                                 do_sample=False, output_logits=True, use_cache=True,
                                 return_dict_in_generate=True, pad_token_id=0)
        got = torch.stack(out.logits, 1)[0].double()
        seq = out.sequences[:, :n + k - 1]
        m = mv.methods.resolve(method, seq.shape[1], train_length=T, prefill_length=n, **params)
        lay = mv.layout(m, seq.shape[1])
        ref = alibi_reference_logits(model, seq, lay.relative_positions, lay.mask)
        assert (got - ref[n - 1:]).abs().max().item() <= 1e-4, method


def test_mesa_past_T_differs_from_origin_on_mpt():
    """The bias really carries the layout: past T, Mesa's logits are not
    Origin's (a bias the model ignored would leave them equal)."""
    model = _model("mpt")
    ids = _ids(120, seed=2)
    with torch.no_grad():
        with mv.apply(model, "origin"):
            origin = model(ids).logits[0, -1]
        with mv.apply(model, "mesa", first_chunk=8, chunk_size=16, last_chunk=16):
            mesa = model(ids).logits[0, -1]
    assert (mesa - origin).abs().max().item() > 1e-3


@pytest.mark.parametrize("method, params, words", [
    ("yarn", dict(factor=2.0), "method 'yarn' changes RoPE frequencies; model type 'mpt' has "
                               "no RoPE (ALiBi)"),
    ("dynamic-ntk", {}, "method 'dynamic-ntk' changes RoPE frequencies"),
    ("pi", dict(factor=2.0), "method 'pi' changes RoPE frequencies"),
])
def test_frequency_methods_are_refused_on_alibi(method, params, words):
    model = _model("mpt")
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        with mv.apply(model, method, **params):
            pytest.fail("entered the block")
    assert not hasattr(model, "_mesa_viz_applied")


def test_what_a_bias_cannot_express_is_refused():
    model = _model("mpt")
    with pytest.raises(ValueError, match="scales queries or keys, which an ALiBi model's "
                                         "additive bias cannot express"):
        with mv.apply(model, "mesa", log_scaling=True, first_chunk=8, chunk_size=16,
                      last_chunk=16), torch.no_grad():
            model(_ids(120))
    with pytest.raises(ValueError, match="probes .capture. and piece_tokens need mesa_viz "
                                         "kernels"):
        with mv.apply(model, "mesa", piece_tokens=32):
            pass
    bloom = _model("bloom")
    with pytest.raises(ValueError, match="BLOOM records no training length.: pass "
                                         "train_length="):
        with mv.apply(bloom, "mesa"):
            pass
    with pytest.raises(ValueError, match="attn_config.alibi=False has no ALiBi bias"):
        with mv.apply(tiny_model("mpt", attn_implementation="eager",
                                 attn_config={"alibi": False})[0], "mesa"):
            pass


def test_nesting_and_restoring():
    model = _model("mpt")
    ids = _ids(48)                       # MPT's own bias is max_seq_len wide: below T
    with torch.no_grad():
        before = model(ids).logits
        with mv.apply(model, "mesa"):
            with pytest.raises(ValueError, match="already applied"):
                with mv.apply(model, "rerope"):
                    pass
        assert torch.equal(model(ids).logits, before)
    assert not hasattr(model, "_mesa_viz_applied")
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_guard_refuses_a_bias_the_blocks_never_receive(monkeypatch):
    """A transformers version that renamed the bias argument: no block gets the
    method's bias, the guard counts 0 and refuses, leaving the model as it was."""
    monkeypatch.setitem(ALIBI_FAMILIES, "mpt", "renamed_bias")
    model = _model("mpt")
    with pytest.raises(ValueError, match=r"'mpt': the registered attention function ran 0 "
                                         r"times for 2 layers"):
        with mv.apply(model, "mesa"):
            pass
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert not hasattr(model, "_mesa_viz_applied")


def test_guard_refuses_wrong_slopes(monkeypatch):
    """Slopes other than the model's own (here doubled) are measured and refused."""
    from mesa_viz.runtime import alibi
    real = alibi.alibi_slopes
    monkeypatch.setattr(alibi, "alibi_slopes", lambda model: 2 * real(model))
    model = _model("mpt")
    with pytest.raises(ValueError, match=r"differ from the model's own attention"):
        with mv.apply(model, "origin"):
            pass
    assert np.allclose(real(model).numpy(), [2.0 ** (-2 * k) for k in range(1, 5)])
