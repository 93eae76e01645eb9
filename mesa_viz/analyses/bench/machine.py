"""What the machine can do: its dense matmul rate (square products and the model's
own linear shapes), its memory bandwidth, which SDPA kernel a call gets, and the
``kind: machine`` row.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

__all__ = ["device_name", "host", "matmul_rates", "matmul_gflops", "memory_gbps",
           "sdpa_choices", "machine_row", "CALIBRATION_SIZES", "sync"]

log = logging.getLogger(__name__)


def sync(device):
    if str(device).startswith("cuda"):
        import torch
        torch.cuda.synchronize(device)


#: Square matmul sizes the calibration tries (CPU, CUDA): the best rate counts.
CALIBRATION_SIZES = {"cpu": (1024, 2048, 4096), "cuda": (4096, 8192, 16384)}


def matmul_rates(device="cpu", dtype="float32", size: int | None = None, repeats: int = 3,
                 shapes=(), min_seconds: float = 0.2) -> dict:
    """GFLOP/s of dense matmuls ``[m, k] x [k, n]``: square ``size`` (default
    :data:`CALIBRATION_SIZES`) and each ``(m, k, n)`` of ``shapes`` (a model's
    linear layers), each the best of at least ``repeats`` timed products after
    a warm-up, repeated for at least ``min_seconds``.  Keys ``"m x k x n"``."""
    import torch
    dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    squares = (size,) if size else CALIBRATION_SIZES[kind]
    g = torch.Generator(device="cpu").manual_seed(0)
    rates = {}
    with torch.no_grad():
        for m, k, n in [(x, x, x) for x in squares] + [tuple(int(v) for v in s) for s in shapes]:
            a = torch.randn(m, k, generator=g).to(device=device, dtype=dt)
            b = torch.randn(k, n, generator=g).to(device=device, dtype=dt)
            torch.matmul(a, b)
            sync(device)
            best, spent, runs = math.inf, 0.0, 0
            while runs < repeats or spent < min_seconds:
                t0 = time.perf_counter()
                torch.matmul(a, b)
                sync(device)
                dt_run = time.perf_counter() - t0
                best, spent, runs = min(best, dt_run), spent + dt_run, runs + 1
            rates[f"{m} x {k} x {n}"] = 2 * m * k * n / best / 1e9
    return rates


def matmul_gflops(device="cpu", dtype="float32", size: int | None = None,
                  repeats: int = 3, shapes=()) -> float:
    """The machine's dense matmul rate: the best GFLOP/s of :func:`matmul_rates`
    (squares of several sizes and the given shapes).  A single size under-
    measures where another size or shape runs faster (CPU: a 2048 product
    alone measured below what the model's own products reached, so useful
    rates read above 100 %)."""
    return max(matmul_rates(device, dtype, size, repeats, shapes).values())


def memory_gbps(device="cpu", dtype="float32", mib: int | None = None,
                repeats: int = 5) -> float:
    """The machine's memory bandwidth: best GB/s of copying a ``mib`` MiB tensor
    (read and write counted; default 256 MiB on CPU, 2 GiB on CUDA)."""
    import torch
    dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    mib = mib or (2048 if str(device).startswith("cuda") else 256)
    src = torch.ones(mib * 2**20 // torch.empty(0, dtype=dt).element_size(), dtype=dt,
                     device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best / 1e9


@contextlib.contextmanager
def sdpa_choices():
    """Count, per SDPA backend name, the ``scaled_dot_product_attention`` calls
    made inside the block (the backend torch's dispatcher picks for each call's
    shapes, mask and enabled backends: ``torch._fused_sdp_choice``).  Yields the
    dict it fills.  Only calls through ``torch.nn.functional`` are seen: aten
    ops called directly (the kernels' CPU log-sum-exp path) are not counted."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend
    names = {int(v.value): k for k, v in SDPBackend.__members__.items()}
    counts: dict[str, int] = {}
    orig = F.scaled_dot_product_attention

    def wrapped(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                scale=None, enable_gqa=False, **kw):
        try:
            c = torch._fused_sdp_choice(query, key, value, attn_mask, dropout_p, is_causal,
                                        scale=scale, enable_gqa=enable_gqa)
            name = names.get(int(c), str(c))
        except Exception:                      # noqa: BLE001 - diagnostics only
            name = "unknown"
        counts[name] = counts.get(name, 0) + 1
        return orig(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                    is_causal=is_causal, scale=scale, enable_gqa=enable_gqa, **kw)

    F.scaled_dot_product_attention = wrapped
    try:
        yield counts
    finally:
        F.scaled_dot_product_attention = orig


def machine_row(device: str, dtype: str, matmul_size: int | None = None,
                extra: dict | None = None, shapes=()) -> dict:
    """The ``kind: machine`` row: dense matmul rate (the best of
    :func:`matmul_rates`, each in ``matmul_rates``), memory bandwidth
    (:func:`memory_gbps`), threads, device name."""
    import torch
    rates = matmul_rates(device, dtype, matmul_size, shapes=shapes)
    row = {"kind": "machine", "matmul_gflops": max(rates.values()), "matmul_rates": rates,
           "memory_gbps": memory_gbps(device, dtype, 16 if matmul_size else None),
           "device": device, "dtype": dtype, "threads": torch.get_num_threads(),
           "torch": torch.__version__,
           "device_name": device_name(device),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {})}
    log.info("machine: %.1f GFLOP/s dense %s matmul on %s (%d threads)",
             row["matmul_gflops"], dtype, device, row["threads"])
    return row


def device_name(device: str) -> str:
    """The card's name on ``cuda``, the CPU's model name otherwise."""
    import torch
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else _cpu_name()


def host(device: str) -> dict:
    """What a timed row ran on: ``device_name``, ``threads``, the torch and
    transformers versions (cheap: no measurement, unlike :func:`machine_row`)."""
    import torch
    import transformers
    return {"device_name": device_name(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__}


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform
    return platform.processor() or "cpu"
