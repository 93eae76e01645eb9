"""The attention kernels alone, on random tensors, against the dense reference:
the single-query (decode) Stair path and the GPU path (near and far key sets
concatenated along the head dimension into one SDPA call), run here on CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mesa_viz import kernels
from mesa_viz.methods import get_method
from reference import dense_scores

pytestmark = pytest.mark.unit

H, KVH, D, ROT = 4, 2, 16, 12          # GQA and partial rotary (12 of 16 channels)


def _inv_freq():
    return 1.0 / (10000 ** (torch.arange(0, ROT, 2, dtype=torch.float64) / ROT))


def _qkv(lq, lk, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, lq, D, generator=g)
    k = torch.randn(1, KVH, lk, D, generator=g)
    v = torch.randn(1, KVH, lk, D, generator=g)
    return q, k, v


def _dense(m, q, k, v, i0, scale):
    """``[1, H, Lq, D]`` attention from ``m.relative`` with complex-number RoPE."""
    lq, lk = q.shape[2], k.shape[2]
    rel, vis = m.relative(np.arange(i0, i0 + lq)[:, None], np.arange(lk)[None, :])
    rel = torch.as_tensor(np.where(vis, rel, 0), dtype=torch.float64)
    fac = torch.as_tensor(kernels.query_scale(m, np.arange(i0, i0 + lq)), dtype=torch.float64)
    rep = H // KVH
    kk = k[0].repeat_interleave(rep, 0).double()
    vv = v[0].repeat_interleave(rep, 0).double()
    s = dense_scores(q[0].double() * fac[:, None], kk, rel, _inv_freq()) * scale
    s = s.masked_fill(~torch.as_tensor(vis), -math.inf)
    return (torch.softmax(s, -1) @ vv)[None]


def _attend(m, q, k, v, i0, backend="sdpa"):
    rope = kernels.Rope(_inv_freq().float())
    return kernels.attend(m, q, k, v, i0, rope, D ** -0.5, backend)


MESA_CASES = [
    dict(first_chunk=5, chunk_size=16, last_chunk=16, stair_start=9, stair_width=1),
    dict(first_chunk=5, chunk_size=16, last_chunk=16, stair_start=9, stair_width=4),
    dict(first_chunk=8, chunk_size=12, last_chunk=10, stair_start=16, stair_width=7),
    dict(first_chunk=4, chunk_size=16, last_chunk=16, stair_start=3, stair_width=13),
    dict(first_chunk=5, chunk_size=16, last_chunk=16, stair_start=9, stair_width=4,
         log_scaling=True),
]


def _force_gpu_paths(monkeypatch, few_rows=None):
    """Take the branches the kernels take on CUDA, here on CPU."""
    monkeypatch.setattr(kernels, "q_is_cpu_or_eager", lambda q, backend: backend == "eager")
    if few_rows is not None:
        monkeypatch.setattr(kernels, "_few_rows", lambda q, n: few_rows)


@pytest.mark.parametrize("gpu", [False, True])
@pytest.mark.parametrize("case", range(len(MESA_CASES)))
def test_single_query_stair_matches_dense(case, gpu, monkeypatch):
    """Decode steps of many lengths: every split of far keys into a short run and
    full runs of ``stair_width``, including none and all (and the GPU's split
    of the output product by run)."""
    if gpu:
        _force_gpu_paths(monkeypatch)
    p = MESA_CASES[case]
    prefill = 150
    for i in [prefill, prefill + 1, prefill + 3, prefill + p["stair_width"], 217]:
        m = get_method("mesa", train_length=64, **p).resolve(i + 1, prefill_length=prefill)
        q, k, v = _qkv(1, i + 1, seed=i)
        got = _attend(m, q, k, v, i)
        want = _dense(m, q, k, v, i, D ** -0.5)
        assert (got.double() - want).abs().max().item() <= 1e-5, (case, i)


def test_single_query_stair_equals_the_blocked_path():
    """The decode path and the residue-class path agree on the same rows."""
    p = MESA_CASES[1]
    m = get_method("mesa", train_length=64, **p).resolve(180, prefill_length=150)
    q, k, v = _qkv(2, 180, seed=7)
    two = _attend(m, q, k, v, 178)                       # 2 queries: blocked path
    one = _attend(m, q[:, :, 1:], k, v, 179)             # the second alone: decode path
    assert (two[:, :, 1:] - one).abs().max().item() <= 1e-5


PREFILL_CASES = {
    "mesa": dict(first_chunk=5, chunk_size=16, last_chunk=16, stair_start=9, stair_width=4),
    "mesa-anchored": dict(first_chunk=5, chunk_size=16, last_chunk=16, stair="anchored"),
    "rerope": dict(window=20),
    "leaky-rerope": dict(window=20, leak=4.0),
    "streaming-llm": dict(sink_tokens=4),
    "lm-infinite": dict(sink_tokens=4),
    "origin": {},
}


@pytest.mark.parametrize("few_rows", [False, True])
@pytest.mark.parametrize("case", sorted(PREFILL_CASES))
def test_gpu_paths_match_dense(case, few_rows, monkeypatch):
    """On CUDA the near and far key sets go through one SDPA call with the head
    dimension doubled, or, for few query rows, through matmul scores merged by
    log-sum-exp; Mesa's middle chunks through one causal call.  Force those
    paths on CPU and check them against the reference."""
    method = case.split("-")[0] if case.startswith("mesa") else case
    n = 150
    m = get_method(method, train_length=64, **PREFILL_CASES[case]).resolve(
        n, prefill_length=n)
    q, k, v = _qkv(n, n, seed=3)
    want = _dense(m, q, k, v, 0, D ** -0.5)
    merged = _attend(m, q, k, v, 0)
    _force_gpu_paths(monkeypatch, few_rows)
    concat = _attend(m, q, k, v, 0)
    assert (merged.double() - want).abs().max().item() <= 1e-5
    assert (concat.double() - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("lk", [10, 64, 100])
def test_split_k_product_equals_matmul(lk):
    """The GPU's split-K ``p @ v`` (blocks of keys, summed) equals the plain product."""
    g = torch.Generator().manual_seed(lk)
    p, v = torch.rand(2, 3, 5, lk, generator=g), torch.randn(2, 3, lk, 8, generator=g)
    got = kernels._pv(p, v, split=True, block=16)
    assert torch.allclose(got, p @ v, atol=1e-5)
