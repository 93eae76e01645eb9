"""The one-launch attention for positions that are not ``q - k``
(``mesa_viz.kernels.fused``: ``twin``, ``triton``): its torch twin, with the
kernel's own blocking, against the dense complex-RoPE reference for every
method that declares position rules; the Triton source itself under
``TRITON_INTERPRET=1`` on CPU tensors (where ``triton`` is installed); the
dispatch."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mesa_viz import kernels
from mesa_viz.kernels.fused import twin as fused
from mesa_viz.methods import get_method
from kernel_cases import D, dense as _dense_partial, qkv as _qkv
from repo import ROOT


#: (method, parameters, first query row): every registered fused rule.
CASES = [
    ("mesa", dict(first_chunk=5, chunk_size=16, last_chunk=16, stair_start=9, stair_width=4), None),
    ("mesa", dict(first_chunk=4, chunk_size=16, last_chunk=16, stair_start=3, stair_width=13), None),
    ("mesa", dict(first_chunk=8, chunk_size=12, last_chunk=10, stair_start=0, stair_width=7), None),
    ("stair", dict(stair_start=9, stair_width=4), 0),
    ("stair", dict(stair_start=20, stair_width=1), 90),
    ("rerope", dict(window=20), 0),
    ("leaky-rerope", dict(window=20, leak=4.0), 0),
    ("leaky-rerope", dict(window=20, leak=float("inf")), 90),
    ("streaming-llm", dict(sink_tokens=4), 0),
    ("lm-infinite", dict(sink_tokens=4), 90),
    ("self-extend", dict(window=16, group_size=3), 0),
    ("self-extend", dict(window=10, group_size=4), 90),
    ("string", dict(shifted_offset=21, local_window=5), 0),
]
N_TOKENS = 150


def _inv_freq():
    """Full rotary (the fused kernel's case): every channel rotates."""
    return 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))


def _dense(m, q, k, v, i0, scale):
    return _dense_partial(m, q, k, v, i0, scale, _inv_freq())


def _case(x):
    method, params, i0 = CASES[x]
    m = get_method(method, train_length=64, **params).resolve(N_TOKENS, prefill_length=N_TOKENS)
    if i0 is None:                                           # Mesa: its last chunk's rows
        i0 = m.plan().last_start
    q, k, v = _qkv(N_TOKENS - i0, N_TOKENS, seed=30 + x)
    return m, i0, q, k, v


@pytest.mark.parametrize("x", range(len(CASES)))
def test_twin_matches_dense_reference(x):
    """The kernel's blocking in torch (query blocks of 16 rows, key blocks of
    32) equals the dense reference, for every method's rules."""
    m, i0, q, k, v = _case(x)
    rules = kernels.fused_rules(m, i0)
    assert rules is not None
    out, lse = fused.twin(q, k, v, i0, _inv_freq().float(), D ** -0.5, rules, 16, 32)
    assert (out.double() - _dense(m, q, k, v, i0, D ** -0.5)).abs().max().item() <= 1e-5
    assert torch.isfinite(lse).all()


def test_fused_rules_cover_what_the_kernel_can_serve():
    """Mesa's rules serve only last-chunk rows with per-query Stair PE and no
    log scaling; origin has none (SDPA's fused kernel serves it)."""
    m = get_method("mesa", train_length=64, first_chunk=5, chunk_size=16,
                   last_chunk=16).resolve(150, prefill_length=150)
    s = m.plan().last_start
    assert kernels.fused_rules(m, s).stair == (s, m.stair_start, m.stair_width)
    assert kernels.fused_rules(m, 0) is None
    for extra in (dict(stair="anchored"), dict(log_scaling=True)):
        mm = get_method("mesa", train_length=64, first_chunk=5, chunk_size=16, last_chunk=16,
                        **extra).resolve(150, prefill_length=150)
        assert kernels.fused_rules(mm, s) is None
    assert kernels.fused_rules(get_method("origin").resolve(10, 8), 0) is None


def test_dispatch_only_on_cuda(caplog):
    """On CPU tensors the torch kernels run (``use_fused`` is False); forced,
    ``attend`` calls the fused kernel with the method's rules."""
    m, i0, q, k, v = _case(3)
    tables = kernels.RopeTables(kernels.Rope(_inv_freq().float()), m)
    assert not kernels.use_fused(q, tables)
    calls = []
    fake = type(sys)("fake_triton_stair")
    fake.fused_attention = lambda *a: calls.append(("rows", a[-1])) or fused.twin(*a, 16, 32)
    fake.fused_decode = lambda *a, keep: calls.append(("split", a[-1], keep("x", lambda: 8))) \
        or fused.twin(*a, 16, 32)[0]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernels.dispatch, "use_fused", lambda q, rope: True)
        patch.setitem(sys.modules, "mesa_viz.kernels.fused.triton", fake)
        got = kernels.attend(m, q, k, v, i0, tables, D ** -0.5)
        n = k.shape[2]
        one = kernels.attend(m, q[:, :, -1:], k, v, n - 1, kernels.RopeTables(tables.rope, m),
                             D ** -0.5)
    assert calls == [("rows", kernels.fused_rules(m, i0)),
                     ("split", kernels.fused_rules(m, n - 1), 8)]
    want = _dense(m, q, k, v, i0, D ** -0.5)
    assert (got.double() - want).abs().max().item() <= 1e-5
    assert (one.double() - want[:, :, -1:]).abs().max().item() <= 1e-5


def test_decode_rows_pack_the_query_group():
    """A decode tile holds a KV group's query heads times its rows, a power of
    two from 16 (``tl.dot``'s least) up to ``DECODE_ROWS``; more go to the
    one-launch kernel over query blocks."""
    assert fused.decode_rows(32, 4, 1) == 16 and fused.decode_rows(4, 4, 1) == 16
    assert fused.decode_rows(32, 4, 3) == 32 and fused.decode_rows(32, 4, 8) == 64
    assert fused.decode_rows(32, 4, 9) == 0 and fused.decode_rows(32, 32, 64) == 64
    assert fused.decode_rows(32, 32, 65) == 0


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed")
def test_decode_splits_cover_the_keys_in_whole_tiles():
    """Slices are whole tiles, cover every key, leave no slice empty, and
    bring the programs near the asked number."""
    from mesa_viz.kernels.fused.triton import decode_splits
    for keys, groups, programs, block in [(262144, 4, 512, 64), (17, 4, 512, 64),
                                          (1000, 1, 7, 16), (64, 8, 1, 64), (4097, 3, 100, 32)]:
        splits, split = decode_splits(keys, groups, programs, block)
        assert split % block == 0 and splits * split >= keys > (splits - 1) * split
        assert splits * groups <= max(programs, groups) or split == block
    assert decode_splits(262144, 4, 512, 64) == (128, 2048)


_INTERPRETED = """
import json, sys
sys.path[:0] = {paths!r}
from mesa_viz import kernels
import test_fused as t
kernels.dispatch.use_fused = lambda q, rope: True
errors = []
from mesa_viz.kernels.fused.triton import fused_attention, fused_decode
for x in range(len(t.CASES)):
    m, i0, q, k, v = t._case(x)
    want = t._dense(m, q, k, v, i0, t.D ** -0.5)
    got = kernels.attend(m, q, k, v, i0, t.kernels.Rope(t._inv_freq().float()), t.D ** -0.5)
    errors.append((got.double() - want).abs().max().item())
    # 16 x 16 tiles: some wholly near (no far rotation), most wholly far (no near one)
    small = fused_attention(q, k, v, i0, t._inv_freq().float(), t.D ** -0.5,
                            kernels.fused_rules(m, i0), block_m=16, block_n=16)[0]
    errors.append((small.double() - want).abs().max().item())
    # decode: the last rows through attend (split over the keys), and with
    # 16-key tiles in one slice, in slices of a few tiles and of one tile
    n, rope = k.shape[2], t.kernels.Rope(t._inv_freq().float())
    for rows in (1, 3):
        a, part = n - rows, want[:, :, -rows:]
        got = kernels.attend(m, q[:, :, -rows:], k, v, a, rope, t.D ** -0.5)
        errors.append((got.double() - part).abs().max().item())
        for programs in (1, 7, 10 ** 4):
            got = fused_decode(q[:, :, -rows:], k, v, a, t._inv_freq().float(), t.D ** -0.5,
                               kernels.fused_rules(m, a), programs=programs, block_n=16)
            errors.append((got.double() - part).abs().max().item())
print(json.dumps(errors))
"""


def _interpreted(template: str):
    """Run ``template`` (a script printing a JSON line last) under
    ``TRITON_INTERPRET=1`` in a fresh interpreter; its last line, parsed."""
    here = Path(__file__).parent
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = template.format(paths=[str(ROOT / "tests"), str(here)])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed (the twin above carries the claim)")
def test_triton_source_under_the_interpreter():
    """The Triton kernels themselves, run by Triton's interpreter on CPU tensors
    through ``kernels.attend`` (64 x 64 tiles) and with 16 x 16 tiles (where
    tiles wholly inside or outside a set's distances skip it), equal the
    dense reference for every case; so does the split-key decode launch for
    one and three rows, in one slice, a few, and one tile a slice."""
    errors = _interpreted(_INTERPRETED)
    assert len(errors) == 10 * len(CASES) and max(errors) <= 1e-5, errors


_THROUGH_A_MODEL = """
import json, sys
sys.path[:0] = {paths!r}
import torch
from transformers import AutoModelForCausalLM, LlamaConfig
import mesa_viz as mv
from mesa_viz import kernels
from mesa_viz.analyses import bench
cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=128,
                  head_dim=16)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
ids = bench.random_ids(256, 420)
def run(fused, method, **kw):
    kernels.dispatch.use_fused = lambda q, rope: fused
    logits = []
    with torch.no_grad(), mv.apply(model, method, train_length=128, **kw):
        out = model(ids, use_cache=True)
        cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        logits.append(out.logits[:, -1])
        for _ in range(3):
            out = model(tok, use_cache=True, past_key_values=cache)
            cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            logits.append(out.logits[:, -1])
    return torch.stack(logits)
diffs = []
for method, kw in (("mesa", {{}}), ("mesa", dict(piece_tokens=64)), ("rerope", dict(window=40))):
    diffs.append((run(True, method, **kw) - run(False, method, **kw)).abs().max().item())
print(json.dumps(diffs))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed (the twin above carries the claim)")
def test_triton_launches_through_a_model_equal_the_torch_kernels():
    """A random 3-layer GQA Llama under ``apply``, Triton's interpreter running
    the launches as on CUDA (``use_fused`` forced): a prefill in pieces (the last
    chunk's rows launch) and three decode steps (the split-key launch, its
    per-forward settings and buffer shared by the layers) give the logits of
    the torch kernels, for Mesa (two piece sizes) and ReRoPE."""
    diffs = _interpreted(_THROUGH_A_MODEL)
    assert len(diffs) == 3 and max(diffs) <= 1e-5, diffs


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_compile_for_hopper_without_a_gpu():
    """Triton's own compiler (to a cubin for sm_90, no GPU needed) takes every
    kernel in bfloat16 as the model runs them: the interpreter above does not
    type-check what the compiler does (loop-carried types, layouts).  The
    sizes and positions that move between calls are not specialised on."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mesa_viz.kernels.fused import triton as ts
    floats = dict(scale="fp32", qa="fp32", qb="fp32", qmax="fp32", ka="fp32", kb="fp32",
                  INV="*fp32", LSE="*fp32", PO="*fp32", PML="*fp32")

    def compile_(fn, consts):
        sig = {n: floats.get(n, "*bf16" if n[0] in "QKVO" and len(n) <= 2 else "i32")
               for n in fn.arg_names if n not in consts}
        sig.update({n: "constexpr" for n in consts})
        kernel = triton.compile(ASTSource(fn, signature=sig, constexprs=consts),
                                target=GPUTarget("cuda", 90, 32))
        return kernel.asm["cubin"]

    for d in (64, 128):                              # TinyLlama's head size, a 7B Llama's
        common = dict(HALF=d // 2, DV=d, IEEE=False)
        block_m, block_n, _ = ts.launch_settings(ts.ROWS_LAUNCH, d)
        for stair in (True, False):
            assert compile_(ts._fused_fwd, dict(common, STAIR=stair, BLOCK_M=block_m,
                                                BLOCK_N=block_n))
        for stair, one in ((True, True), (True, False), (False, True)):
            assert compile_(ts._decode_fwd, dict(common, STAIR=stair, BLOCK_M=16, ONE_ROW=one,
                                                 BLOCK_N=ts.launch_settings(ts.DECODE_LAUNCH,
                                                                            d)[0]))
        assert compile_(ts._decode_fold, dict(DV=d, BLOCK_M=16, BLOCK_S=ts.FOLD_SLICES))
    assert ts.launch_settings(ts.ROWS_LAUNCH, 32) == ts.ROWS_LAUNCH[64]
    assert ts.launch_settings(ts.ROWS_LAUNCH, 256) == ts.ROWS_LAUNCH[128]
    # a new prompt length or decode step does not compile a kernel again
    for fn in (ts._fused_fwd, ts._decode_fwd, ts._decode_fold):
        moving = [n for n in fn.arg_names if n in ts._MOVING]
        assert "rows" in moving and sorted(fn.do_not_specialize) == sorted(moving)
