"""Methods on tiny random-weight models of the RoPE families the authors meant
to cover (Llama with GQA, GPT-NeoX/Pythia and Phi with partial rotary, Phi-3):
every method against an independent dense reference built from
``layout(...)`` (prefill and generated tokens; frequency rules with their
frequencies written from the formulas), equivalence with origin below the
training length, Mesa's presets, generation, restoring the model, what a user
meets (nesting, missing kernels, transformers' length warning, frequency rules
on scaled RoPE), errors."""

import dataclasses
import math
import logging
from typing import ClassVar

import numpy as np
import pytest
import torch

import mesa_viz as mv
from mesa_viz.methods import Method
from mesa_viz.models import tiny_model
from reference import reference_logits, rule_frequencies


#: The families of the every-method tests (the authors' Llama, Pythia and Phi).
FAMILIES = ["llama", "gpt_neox", "phi", "phi3"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return tiny_model(request.param)[0]

T = 64
SMALL_T = {
    "mesa": dict(first_chunk=8, chunk_size=16, last_chunk=16),
    "mesa-fixed": dict(first_chunk=8, chunk_size=16, last_chunk=16, stair_start=8, stair_width=3),
    "mesa-anchored": dict(first_chunk=8, chunk_size=20, last_chunk=10, stair="anchored",
                          stair_start=6, stair_width=4),
    "mesa-log": dict(first_chunk=5, chunk_size=16, last_chunk=16, log_scaling=True),
    "stair": dict(stair_start=10, stair_width=3),
    "stair-from-0": dict(stair_start=0, stair_width=5),
    "rerope": dict(window=20),
    "rerope-log": dict(window=20, log_scaling=True),
    "leaky-rerope": dict(window=20),
    "leaky-rerope-log": dict(window=20, preset="authors-code"),
    "streaming-llm": dict(sink_tokens=4),
    "lm-infinite": dict(sink_tokens=4),
    "self-extend": dict(group_size=3, window=12),
    "self-extend-uneven": dict(group_size=4, window=10),
    "self-extend-float": dict(group_size=4, window=10, shift="float"),
    "dual-chunk": dict(chunk_size=40, local_window=16),
    "string": dict(shifted_offset=30, local_window=8),
    "pi": dict(factor=3.0),
    "ntk": dict(factor=3.0),
    "yarn": dict(factor=3.0),
    "yarn-betas": dict(factor=2.5, beta_fast=16.0, beta_slow=2.0, attention_factor=1.2),
}


def _ids(n, seed=0, vocab=500):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, n), generator=g)


def _logits(model, ids, method="origin", **params):
    with mv.apply(model, method, **params) as state, torch.no_grad():
        out = model(ids).logits[0]
    return out, state


def _method_of(case):
    """The method of a case name: the longest name in METHODS it starts with."""
    return next(m for m in sorted(mv.METHODS, key=len, reverse=True)
                if case == m or case.startswith(m + "-"))


def _reference(model, ids, method, prefill_length=None, **params):
    """Dense reference logits ``[n, vocab]`` of ``method`` (resolved params, no
    defaults left that depend on the length) over ``ids [1, n]``."""
    n = ids.shape[1]
    lay = mv.layout(method, n, prefill_length=prefill_length, **params)
    m = mv.methods.resolve(method, n, prefill_length=prefill_length, **params)
    inv_freq, rope_scale = rule_frequencies(model, m, n, prefill_length)
    return reference_logits(model, ids, lay.relative_positions, lay.mask,
                            m.query_scale(np.arange(n)), inv_freq, rope_scale=rope_scale)


def _fixed_params(method, seq_len, prefill_length):
    """Every default of ``method`` resolved for ``seq_len`` tokens (so nothing
    changes from one decode step to the next), as apply() parameters."""
    p = mv.methods.resolve(method, seq_len, train_length=T,
                           prefill_length=prefill_length).params()
    p.pop("prefill_length", None)
    return p


# below train_length every window must cover the input for the claim to hold (STRING
# changes positions below T by design: it is Origin up to its shifted offset)
COVER = {"rerope": dict(window=255), "leaky-rerope": dict(window=255),
         "string": dict(shifted_offset=255)}


@pytest.mark.parametrize("method", list(mv.METHODS))
def test_equals_origin_below_train_length(family, method):
    ids = _ids(200)
    ref = _reference(family, ids, "origin", train_length=256)
    got, _ = _logits(family, ids, method, train_length=256, **COVER.get(method, {}))
    assert (got.double() - ref).abs().max().item() <= 1e-4
    if method == "origin":                              # the reference is the model's own attention
        assert (family(ids).logits[0].double() - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("method", list(mv.METHODS))
def test_every_method_matches_dense_reference_prefill_and_generation(family, method):
    """Past train_length, with every default derived from it: the prefill's
    logits and 4 greedy steps equal the dense reference of the method's layout."""
    n, k = 150, 4
    params = _fixed_params(method, n + k, n)
    ids = _ids(n, seed=10)
    with mv.apply(family, method, **params), torch.no_grad():
        prefill = family(ids).logits[0].double()
        out = family.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=k,
                              do_sample=False, output_logits=True,
                              return_dict_in_generate=True, pad_token_id=0)
    steps = torch.stack(out.logits, 1)[0].double()                     # [k, vocab]
    ref = _reference(family, out.sequences[:, :n + k - 1], method, prefill_length=n, **params)
    assert (prefill - ref[:n]).abs().max().item() <= 1e-4
    assert (steps - ref[n - 1:]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("case", sorted(SMALL_T))
def test_matches_dense_reference_past_train_length(family, case):
    method = _method_of(case)
    ids = _ids(150, seed=1)
    got, state = _logits(family, ids, method, train_length=T, **SMALL_T[case])
    ref = _reference(family, ids, method, **state.resolved.params())
    assert (got.double() - ref).abs().max().item() <= 1e-4
    # and it really is a different computation from origin past T
    assert (got - family(ids).logits[0]).abs().max().item() > 1e-3


@pytest.mark.parametrize("case", ["mesa-fixed", "mesa-anchored", "stair"])
def test_generation_matches_reference(tiny, case):
    method = _method_of(case)
    params = dict(SMALL_T[case], train_length=T)
    ids = _ids(150, seed=2)
    with mv.apply(tiny, method, **params), torch.no_grad():
        out = tiny.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                            do_sample=False, output_logits=True,
                            return_dict_in_generate=True, pad_token_id=0)
    steps = torch.stack(out.logits, 1)[0].double()                    # [5, vocab]
    ref = _reference(tiny, out.sequences[:, :155], method, prefill_length=150, **params)
    assert (steps - ref[149:154]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("method", ["pi", "ntk", "yarn", "self-extend"])
def test_prompt_derived_parameters_follow_each_prompt_and_stay_through_decode(tiny_llama,
                                                                              method):
    """A factor (or Self-Extend's group) derived from the prompt: two prompts of
    different lengths in one application each get their own, and the tokens
    generated after a prompt keep its value (the reference resolves the whole
    sequence with the prompt's length)."""
    k, runs = 4, []
    with mv.apply(tiny_llama, method, train_length=T) as state, torch.no_grad():
        for n, seed in [(150, 20), (100, 21)]:
            ids = _ids(n, seed=seed)
            out = tiny_llama.generate(ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=k, do_sample=False, output_logits=True,
                                      return_dict_in_generate=True, pad_token_id=0)
            runs.append((n, out, state.resolved.params()))
    for n, out, params in runs:
        got = torch.stack(out.logits, 1)[0].double()
        ref = _reference(tiny_llama, out.sequences[:, :n + k - 1], method, prefill_length=n,
                         train_length=T)
        assert (got - ref[n - 1:]).abs().max().item() <= 1e-4, n
        want = {"group_size": 3 if n == 150 else 2} if method == "self-extend" else \
            {"factor": n / T}
        assert {key: params[key] for key in want} == want


@pytest.mark.parametrize("preset,n", [("paper", 900), ("authors-code", 900)])
def test_mesa_presets_match_the_reference(preset, n):
    """Mesa's presets on a tiny model with T = 640 (the paper's constants need
    T > 512): prefill and generated tokens against the dense reference; the
    preset and its resolved parameters are what the application reports."""
    model = tiny_model("llama")[0]
    ids, k = _ids(n, seed=30), 3
    with mv.apply(model, "mesa", train_length=640, preset=preset) as state, torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=k,
                             do_sample=False, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0)
        prefill = model(ids).logits[0].double()
    params = state.resolved.params()
    assert params.pop("preset") == preset and len(state.resolved.plan().chunks) >= 3
    del params["prefill_length"]
    steps = torch.stack(out.logits, 1)[0].double()
    ref = _reference(model, out.sequences[:, :n + k - 1], "mesa", prefill_length=n, **params)
    assert (prefill - ref[:n]).abs().max().item() <= 1e-4
    assert (steps - ref[n - 1:]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("n,k,last", [(600, 45, 320), (660, 3, 320)])
def test_mesa_authors_code_below_and_past_train_length(n, k, last):
    """The authors'-code preset at T = 640 with the code's L = T/2: a prompt of
    600 tokens split below T and generating past it (the stair from row 640);
    a prompt of 660 whose anchor falls inside its last chunk: prefill and
    generated tokens against the dense reference."""
    model = tiny_model("llama")[0]
    ids = _ids(n, seed=31)
    with mv.apply(model, "mesa", train_length=640, preset="authors-code",
                  last_chunk=last) as state, torch.no_grad():
        prefill = model(ids).logits[0].double()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=k,
                             do_sample=False, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0)
    params = state.resolved.params()
    del params["prefill_length"], params["preset"]        # the preset reads last_chunk as L
    assert len(state.resolved.plan().chunks) == 4 if n == 600 else params["stair_start"] < 0
    steps = torch.stack(out.logits, 1)[0].double()
    ref = _reference(model, out.sequences[:, :n + k - 1], "mesa", prefill_length=n, **params)
    assert (prefill - ref[:n]).abs().max().item() <= 1e-4
    assert (steps - ref[n - 1:]).abs().max().item() <= 1e-4


def test_dual_chunk_mscale_prefill_matches_the_reference(family):
    """Dual Chunk's released mscale: a prefill of n > T tokens has every query and
    key times 0.05 ln(n/T) + 1, one factor squared on the logits (the decode's
    per-key factors: tests/unit/methods/test_released_code.py)."""
    ids = _ids(150, seed=32)
    got, state = _logits(family, ids, "dual-chunk", train_length=T, preset="authors-code")
    m = state.resolved
    assert m.mscale and m.key_scale([0])[0] == pytest.approx(0.05 * math.log(150 / T) + 1)
    lay = mv.layout("dual-chunk", 150, train_length=T, preset="authors-code")
    ref = reference_logits(family, ids, lay.relative_positions, lay.mask,
                           m.query_scale(np.arange(150)) * m.key_scale([0])[0])
    assert (got.double() - ref).abs().max().item() <= 1e-4
    plain, _ = _logits(family, ids, "dual-chunk", train_length=T, chunk_size=m.chunk_size,
                       local_window=m.local_window)
    assert (plain - got).abs().max().item() > 2e-4           # mscale changes the logits


def test_frequency_rules_run_transformers_rope_types(tiny_neox):
    """PI, NTK and YaRN swap in the rotary module transformers builds for
    rope_type linear, default (a raised base) and yarn; the model's own is
    back after the block."""
    ids = _ids(100, seed=22)
    own = tiny_neox.gpt_neox.rotary_emb
    for method, rope_type in [("pi", "linear"), ("ntk", "default"), ("yarn", "yarn")]:
        with mv.apply(tiny_neox, method, train_length=32) as st, torch.no_grad():
            tiny_neox(ids)
            rotary = tiny_neox.gpt_neox.rotary_emb
            assert rotary.rope_type == rope_type and st.resolved.factor == 100 / 32
            assert not torch.equal(rotary.inv_freq, own.inv_freq)
            assert rotary.inv_freq[0] == own.inv_freq[0] or method == "pi"   # fastest kept
        assert tiny_neox.gpt_neox.rotary_emb is own


@pytest.mark.parametrize("method", ["pi", "ntk", "yarn", "dynamic-ntk"])
def test_frequency_rule_on_scaled_rope_is_refused(method):
    """A model whose own RoPE is already scaled (Llama 3's rope_type) would lose
    that scaling under a frequency rule: refused, naming the type."""
    llama3 = tiny_model("llama", rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 1024})[0]
    with pytest.raises(ValueError, match=f"'{method}' replaces the RoPE frequencies.*"
                                         "rope_type is 'llama3'.*allowed on models with "
                                         "rope_type 'default'"):
        with mv.apply(llama3, method):
            pass
    with mv.apply(llama3, "self-extend", group_size=2, window=8):     # positions only: fine
        pass


@pytest.mark.parametrize("case", ["self-extend", "dual-chunk", "string", "pi", "ntk", "yarn"])
def test_probes_capture_the_new_methods(tiny_llama, case):
    """A probe captures rows under every new method (they sum to one; the
    logits with rows captured, recomputed from the captured probabilities,
    equal apply()'s), the frequency rules included (their capture runs the
    kernels with the rule's rotary)."""
    ids, rows = _ids(150, seed=23), [3, 60, 149]
    params = SMALL_T[case]
    tr = mv.trace(tiny_llama, ids, case, train_length=T, query_rows=rows, **params)
    assert np.allclose(tr.attention.sum(-1), 1.0, atol=1e-5)
    got, _ = _logits(tiny_llama, ids, case, train_length=T, **params)
    with mv.apply(tiny_llama, case, train_length=T, **params,
                  capture=mv.runtime.Capture(layers=[0, 1], heads=[0], rows=rows)) as st, \
            torch.no_grad():
        captured = tiny_llama(ids).logits[0]
    assert (captured - got).abs().max().item() <= 1e-4
    assert st.capture.attention[0].shape == (1, 3, 150)            # [head, row, key]


def test_methods_and_parameters_one_after_another(tiny_llama):
    """No state survives from one application (or forward) to the next: two
    methods and two parameter sets each, in turn on one model, each equal to
    its own dense reference."""
    ids = _ids(150, seed=11)
    runs = [("mesa", SMALL_T["mesa-fixed"]), ("stair", SMALL_T["stair"]),
            ("mesa", dict(SMALL_T["mesa-fixed"], stair_start=20, stair_width=5)),
            ("stair", dict(stair_start=4, stair_width=8)), ("mesa", SMALL_T["mesa-fixed"])]
    for method, params in runs:
        got, _ = _logits(tiny_llama, ids, method, train_length=T, **params)
        ref = _reference(tiny_llama, ids, method, train_length=T, **params)
        assert (got.double() - ref).abs().max().item() <= 1e-4, (method, params)


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
    for method, p in [("mesa", SMALL_T["mesa"]), ("rerope", SMALL_T["rerope"]),
                      ("stair", SMALL_T["stair"])]:
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
    with mv.apply(tiny_llama, "dynamic-ntk", train_length=32, factor=2.0), torch.no_grad():
        got = tiny_llama(ids).logits[0]
        assert tiny_llama.model.rotary_emb.rope_type == "dynamic"
    assert tiny_llama.model.rotary_emb.rope_type == "default"
    assert (got - tiny_llama(ids).logits[0]).abs().max().item() > 1e-3


def test_nested_application_is_refused(tiny_llama):
    """A model carries one method at a time; the error names it, and the outer
    application still works (and is restored) afterwards."""
    ids = _ids(100, seed=12)
    for outer, inner in [("mesa", "rerope"), ("dynamic-ntk", "origin"), ("origin", "mesa")]:
        with mv.apply(tiny_llama, outer, train_length=T) as st, torch.no_grad():
            with pytest.raises(ValueError, match=f"'{outer}' is already applied.*do not nest"):
                with mv.apply(tiny_llama, inner, train_length=T):
                    pass
            assert st.method.name == outer
            tiny_llama(ids)
    assert not hasattr(tiny_llama, "_mesa_viz_applied")
    with mv.apply(tiny_llama, "rerope", train_length=T):       # free again
        pass


@dataclasses.dataclass(frozen=True)
class _NoKernel(Method):
    """A method with a layout but no kernel (and not native)."""

    name: ClassVar[str] = "no-kernel"


def test_method_without_kernel_is_refused_at_apply(tiny_llama):
    impl = tiny_llama.config._attn_implementation
    with pytest.raises(ValueError, match="'no-kernel' has no attention kernel.*allowed.*'stair'"):
        with mv.apply(tiny_llama, _NoKernel()):
            pytest.fail("entered the block")
    assert tiny_llama.config._attn_implementation == impl
    assert not hasattr(tiny_llama, "_mesa_viz_applied")


def test_generation_past_train_length_says_what_the_method_does(caplog):
    """transformers' "exceeded the model's predefined maximum length" reminder
    is dropped inside apply() (and only there); apply says once, at INFO, what
    the method does instead."""
    from transformers.utils import logging as hf_logging
    model = tiny_model("llama", max_position_embeddings=T)[0]
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    reminder = logging.getLogger("transformers.generation.stopping_criteria")
    reminder.addHandler(handler)

    def generate():
        ids = _ids(T + 6, seed=13)
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                       do_sample=False, pad_token_id=0)
        return [r for r in records if "predefined maximum length" in r.getMessage()]

    hf_logging.warning_once.cache_clear()           # it warns once per process
    try:
        with caplog.at_level(logging.INFO, logger="mesa_viz.runtime.state"):
            for method in ["mesa", "origin", "dynamic-ntk"]:
                with mv.apply(model, method), torch.no_grad():
                    assert generate() == []
                told = [r.getMessage() for r in caplog.records if "past train_length" in r.message]
                assert len(told) == 1 and told[0].startswith(f"{method} past train_length={T}")
                assert mv.METHODS[method].past_train_length in told[0]
                caplog.clear()
        with torch.no_grad():
            assert len(generate()) == 1                 # outside apply the reminder is back
    finally:
        reminder.removeHandler(handler)
    assert not reminder.filters and "warning_once" not in vars(reminder)


def test_overlapping_applications_restore_in_any_order():
    """Two models' applications closed out of order: the reminder stays dropped
    while either is open, and nothing is left after the last."""
    reminder = logging.getLogger("transformers.generation.stopping_criteria")
    a, b = tiny_model("llama")[0], tiny_model("gpt_neox")[0]
    first, second = mv.apply(a, "mesa"), mv.apply(b, "stair")
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert len(reminder.filters) == 1 and "warning_once" in vars(reminder)
    assert not hasattr(a, "_mesa_viz_applied") and hasattr(b, "_mesa_viz_applied")
    second.__exit__(None, None, None)
    assert not reminder.filters and "warning_once" not in vars(reminder)


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
    with mv.apply(tiny_llama, "mesa", train_length=64), torch.no_grad():
        both = tiny_llama(ids).logits
    for r in range(2):
        one, _ = _logits(tiny_llama, ids[r:r + 1], "mesa", train_length=64)
        assert (both[r] - one).abs().max().item() <= 1e-4


def test_transformers_range_is_checked():
    from mesa_viz.models.compat import check_transformers
    check_transformers("5.24.0")
    with pytest.raises(RuntimeError, match="4.31.0 is outside"):
        check_transformers("4.31.0")


# -- Mesa's prefill in pieces, decode memo ---------------------------------------------------

MESA_PIECES = dict(train_length=T, first_chunk=8, chunk_size=16, last_chunk=16)


def _decoder_calls(model):
    """A list filled with the token count of every forward of the decoder stack."""
    calls = []
    stack = model.get_decoder()

    def count(module, args, kwargs):
        x = kwargs.get("input_ids", args[0] if args else None)
        calls.append(x.shape[1])
    return calls, stack.register_forward_pre_hook(count, with_kwargs=True)


def test_mesa_prefill_runs_in_pieces_and_equals_one_forward(tiny):
    """Past T, ``model(ids)`` runs the prompt as pieces of at most
    ``piece_tokens`` tokens through every layer (first chunk with middle
    chunks, more middle chunks, the last chunk), and gives the logits of every
    position, the hidden states of every position and the cache of one forward."""
    ids = _ids(150, seed=14)
    calls, hook = _decoder_calls(tiny)
    try:
        with mv.apply(tiny, "mesa", **MESA_PIECES) as st, torch.no_grad():
            calls.clear()                                  # the guard's two 16-token forwards
            pieces = tiny(ids, output_hidden_states=True)
            assert st.resolved.prefill_pieces(150, 32) == ((0, 24), (24, 56), (56, 88),
                                                           (88, 120), (120, 150))
        assert calls == [150, 24, 32, 32, 32]          # the caller's forward runs the last piece
        with mv.apply(tiny, "mesa", piece_tokens=10**6, **MESA_PIECES), torch.no_grad():
            calls.clear()
            one = tiny(ids, output_hidden_states=True)
            last = tiny(ids, use_cache=False, logits_to_keep=1)
        assert calls == [150, 120, 150, 120]
    finally:
        hook.remove()
    assert pieces.logits.shape == one.logits.shape == (1, 150, tiny.config.vocab_size)
    assert (pieces.logits - one.logits).abs().max().item() <= 1e-5
    assert len(pieces.hidden_states) == len(one.hidden_states)
    for a, b in zip(pieces.hidden_states, one.hidden_states):
        assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-5
    assert pieces.cache.get_seq_length() == 150 and last.cache is None
    assert (last.logits[0, -1] - one.logits[0, -1]).abs().max().item() <= 1e-5
    ref = _reference(tiny, ids, "mesa", **{k: v for k, v in MESA_PIECES.items()})
    assert (pieces.logits[0].double() - ref).abs().max().item() <= 1e-4


def test_mesa_pieces_refuse_what_they_cannot_give(tiny_llama):
    ids = _ids(150, seed=15)
    with mv.apply(tiny_llama, "mesa", **MESA_PIECES), torch.no_grad():
        with pytest.raises(ValueError, match="output_attentions=True is not supported"):
            tiny_llama(ids, output_attentions=True)
        tiny_llama(ids[:, :100])                     # the application still works after it
    with pytest.raises(ValueError, match="piece_tokens=0 must be an integer >= 1"):
        with mv.apply(tiny_llama, "mesa", piece_tokens=0):
            pass


def test_decode_memo_is_per_cache(tiny_llama):
    """Two prompts prefilled one after the other, then decoded alternately on
    their own caches: every step equals decoding each alone (the rotated keys
    a step reuses belong to its own cache)."""
    a, b = _ids(150, seed=16), _ids(150, seed=17)
    params = _fixed_params("mesa", 160, 150)

    def greedy(model, ids, steps, cache=None):
        out = model(ids, use_cache=True, cache=cache) if cache is not None else \
            model(ids, use_cache=True)
        return out.logits[:, -1:].argmax(-1), out.cache, out.logits[0, -1]

    with mv.apply(tiny_llama, "mesa", **params), torch.no_grad():
        alone = []
        for ids in (a, b):
            tok, cache, _ = greedy(tiny_llama, ids, 0)
            seq = []
            for _ in range(3):
                tok, cache, logit = greedy(tiny_llama, tok, 0, cache)
                seq.append(logit)
            alone.append(seq)
        tok_a, cache_a, _ = greedy(tiny_llama, a, 0)
        tok_b, cache_b, _ = greedy(tiny_llama, b, 0)
        for step in range(3):
            tok_a, cache_a, la = greedy(tiny_llama, tok_a, 0, cache_a)
            tok_b, cache_b, lb = greedy(tiny_llama, tok_b, 0, cache_b)
            assert (la - alone[0][step]).abs().max().item() <= 1e-5
            assert (lb - alone[1][step]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("method", ["origin", "mesa"])
def test_presized_cache_appends_in_place_and_equals_the_dynamic_cache(tiny_llama, method):
    """``presized_cache`` (the bench's, for every method): a prompt longer
    than its room, then decode steps, give the logits of transformers' own
    cache; decode steps write into one buffer (no copy of the layer), and a
    beam reordering (new tensors) falls back to ``DynamicLayer``."""
    from mesa_viz.runtime import presized_cache
    ids = _ids(150, seed=18)
    params = _fixed_params("mesa", 160, 150) if method == "mesa" else {}

    def run(cache, steps=5):
        kw = {} if cache is None else {"cache": cache}
        out = tiny_llama(ids, use_cache=True, **kw)
        tok, cache, logits, ptrs = out.logits[:, -1:].argmax(-1), out.cache, [out.logits[0, -1]], []
        for _ in range(steps):
            out = tiny_llama(tok, use_cache=True, cache=cache)
            tok, cache = out.logits[:, -1:].argmax(-1), out.cache
            logits.append(out.logits[0, -1])
            ptrs.append(cache.layers[0].keys.data_ptr())
        return cache, logits, ptrs

    with mv.apply(tiny_llama, method, **params), torch.no_grad():
        _, ref, own = run(None)
        cache, got, ptrs = run(presized_cache(tiny_llama, 20))      # room for 20: grows once
        assert cache.get_seq_length() == 155 and len(set(ptrs)) == 1
        # Mesa's prefill in pieces presizes its own cache; origin's is transformers' (a copy a
        # step: each step's keys live elsewhere than the step's before, which is alive meanwhile)
        if method == "mesa":
            assert len(set(own)) == 1
        else:
            assert all(a != b for a, b in zip(own, own[1:]))
        for a, b in zip(got, ref):
            assert (a - b).abs().max().item() <= 1e-5
        cache.reorder_cache(torch.tensor([0]))
        out = tiny_llama(got[-1].argmax().view(1, 1), use_cache=True, cache=cache)
        assert cache.get_seq_length() == 156 and out.logits.isfinite().all()


def test_mesa_decode_step_reads_the_device_once(tiny_llama):
    """A Mesa decode step on the presized cache reads device values once (the
    positions), not once a layer: no ``.item()`` or ``torch.equal`` per layer,
    each a sync that stalls a GPU's queue.  Then a crop of the cache and new
    tokens at the cropped positions give what a fresh prefill gives."""
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode

    from mesa_viz.runtime import presized_cache

    class Reads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in ("_local_scalar_dense", "equal", "is_nonzero", "nonzero"):
                self.n[name] += 1
            return func(*args, **(kwargs or {}))

    ids = _ids(150, seed=19)
    params = _fixed_params("mesa", 160, 150)
    with mv.apply(tiny_llama, "mesa", **params), torch.no_grad():
        out = tiny_llama(ids, use_cache=True, cache=presized_cache(tiny_llama, 150))
        cache, tok = out.cache, out.logits[:, -1:].argmax(-1)
        first = tok
        for _ in range(2):
            out = tiny_llama(tok, use_cache=True, cache=cache)
            cache, tok = out.cache, out.logits[:, -1:].argmax(-1)
        with Reads() as reads:
            tiny_llama(tok, use_cache=True, cache=cache)
        assert sum(reads.n.values()) <= 1, reads.n
        cache.crop(151 - cache.get_seq_length())           # keep the prompt and the first token
        other = torch.tensor([[7]])
        got = tiny_llama(other, use_cache=True, cache=cache).logits[0, -1]
        fresh = tiny_llama(ids, use_cache=True).cache
        fresh = tiny_llama(first, use_cache=True, cache=fresh).cache
        want = tiny_llama(other, use_cache=True, cache=fresh).logits[0, -1]
    assert (got - want).abs().max().item() <= 1e-5
