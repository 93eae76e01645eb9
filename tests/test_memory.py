"""Memory estimate: its growth by method, the fit check, the peak meter, and the
calibration measured on this project's CPU machine (SmolLM2-135M, fp32)."""

import pytest
import torch

import mesa_viz.memory as memory
from mesa_viz.memory import (GiB, LengthTooLong, ModelDims, PeakMemory, available_bytes,
                             check_fits, estimate_peak_bytes, model_dims)

SMOL = ModelDims(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64,
                 vocab=49152, max_positions=8192)

#: (backend, method, length, train_length, measured peak RSS bytes net of weights) of one
#: ``model(ids, use_cache=True, logits_to_keep=1)`` of SmolLM2-135M-Instruct (fp32, 1 thread)
#: on the 2-core machine, PeakMemory (VmHWM reset through clear_refs), kernels.py of
#: 2026-11-25 ~23:56.  train_length 2048 makes Mesa chunked at 4k and 8k.
CALIBRATION = [
]


def _ratio(f, a, b):
    return f(b) / f(a)


def test_model_dims_of_a_config(tiny_llama):
    d = model_dims(tiny_llama.config)
    assert (d.layers, d.hidden, d.heads, d.kv_heads, d.head_dim) == (2, 64, 4, 2, 16)
    assert d.gated_mlp and d.vocab == 512 and model_dims(d) is d


def test_origin_eager_is_quadratic_mesa_linear():
    eager = lambda n: estimate_peak_bytes(SMOL, "origin", n, backend="eager")  # noqa: E731
    assert 3.5 < _ratio(eager, 16384, 32768) <= 4.0
    assert 3.5 < _ratio(eager, 32768, 65536) <= 4.0
    mesa = lambda n: estimate_peak_bytes(SMOL, "mesa", n)                      # noqa: E731
    for a in (16384, 32768, 65536):
        assert 1.8 < _ratio(mesa, a, 2 * a) < 2.2
    sdpa = lambda n: estimate_peak_bytes(SMOL, "origin", n)                    # noqa: E731
    assert 1.8 < _ratio(sdpa, 32768, 65536) < 2.2          # fused causal kernel: O(n)
    assert eager(32768) > 10 * sdpa(32768)
    # the blocked near/far kernels stay linear too (score blocks are bounded)
    rerope = lambda n: estimate_peak_bytes(SMOL, "rerope", n)                  # noqa: E731
    assert 1.8 < _ratio(rerope, 65536, 131072) < 2.2


def test_cache_term_is_exact_on_cuda():
    d = ModelDims(layers=3, hidden=16, intermediate=32, heads=4, kv_heads=2, head_dim=4,
                  vocab=50, max_positions=64)
    a = estimate_peak_bytes(d, "origin", 32, device="cuda", dtype_bytes=2)
    b = estimate_peak_bytes(d, "origin", 32, device="cuda", dtype_bytes=2, decode_tokens=5)
    assert b - a == 2 * 3 * 2 * 4 * 5 * 2
    assert estimate_peak_bytes(d, "origin", 32, batch=3) == 3 * estimate_peak_bytes(d, "origin", 32)
    full = estimate_peak_bytes(d, "origin", 32, logits_kept=None)
    assert full - estimate_peak_bytes(d, "origin", 32) == 31 * 50 * 4


def test_estimate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        estimate_peak_bytes(SMOL, "origin", 10, backend="flex")
    with pytest.raises(ValueError, match="unknown method"):
        estimate_peak_bytes(SMOL, "nope", 10)


def test_check_fits_raises_with_the_numbers(tiny_llama, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 2 * GiB)
    n = 100_000
    with pytest.raises(LengthTooLong) as info:
        check_fits(tiny_llama, "origin", n, backend="eager")
    err = info.value
    assert isinstance(err, MemoryError)
    assert err.seq_len == n and err.available == 2 * GiB and err.estimate > 1.8 * GiB
    msg = str(err)
    assert str(n) in msg and f"{err.estimate / GiB:.2f} GiB" in msg and "2.00 GiB" in msg
    # linear methods fit where eager origin does not
    est = check_fits(tiny_llama, "mesa", n)
    assert 0 < est < 1.8 * GiB
    assert est == estimate_peak_bytes(tiny_llama.config, "mesa", n, train_length=4096)


def test_available_bytes_cpu():
    assert available_bytes() > 2**20 and available_bytes("cpu") > 2**20
    with pytest.raises(ValueError):
        available_bytes("tpu")


def test_peak_memory_sees_a_temporary_allocation():
    with PeakMemory("cpu") as pm:
        x = torch.ones(64 * 2**20 // 4)
        x.add_(1)
        del x
    assert pm.method in ("hwm", "sampled")
    assert pm.peak_bytes >= 60 * 2**20


@pytest.mark.parametrize("backend,method,n,T,measured", CALIBRATION)
def test_calibration_within_30_percent(backend, method, n, T, measured):
    est = estimate_peak_bytes(SMOL, method, n, backend=backend, train_length=T)
    assert 0.7 < est / measured < 1.3, (est / GiB, measured / GiB)
