"""Attention logit softcapping in every kernel path, and the model's own
sliding-window attention, on random tensors against the dense complex-RoPE
reference (``tests/kernel_cases.py``)."""

from __future__ import annotations

import math

import pytest
import torch

from mesa_viz import kernels
from mesa_viz.kernels import dispatch
from mesa_viz.methods import get_method

from kernel_cases import D, H, KVH, dense, qkv, rotary_inv_freq
from reference import dense_scores

CAP = 1.0
#: One case per kernel shape: Mesa's chunks and stair, near/far rules, chunks,
#: sink sets, Origin (and a frequency rule through it).
CASES = {
    "mesa": dict(first_chunk=5, chunk_size=16, last_chunk=16, stair_start=9, stair_width=4),
    "stair": dict(stair_start=9, stair_width=4),
    "rerope": dict(window=20),
    "self-extend": dict(group_size=3, window=20),
    "dual-chunk": dict(chunk_size=40, local_window=16),
    "streaming-llm": dict(sink_tokens=4),
    "origin": {},
    "yarn": {},
}


def _attend(m, q, k, v, i0, backend):
    rope = kernels.Rope(rotary_inv_freq().float())
    return kernels.attend(m, q, k, v, i0, rope, D ** -0.5, backend)


@pytest.mark.parametrize("method", sorted(CASES))
def test_softcap_is_applied_in_every_kernel_path(method):
    """Prefill, a continued block (methods that allow one) and decode steps
    with the logits capped equal the dense reference capped the same way; the
    cap changes the output far past the tolerance, so ignoring it would fail.
    A softcapped backend is ``"eager"`` to every branch, on CPU and CUDA alike
    (``sets.uses_cpu_paths``), so these are the paths a GPU runs too."""
    n, prefill = 150, 120
    backend = kernels.with_softcap("sdpa", CAP)
    for i0, lq in [(0, prefill), (prefill, 1), (prefill + 7, 1), (90, n - 90)]:
        if i0 == 90 and method in ("mesa", "stair"):
            continue                                    # prefill-plan methods: no continued block
        length = i0 + lq
        m = get_method(method, train_length=64, **CASES[method]).resolve(
            length, prefill_length=min(length, prefill))
        q, k, v = qkv(lq, length, seed=length)
        q = q * 3.0                                     # logits well past the cap
        got = _attend(m, q, k, v, i0, backend).double()
        want = dense(m, q, k, v, i0, D ** -0.5, softcap=CAP)
        assert (got - want).abs().max().item() <= 1e-5, (i0, lq)
        uncapped = dense(m, q, k, v, i0, D ** -0.5)
        assert (uncapped - want).abs().max().item() > 1e-2, (i0, lq)


def test_softcap_never_takes_the_triton_launch(monkeypatch):
    """A softcapped backend keeps the explicit-score kernels even where the
    fused launch would serve."""
    monkeypatch.setattr(dispatch, "use_fused", lambda q, rope: True)

    def fused(*args):
        raise AssertionError("the Triton launch took a softcapped layer")
    monkeypatch.setattr(dispatch, "_fused", fused)
    m = get_method("rerope", train_length=64, window=20).resolve(100)
    q, k, v = qkv(100, 100, seed=1)
    got = _attend(m, q, k, v, 0, kernels.with_softcap("flash_attention_2", CAP)).double()
    assert (got - dense(m, q, k, v, 0, D ** -0.5, softcap=CAP)).abs().max().item() <= 1e-5


def test_softcap_must_be_positive():
    assert kernels.with_softcap("sdpa", None) == "sdpa"
    assert kernels.with_softcap("sdpa", 30.0) == "eager"
    with pytest.raises(ValueError, match=r"softcap 0.0: allowed a positive number or None"):
        kernels.with_softcap("sdpa", 0.0)


def _window_reference(q, k, v, i0, window, softcap=None):
    """Sliding-window attention at true positions, keys ending at the last query."""
    lq, lk = q.shape[2], k.shape[2]
    i = torch.arange(i0, i0 + lq, dtype=torch.float64)[:, None]
    j = torch.arange(i0 + lq - lk, i0 + lq, dtype=torch.float64)[None, :]
    rep = H // KVH
    kk, vv = k[0].repeat_interleave(rep, 0).double(), v[0].repeat_interleave(rep, 0).double()
    s = dense_scores(q[0].double(), kk, i - j, rotary_inv_freq()) * D ** -0.5
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~((j <= i) & (i - j < window)), -math.inf)
    return (torch.softmax(s, -1) @ vv)[None]


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("softcap", [None, CAP])
def test_own_window_is_sliding_window_attention_at_true_positions(backend, softcap):
    """A prefill longer than the window, a continued block, and a decode step
    against only the cache's last keys (a sliding-window cache layer)."""
    rope = kernels.Rope(rotary_inv_freq().float())
    W = 24
    for i0, lq, lk in [(0, 100, 100), (60, 40, 100), (99, 1, W), (99, 1, 100)]:
        q, k, v = qkv(lq, lk, seed=lq + lk)
        got = kernels.own_window(q, k, v, i0, rope, D ** -0.5, W,
                                 kernels.with_softcap(backend, softcap))
        want = _window_reference(q, k, v, i0, W, softcap)
        assert (got.double() - want).abs().max().item() <= 1e-5, (i0, lq, lk)


def test_own_window_refuses_keys_that_miss_the_window():
    rope = kernels.Rope(rotary_inv_freq().float())
    q, k, v = qkv(1, 10, seed=0)
    with pytest.raises(ValueError, match=r"10 keys ending at position 99 do not hold the window "
                                         r"of 24 keys"):
        kernels.own_window(q, k, v, 99, rope, D ** -0.5, 24, "sdpa")


class _Within:
    """``m`` restricted to a window: key ``j`` visible to query ``i`` where
    ``m`` shows it and ``i - j < window`` (the reference's layout)."""

    def __init__(self, m, window):
        self.m, self.window = m, window

    def relative(self, i, j):
        rel, vis = self.m.relative(i, j)
        return rel, vis & (i - j < self.window)

    def query_scale(self, rows):
        return self.m.query_scale(rows)

    def key_scale(self, cols):
        return self.m.key_scale(cols)


@pytest.mark.parametrize("method", sorted(CASES))
def test_method_window_is_the_method_within_a_window_above_T(method):
    """A window ``W = 90`` above ``T = 64``: a prefill and decode steps
    (against every key, and against only the cache's last ``W``)
    equal the dense reference of the method's layout cut at ``i - j < W``
    (softcapped too); the cut changes the output, so ignoring it would fail."""
    rope, W = kernels.Rope(rotary_inv_freq().float()), 90
    for i0, lq, lk, softcap in [(0, 120, 120, None), (120, 1, 121, None), (120, 1, W, CAP),
                                (149, 1, W, None), (0, 120, 120, CAP)]:
        m = get_method(method, train_length=64, **CASES[method]).resolve(
            i0 + lq, prefill_length=min(i0 + lq, 120))
        q, k, v = qkv(lq, i0 + lq, seed=i0 + lq)
        got = kernels.method_window(m, q, k[:, :, -lk:], v[:, :, -lk:], i0, rope, D ** -0.5, W,
                                    kernels.with_softcap("sdpa", softcap)).double()
        want = dense(_Within(m, W), q, k, v, i0, D ** -0.5, softcap=softcap)
        assert (got - want).abs().max().item() <= 1e-5, (i0, lq, lk)
        whole = dense(m, q, k, v, i0, D ** -0.5, softcap=softcap)
        assert (whole - want).abs().max().item() > 1e-3, (i0, lq, lk)
