"""Memory estimate: its growth by method, the fit check, the peak meter, and the
estimate against a measurement of real prefills (a SmolLM2-shaped tiny model)."""

import ast
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mesa_viz.runtime.memory as memory
from mesa_viz.runtime.memory import (GiB, LengthTooLong, ModelDims, PeakMemory, available_bytes,
                                     check_fits, estimate_peak_bytes, exact_rss, model_dims)


SMOL = ModelDims(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64,
                 vocab=49152, max_positions=8192)
#: SmolLM2-135M's layer shape (the estimate's calibration model) in 2 random layers.
SMOL_LAYERS = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                   num_key_value_heads=3, head_dim=64)


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


def test_train_length_as_a_method_parameter_is_the_argument():
    """``params={"train_length": T}`` (how the analyses pass a method's parameters) names T as
    ``train_length=T`` does; it once raised 'multiple values for keyword argument'."""
    by_param = estimate_peak_bytes(SMOL, "mesa", 16384, params={"train_length": 4096})
    assert by_param == estimate_peak_bytes(SMOL, "mesa", 16384, train_length=4096)
    assert by_param != estimate_peak_bytes(SMOL, "mesa", 16384)


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


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mapped_bytes(nbytes: int) -> int:
    """Bytes glibc serves from their own mapping (``mallinfo2().hblkhd``) for one
    live tensor of ``nbytes``: its size above the mmap threshold, 0 below."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    before = libc.mallinfo2().hblkhd
    x = torch.ones(nbytes // 4)
    mapped = libc.mallinfo2().hblkhd - before
    del x
    return mapped


def _threshold_effects():
    """Mapped bytes of tensors inside :func:`exact_rss` (2 MiB, 512 KiB) and
    after it (8 MiB, 40 MiB), and whether it applied."""
    with exact_rss() as ok:
        inside = (_mapped_bytes(2 * 2**20), _mapped_bytes(2**19))
    return ok, inside, (_mapped_bytes(8 * 2**20), _mapped_bytes(40 * 2**20))


def test_exact_rss_applies_and_restores():
    """Inside: allocations of 1 MiB (``MMAP_THRESHOLD``) and more get their own
    mapping; after: only those of 32 MiB (``MMAP_THRESHOLD_AFTER``) and more.
    Run in a fresh process: a heap that already holds large free chunks serves
    a request from them, whatever the threshold."""
    here = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here.parent), str(here)]))
    code = "import test_memory as t; print(t._threshold_effects())"
    out = subprocess.run([sys.executable, "-c", code], cwd=here, env=env, capture_output=True,
                         text=True, check=True).stdout
    ok, (big, small), (below, above) = ast.literal_eval(out.strip().splitlines()[-1])
    assert ok is True
    assert big >= 2 * 2**20 and small == 0
    assert below == 0 and above >= 40 * 2**20


def test_available_bytes_cpu():
    assert available_bytes() > 2**20 and available_bytes("cpu") > 2**20
    from mesa_viz.runtime.memory import _rss
    assert 0 < available_bytes(cap=_rss() + 2**30) <= 2**30
    assert available_bytes("cpu", cap=1) == 0
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


_CHILD = """
import json, sys, torch
import mesa_viz as mv
from mesa_viz.runtime.memory import PeakMemory, estimate_peak_bytes
from mesa_viz.models import tiny_model
backend, method, n, T, warm_up, layers = json.loads(sys.argv[1])
model = tiny_model("llama", attn_implementation=backend, **layers)[0]
ids = torch.randint(0, 500, (1, n), generator=torch.Generator().manual_seed(0))
peaks = []
with torch.no_grad(), mv.apply(model, method, train_length=T):
    model(ids[:, :warm_up or n], use_cache=True, logits_to_keep=1)
    for _ in range(3):
        with PeakMemory("cpu", exact=True) as pm:
            model(ids, use_cache=True, logits_to_keep=1)
        peaks.append(pm.peak_bytes)
est = estimate_peak_bytes(model.config, method, n, train_length=T, fragmentation=0.0,
                          backend=backend)
print(json.dumps([min(peaks), est]))
"""


def _measured(backend, method, n, T, warm_up=None):
    """Peak of one ``model(ids, use_cache=True, logits_to_keep=1)`` of ``n``
    tokens under ``method`` on SMOL_LAYERS, measured as ``mesa-viz bench`` does
    (after a warm-up of ``warm_up`` tokens, default the same length), and the
    estimate for it.  Measured in a fresh process, the least of three: the
    high-water mark is the process's, and inside the test session other
    threads (tqdm's monitor, earlier tests' pools) added up to 70 MB to it."""
    arg = json.dumps([backend, method, n, T, warm_up, SMOL_LAYERS])
    out = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True,
                         text=True, timeout=600, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_mesa_prefill_in_pieces_grows_only_the_cache():
    """Mesa past train_length runs its prefill piece by piece through every
    layer (apply's pieces of T/2 tokens): its peak is the KV cache plus the
    activations of one piece, far below origin's (whose activations span the
    prompt); the estimate follows both."""
    n, T = 4096, 512
    origin, est_origin = _measured("sdpa", "origin", n, T)
    mesa, est_mesa = _measured("sdpa", "mesa", n, T)
    cache = 2 * 2 * 3 * 64 * 4 * n
    assert mesa < 0.4 * origin, (mesa / 2**20, origin / 2**20)
    assert mesa - cache < 0.25 * (origin - cache)
    for est, got in [(est_origin, origin), (est_mesa, mesa)]:
        assert 0.6 < est / got < 1.3, (est / 2**20, got / 2**20)


def test_mesa_estimate_at_32k_is_the_cache_and_one_piece():
    """On SmolLM2's shape the estimate of Mesa's peak at 32k tokens is at most
    0.7 of origin's (the issue's target for the measured one) and within 15%
    of the KV cache alone."""
    mesa = estimate_peak_bytes(SMOL, "mesa", 32768, fragmentation=0.0)
    origin = estimate_peak_bytes(SMOL, "origin", 32768, fragmentation=0.0)
    cache = 2 * 30 * 3 * 64 * 4 * 32768
    assert mesa <= 0.7 * origin and cache < mesa < 1.15 * cache
    small = estimate_peak_bytes(SMOL, "mesa", 32768, fragmentation=0.0, piece_tokens=1024)
    assert small < mesa


def test_default_pieces_are_larger_on_a_gpu():
    """Unless told, a piece holds half the training length, and on a GPU at
    least GPU_PIECE_TOKENS (launch-bound below); the estimate follows the
    device's default."""
    from mesa_viz.methods import GPU_PIECE_TOKENS, default_piece_tokens
    assert default_piece_tokens(8192) == 4096 and default_piece_tokens(1) == 1
    assert default_piece_tokens(8192, on_gpu=True) == GPU_PIECE_TOKENS == 16384
    assert default_piece_tokens(65536, on_gpu=True) == 32768
    kw = dict(fragmentation=0.0, train_length=8192, dtype_bytes=2)
    gpu = estimate_peak_bytes(SMOL, "mesa", 131072, device="cuda", **kw)
    assert gpu == estimate_peak_bytes(SMOL, "mesa", 131072, device="cuda", piece_tokens=16384,
                                      **kw)
    assert gpu > estimate_peak_bytes(SMOL, "mesa", 131072, device="cuda", piece_tokens=4096,
                                     **kw)
    assert estimate_peak_bytes(SMOL, "mesa", 131072, **kw) == estimate_peak_bytes(
        SMOL, "mesa", 131072, piece_tokens=4096, **kw)


@pytest.mark.parametrize("backend,method", [
    ("sdpa", "origin"), ("sdpa", "rerope"), ("sdpa", "stair"), ("eager", "origin")])
def test_estimate_matches_a_measured_prefill(backend, method):
    """One ``model(ids, use_cache=True, logits_to_keep=1)`` of 1024 tokens past
    train_length=256, measured as ``mesa-viz bench`` does (PeakMemory inside
    exact_rss: the live tensors), against the estimate for the same config:
    within -40%/+30%.  (On the 30-layer model the grid is within 30%, module doc
    of memory.py; with two layers the cache, which the estimate gets exactly, is
    a small share, and what glibc's per-thread arenas keep varies by ~20%.)  An
    ``[n, n]`` score matrix the estimate does not know of, or one it expects
    that is not there, moves the ratio out of range."""
    peak, est = _measured(backend, method, 1024, 256, warm_up=256)
    assert 0.6 < est / peak < 1.3, (est / 2**20, peak / 2**20)
