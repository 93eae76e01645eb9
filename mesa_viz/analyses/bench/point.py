"""One measured point: prefills of one method at one length (time, peak memory net
of what was there before, SDPA backends), then greedy decode steps on the
prefill's cache.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from ...methods import Method, resolve
from ...models.parts import model_device, model_dtype, train_length_of
from ...runtime import PeakMemory, apply, presized_cache
from .machine import sdpa_choices, sync

__all__ = ["measure_point", "page_in", "random_ids", "dtype_name",
           "resolve_point", "out_cache", "is_oom", "prefill", "step"]


def dtype_name(model) -> str:
    return str(model_dtype(model)).replace("torch.", "")


def page_in(model) -> None:
    """Touch every weight once: checkpoints loaded from safetensors are memory
    mapped, and their pages would otherwise count in the first point's RSS."""
    import torch
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            if t.numel():
                t.reshape(-1)[:: max(1, 4096 // t.element_size())].sum()


def random_ids(vocab: int, length: int, seed: int = 0, device="cpu"):
    """``[1, length]`` random token ids (fixed seed)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, length), generator=g).to(device)


def resolve_point(method: str, params: dict, n: int, T: int) -> Method:
    """``method`` with ``params`` resolved for a prefill of ``n`` tokens
    against training length ``T`` (the bench's one way to resolve)."""
    return resolve(method, n, train_length=T, prefill_length=n, **params)


def _cache_kwarg(model) -> str:
    """``cache`` (transformers >= 5.2x) or the older ``past_key_values``."""
    import inspect
    return "cache" if "cache" in inspect.signature(model.forward).parameters \
        else "past_key_values"


def out_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def is_oom(exc: BaseException) -> bool:
    import torch
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text
                                              or "can't allocate memory" in text
                                              or "not enough memory" in text)


@dataclass(frozen=True)
class _Prefill:
    """One measured prefill: seconds, peak bytes and how they were measured,
    SDPA backends called (recorded on the first prefill only)."""

    seconds: float
    peak_bytes: int
    mem_method: str
    exact: bool
    sdpa: dict


def prefill(model, ids, dev: str, *, exact: bool, record_sdpa: bool):
    """``(output, _Prefill)`` of one timed ``model(ids, use_cache=True,
    logits_to_keep=1)`` under a peak-memory meter, on a cache presized for the
    prompt (``runtime.presized_cache``, every method alike: decode steps
    append in place instead of copying the cache)."""
    rec = sdpa_choices() if record_sdpa else contextlib.nullcontext({})
    with rec as counts, PeakMemory(dev, exact=exact) as pm:
        t0 = time.perf_counter()
        out = model(ids, use_cache=True, logits_to_keep=1,
                    **{_cache_kwarg(model): presized_cache(model, ids.shape[1])})
        sync(dev)
        dt = time.perf_counter() - t0
    how = pm.method + ("-exact" if exact else "")
    return out, _Prefill(dt, pm.peak_bytes, how, exact, dict(counts))


def _memory_of(prefills: list[_Prefill], cpu_exact: bool, warmup: int) -> tuple[list, str]:
    """``(peaks, mem_method)``: the exact untimed prefill's peak (CPU with
    ``exact_memory``), else the peaks of the timed prefills."""
    kept = [p for r, p in enumerate(prefills) if p.exact or (not cpu_exact and r >= warmup)]
    return [p.peak_bytes for p in kept], (kept[-1].mem_method if kept else None)


def step(model, cache, token, dev: str):
    """One timed greedy step on ``cache``: ``(seconds, next token, cache)``."""
    t0 = time.perf_counter()
    step = model(token, use_cache=True, **{_cache_kwarg(model): cache})
    sync(dev)
    return time.perf_counter() - t0, step.logits[:, -1:].argmax(-1), out_cache(step)


def _decode(model, cache, token, steps: int, dev: str) -> list[float]:
    """Seconds of each of ``steps`` greedy one-token steps on ``cache``."""
    seconds = []
    for _ in range(steps):
        dt, token, cache = step(model, cache, token, dev)
        seconds.append(dt)
    return seconds


def measure_point(model, method: str, length: int, *, repeats: int = 3,
                  decode_tokens: int = 8, warmup: int = 0, params: dict | None = None,
                  train_length: int | None = None, seed: int = 0,
                  record_sdpa: bool = True, exact_memory: bool = True,
                  piece_tokens: int | None = None) -> dict:
    """Measure one (method, length): prefill seconds (each timed repeat), peak
    memory net of what was allocated before, decode seconds per greedy step
    and the resolved parameters.  Raises on OOM.  ``piece_tokens``: the most
    tokens a forward of a prefill in pieces holds (``apply``'s; None: its
    default, :func:`mesa_viz.methods.default_piece_tokens`).

    CUDA: the peak is ``max_memory_allocated`` over the timed prefills.  CPU
    with ``exact_memory``: one untimed prefill first, measured inside
    :func:`mesa_viz.runtime.memory.exact_rss` (live tensors; that allocator setting
    slows large allocations, so nothing timed runs under it); it also serves
    as a warm-up.  CPU without it: the RSS peak over the timed prefills under
    the ordinary allocator (heap leftovers included).
    """
    import torch

    params = dict(params or {})
    dev = model_device(model)
    cpu_exact = exact_memory and not dev.startswith("cuda")
    warmup = max(warmup, 1) if cpu_exact else warmup
    T = train_length or train_length_of(model)
    ids = random_ids(model.config.vocab_size, length, seed, dev)
    out, prefills = None, []
    with torch.no_grad(), apply(model, method, train_length=T, piece_tokens=piece_tokens,
                                **params) as state:
        for r in range(warmup + repeats):
            out = None                                   # free the last prefill's cache first
            out, p = prefill(model, ids, dev, exact=cpu_exact and r == 0,
                             record_sdpa=record_sdpa and r == 0)
            prefills.append(p)
        resolved = state.resolved or resolve_point(method, params, length, T)
        cache, token = out_cache(out), out.logits[:, -1:].argmax(-1)
        out = None
        steps = _decode(model, cache, token, decode_tokens, dev)
        del cache
    peaks, how = _memory_of(prefills, cpu_exact, warmup)
    return {"prefill_s_all": [p.seconds for p in prefills[warmup:]], "peak_mem_all": peaks,
            "decode_s_all": steps, "resolved": resolved, "train_length": T,
            "sdpa_backends": prefills[0].sdpa if prefills else {}, "mem_method": how}
