"""Memory estimate: its growth by method, the fit check, the peak meter, and the
calibration measured on this project's CPU machine (SmolLM2-135M, fp32)."""

import pytest
import torch

import mesa_viz.memory as memory
from mesa_viz.memory import (GiB, LengthTooLong, ModelDims, PeakMemory, available_bytes,
                             check_fits, estimate_peak_bytes, exact_rss, model_dims)

pytestmark = pytest.mark.tiny

SMOL = ModelDims(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64,
                 vocab=49152, max_positions=8192)

#: (backend, method, length, train_length, measured peak RSS bytes net of weights) of one
#: ``model(ids, use_cache=True, logits_to_keep=1)`` of SmolLM2-135M-Instruct (fp32, 1 thread)
#: on the project's 2-core CPU machine: PeakMemory (VmHWM reset through clear_refs) with
#: the mmap threshold fixed at 1 MiB (``exact_rss``), weights paged in, points in this
#: order in one process per backend;
#: mesa_viz/kernels.py as of 2026-11-26 00:19 (the chunked Mesa and eager rows) and as of
#: commit f496f10 (the 35 sdpa rows: the 7-method grid of ``mesa-viz bench``, 2 threads).
#: train_length 2048 makes Mesa chunked.
#: Re-measure with ``mesa-viz bench`` (its rows carry both numbers) after kernel changes.
CALIBRATION = [
    # mesa-viz bench, 2026-11-26, 2 threads (benchmarks/cpu-grid/grid.jsonl)
    ("sdpa", "origin", 2048, None, 155385856),
    ("sdpa", "mesa", 2048, None, 157368320),
    ("sdpa", "rerope", 2048, None, 162480128),
    ("sdpa", "leaky-rerope", 2048, None, 193495040),
    ("sdpa", "dynamic-ntk", 2048, None, 165494784),
    ("sdpa", "streaming-llm", 2048, None, 178343936),
    ("sdpa", "lm-infinite", 2048, None, 212750336),
    ("sdpa", "origin", 4096, None, 308871168),
    ("sdpa", "mesa", 4096, None, 309854208),
    ("sdpa", "rerope", 4096, None, 355414016),
    ("sdpa", "leaky-rerope", 4096, None, 351858688),
    ("sdpa", "dynamic-ntk", 4096, None, 307757056),
    ("sdpa", "streaming-llm", 4096, None, 359694336),
    ("sdpa", "lm-infinite", 4096, None, 358133760),
    ("sdpa", "origin", 8192, None, 627961856),
    ("sdpa", "mesa", 8192, None, 633212928),
    ("sdpa", "rerope", 8192, None, 767913984),
    ("sdpa", "leaky-rerope", 8192, None, 746979328),
    ("sdpa", "dynamic-ntk", 8192, None, 668700672),
    ("sdpa", "streaming-llm", 8192, None, 721846272),
    ("sdpa", "lm-infinite", 8192, None, 734416896),
    ("sdpa", "origin", 16384, None, 1355759616),
    ("sdpa", "mesa", 16384, None, 1420214272),
    ("sdpa", "rerope", 16384, None, 1382244352),
    ("sdpa", "leaky-rerope", 16384, None, 1369554944),
    ("sdpa", "dynamic-ntk", 16384, None, 1311784960),
    ("sdpa", "streaming-llm", 16384, None, 1407459328),
    ("sdpa", "lm-infinite", 16384, None, 1394814976),
    ("sdpa", "origin", 32768, None, 2541301760),
    ("sdpa", "mesa", 32768, None, 2643316736),
    ("sdpa", "rerope", 32768, None, 2639863808),
    ("sdpa", "leaky-rerope", 32768, None, 2633957376),
    ("sdpa", "dynamic-ntk", 32768, None, 2990411776),
    ("sdpa", "streaming-llm", 32768, None, 2652860416),
    ("sdpa", "lm-infinite", 32768, None, 2652938240),
    ("sdpa", "mesa", 4096, 2048, 321826816),
    ("sdpa", "mesa", 8192, 2048, 626081792),
    ("eager", "origin", 2048, None, 452108288),
    ("eager", "origin", 4096, None, 1527656448),
    ("eager", "rerope", 4096, None, 512253952),
    ("eager", "mesa", 8192, 2048, 960909312),
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


def test_exact_rss_applies_and_restores():
    with exact_rss() as ok:
        assert ok is True


def test_available_bytes_cpu():
    assert available_bytes() > 2**20 and available_bytes("cpu") > 2**20
    with pytest.raises(ValueError):
        available_bytes("tpu")


@pytest.mark.parametrize("exact", [False, True])
def test_peak_memory_sees_a_temporary_allocation(exact):
    with PeakMemory("cpu", exact=exact) as pm:
        x = torch.ones(64 * 2**20 // 4)
        x.add_(1)
        del x
    assert pm.method in ("hwm", "sampled")
    assert 60 * 2**20 <= pm.peak_bytes < 200 * 2**20


def test_exact_rss_measures_live_tensors_reproducibly():
    def once():
        with PeakMemory("cpu", exact=True) as pm:
            xs = [torch.ones(2**20 // 4 * 3) for _ in range(20)]      # 20 x 3 MiB alive
            del xs
        return pm.peak_bytes
    a, b = once(), once()
    assert abs(a - 60 * 2**20) < 8 * 2**20 and abs(a - b) < 4 * 2**20


@pytest.mark.parametrize("backend,method,n,T,measured", CALIBRATION)
def test_calibration_within_30_percent(backend, method, n, T, measured):
    est = estimate_peak_bytes(SMOL, method, n, backend=backend, train_length=T,
                              fragmentation=0.0)
    assert 0.7 < est / measured < 1.3, (est / GiB, measured / GiB)
