"""The one-launch attention for positions that are not ``q - k``
(``mesa_viz.fused``, ``mesa_viz.triton_stair``): its torch twin, with the
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

from mesa_viz import fused, kernels
from mesa_viz.methods import get_method
from test_kernels import D, _qkv
from test_kernels import _dense as _dense_partial

pytestmark = pytest.mark.unit

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
    fake.fused_attention = lambda *a: calls.append(a[-1]) or fused.twin(*a, 16, 32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernels, "use_fused", lambda q, rope: True)
        patch.setitem(sys.modules, "mesa_viz.triton_stair", fake)
        got = kernels.attend(m, q, k, v, i0, tables, D ** -0.5)
    assert calls == [kernels.fused_rules(m, i0)]
    assert (got.double() - _dense(m, q, k, v, i0, D ** -0.5)).abs().max().item() <= 1e-5


_INTERPRETED = """
import json, sys
sys.path[:0] = {paths!r}
from mesa_viz import kernels
import test_fused as t
kernels.use_fused = lambda q, rope: True
errors = []
from mesa_viz.triton_stair import fused_attention
for x in range(len(t.CASES)):
    m, i0, q, k, v = t._case(x)
    want = t._dense(m, q, k, v, i0, t.D ** -0.5)
    got = kernels.attend(m, q, k, v, i0, t.kernels.Rope(t._inv_freq().float()), t.D ** -0.5)
    errors.append((got.double() - want).abs().max().item())
    # 16 x 16 tiles: some wholly near (no far rotation), most wholly far (no near one)
    small = fused_attention(q, k, v, i0, t._inv_freq().float(), t.D ** -0.5,
                            kernels.fused_rules(m, i0), block_m=16, block_n=16)[0]
    errors.append((small.double() - want).abs().max().item())
print(json.dumps(errors))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed (the twin above carries the claim)")
def test_triton_source_under_the_interpreter():
    """The Triton kernel itself, run by Triton's interpreter on CPU tensors
    through ``kernels.attend`` (64 x 64 tiles) and with 16 x 16 tiles (where
    tiles wholly inside or outside a set's distances skip it), equals the
    dense reference for every case."""
    here = Path(__file__).parent
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = _INTERPRETED.format(paths=[str(here.parent), str(here)])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    errors = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(errors) == 2 * len(CASES) and max(errors) <= 1e-5, errors
