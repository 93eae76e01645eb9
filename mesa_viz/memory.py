"""Memory: what is available, what one prefill will need, and what it took.

* :func:`available_bytes` — free memory on a device (CPU: ``MemAvailable``;
  CUDA: ``torch.cuda.mem_get_info``).
* :func:`estimate_peak_bytes` — an analytic estimate of the peak *activation*
  memory (net of the weights) of one prefill under a method.
* :func:`check_fits` — raise :class:`LengthTooLong` before running a length that
  will not fit.
* :class:`PeakMemory` — measure the peak of a block of code net of what was
  allocated before it (CPU: process RSS high-water mark, reset through
  ``/proc/self/clear_refs``; CUDA: ``max_memory_allocated``).

Calibration (CPU, this project's 2-core/24 GiB machine, torch 2.13, fp32,
SmolLM2-135M shapes: 30 layers, hidden 576, MLP 1536, 9 heads / 3 KV heads of
64): the estimate was compared with the RSS high-water mark of one
``model(ids, use_cache=True, logits_to_keep=1)`` at 2k, 4k and 8k tokens for
origin (sdpa and eager), mesa, rerope, leaky-rerope, dynamic-ntk,
streaming-llm and lm-infinite, and chunked Mesa (``train_length=2048``); every
point is within 30% (most within 15%).  The table is in
``tests/test_memory.py`` (``CALIBRATION``).  On CPU the measured RSS carries
glibc heap fragmentation that grows with the KV cache (the cache tensors of
30 layers are allocated between the layers' transients, so freed transients
cannot be trimmed); ``CPU_CACHE_OVERHEAD`` models that.  CUDA numbers
(``max_memory_allocated``) have no such term; the CUDA side of the formula
follows the same tensor count but has not been calibrated here (no GPU).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import threading
import time
from dataclasses import dataclass

from .methods import (DynamicNTK, LeakyReRoPE, LMInfinite, Mesa, Method, Origin, ReRoPE,
                      StreamingLLM, get_method)

__all__ = ["available_bytes", "estimate_peak_bytes", "check_fits", "LengthTooLong",
           "PeakMemory", "ModelDims", "model_dims", "GiB"]

log = logging.getLogger(__name__)

GiB = 2 ** 30

#: Extra RSS per byte of KV cache on CPU (glibc fragmentation, see module doc).
CPU_CACHE_OVERHEAD = 0.6
#: Per-token transient of one decoder layer, in units of (MLP width, hidden
#: width, attention width = heads * head_dim) elements of the model dtype.
MLP_TRANSIENTS, HIDDEN_TRANSIENTS, ATTN_TRANSIENTS = 4, 6, 3
#: Per-token O(n) copies made by the blocked kernels (rotated keys, near/far
#: key concatenation with zero halves, value concatenation), in KV widths.
KERNEL_KV_COPIES = 10


class LengthTooLong(MemoryError):
    """A sequence length whose estimated peak memory exceeds what is available."""

    def __init__(self, message: str, *, seq_len: int, estimate: int, available: int):
        super().__init__(message)
        self.seq_len, self.estimate, self.available = seq_len, estimate, available


# -- what is there ----------------------------------------------------------------

def _meminfo(key: str = "MemAvailable") -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/meminfo has no {key}")


def available_bytes(device=None) -> int:
    """Bytes free for new tensors on ``device`` (default CPU).

    CPU: ``MemAvailable`` from ``/proc/meminfo`` (falls back to
    ``os.sysconf`` free pages off Linux).  CUDA: the free bytes of
    ``torch.cuda.mem_get_info`` plus what PyTorch's caching allocator holds
    reserved but unused (it hands that out before asking the driver).
    """
    dev = "cpu" if device is None else str(device)
    if dev.startswith("cuda"):
        import torch
        d = torch.device(dev)
        free, _total = torch.cuda.mem_get_info(d)
        cached = torch.cuda.memory_reserved(d) - torch.cuda.memory_allocated(d)
        return int(free + max(0, cached))
    if dev != "cpu":
        raise ValueError(f"device {device!r}: allowed 'cpu' or 'cuda[:N]'")
    try:
        return _meminfo("MemAvailable")
    except (OSError, RuntimeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# -- the model's shapes -------------------------------------------------------------

@dataclass(frozen=True)
class ModelDims:
    """The shapes the memory and FLOP formulas need (from a transformers config)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    gated_mlp: bool = True           # gate/up/down (Llama) vs up/down (GPT-NeoX, GPT-2)
    max_positions: int | None = None


def _get(cfg, *names, default=None):
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def model_dims(config) -> ModelDims:
    """:class:`ModelDims` of a transformers config (Llama/Qwen/Mistral/Phi-3,
    GPT-NeoX and GPT-2 naming), or a ModelDims passed through."""
    if isinstance(config, ModelDims):
        return config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    hidden = _get(config, "hidden_size", "n_embd")
    layers = _get(config, "num_hidden_layers", "n_layer")
    heads = _get(config, "num_attention_heads", "n_head")
    if not (hidden and layers and heads):
        raise ValueError(f"config {type(config).__name__} lacks hidden size, layer or head "
                         "count: pass a ModelDims")
    kv = _get(config, "num_key_value_heads", default=heads)
    head_dim = _get(config, "head_dim", default=hidden // heads)
    inter = _get(config, "intermediate_size", "n_inner", default=4 * hidden)
    mtype = getattr(config, "model_type", "llama")
    gated = mtype not in ("gpt_neox", "gpt2", "gptj", "gpt_neo", "phi", "falcon")
    return ModelDims(layers=int(layers), hidden=int(hidden), intermediate=int(inter),
                     heads=int(heads), kv_heads=int(kv), head_dim=int(head_dim),
                     vocab=int(_get(config, "vocab_size", default=0)), gated_mlp=gated,
                     max_positions=_get(config, "max_position_embeddings", "n_positions"))


# -- the estimate -------------------------------------------------------------------

def _resolve(method, seq_len, dims, train_length, params):
    m = get_method(method, **(params or {}))
    T = train_length or m.train_length or dims.max_positions or seq_len
    return m.resolve(seq_len, int(T))


def _native(m: Method, capture: bool = False) -> bool:
    """Origin and Dynamic-NTK run the model's own attention (see ``apply``)."""
    return isinstance(m, (Origin, DynamicNTK)) and not capture


def _kernel_keys(m: Method, n: int) -> int:
    """Key columns one kernel query block is scored against (two key sets are
    concatenated along the key axis for the near/far methods)."""
    if isinstance(m, Mesa) and len(m.plan().chunks) == 1:
        return 0                                            # is_causal SDPA, O(n)
    return 2 * n


def estimate_peak_bytes(config, method_name, seq_len: int, *, dtype_bytes: int = 4,
                        backend: str = "sdpa", batch: int = 1, decode_tokens: int = 0,
                        device: str = "cpu", train_length: int | None = None,
                        logits_kept: int | None = 1, params: dict | None = None) -> int:
    """Estimated peak activation bytes (net of weights) of one prefill of
    ``seq_len`` tokens under ``method_name`` (a name or a Method), followed by
    ``decode_tokens`` greedy steps on its cache.

    Terms (``b = dtype_bytes``, ``n = seq_len``, per batch row):

    * KV cache ``2 * layers * kv_heads * head_dim * (n + decode_tokens) * b``
      (times ``1 + CPU_CACHE_OVERHEAD`` on CPU, see the module doc);
    * one layer's transients over the whole sequence: ``n * b * (4 *
      intermediate + 6 * hidden + 3 * heads * head_dim)`` (MLP gate/up/act/
      product, residual, norms, q/attention output) — only one layer is live;
    * logits ``logits_kept * vocab * b`` (all ``n`` rows if ``logits_kept`` is None);
    * attention working set: native ``eager`` (origin, dynamic-ntk) holds
      the ``[heads, n, n]`` scores twice (scores + mask sum, softmax output)
      plus the ``[n, n]`` additive mask; native ``sdpa`` uses the fused causal
      kernel (CPU flash / CUDA flash), O(n), measured: only its output; the
      blocked kernels (``mesa_viz.kernels``) hold O(n) rotated/concatenated key
      copies (``KERNEL_KV_COPIES`` KV widths) plus one score block bounded by
      ``kernels.SCORE_BUDGET`` bytes: with ``sdpa`` only the block's float
      mask (``SCORE_BUDGET / heads``; CPU SDPA turns a bool mask into float),
      with ``eager`` three score tensors of one key set (half the block:
      near and far keys are scored separately and merged by log-sum-exp).

    Returns bytes (int).
    """
    from .kernels import SCORE_BUDGET
    dims = model_dims(config)
    n = int(seq_len)
    if n < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    if backend not in ("sdpa", "eager", "flash_attention_2"):
        raise ValueError(f"backend {backend!r}: allowed 'sdpa', 'eager', 'flash_attention_2'")
    m = _resolve(method_name, n, dims, train_length, params)
    b = int(dtype_bytes)
    cpu = not str(device).startswith("cuda")
    L, H, I = dims.layers, dims.hidden, dims.intermediate
    h, kvh, d = dims.heads, dims.kv_heads, dims.head_dim

    kv = 2 * L * kvh * d * (n + int(decode_tokens)) * b
    if cpu:
        kv = int(kv * (1 + CPU_CACHE_OVERHEAD))
    mlp = (MLP_TRANSIENTS if dims.gated_mlp else MLP_TRANSIENTS - 1) * I
    acts = n * b * (mlp + HIDDEN_TRANSIENTS * H + ATTN_TRANSIENTS * h * d)
    rows = n if logits_kept is None else min(n, int(logits_kept))
    logits = rows * dims.vocab * b

    if _native(m):
        if backend == "eager":
            work = 2 * h * n * n * b + n * n * b + n * n   # scores x2, float mask, bool mask
        else:
            work = 0                                        # fused causal kernel: O(n), in acts
    else:
        keys = _kernel_keys(m, n)
        copies = KERNEL_KV_COPIES * n * kvh * d * b + 2 * n * h * d * b
        if keys == 0:
            block = 0
        elif backend == "eager":
            block = 3 * min(SCORE_BUDGET, 4 * h * n * keys) * b // 8
        else:
            block = min(SCORE_BUDGET // h, 4 * n * keys)
        work = copies + block
    return int(batch) * int(kv + acts + work) + int(batch) * logits


# -- the check ------------------------------------------------------------------------

def _model_device(model) -> str:
    try:
        return str(next(model.parameters()).device)
    except StopIteration:
        return "cpu"


def _model_dtype_bytes(model) -> int:
    try:
        return next(model.parameters()).element_size()
    except StopIteration:
        return 4


def check_fits(model, method_name, seq_len: int, device=None, margin: float = 0.9,
               **kw) -> int:
    """Estimate the peak of a prefill of ``seq_len`` tokens under
    ``method_name`` on ``model`` and raise :class:`LengthTooLong` if it exceeds
    ``margin * available_bytes(device)``; return the estimate (bytes) otherwise.

    ``device`` defaults to the model's; ``kw`` go to :func:`estimate_peak_bytes`
    (``dtype_bytes`` and ``backend`` default to the model's).
    """
    dev = str(device) if device is not None else _model_device(model)
    kw.setdefault("dtype_bytes", _model_dtype_bytes(model))
    kw.setdefault("backend", getattr(model.config, "_attn_implementation", "sdpa") or "sdpa")
    if kw["backend"] not in ("sdpa", "eager", "flash_attention_2"):
        kw["backend"] = "sdpa"
    kw.setdefault("device", dev)
    if kw.get("train_length") is None:
        from .application import train_length_of
        with contextlib.suppress(ValueError):
            kw["train_length"] = train_length_of(model)
    est = estimate_peak_bytes(model.config, method_name, seq_len, **kw)
    avail = available_bytes(dev)
    if est > margin * avail:
        name = method_name if isinstance(method_name, str) else method_name.name
        raise LengthTooLong(
            f"{name} at {seq_len} tokens needs about {est / GiB:.2f} GiB of activation "
            f"memory (estimate), more than {margin:.0%} of the {avail / GiB:.2f} GiB "
            f"available on {dev}", seq_len=int(seq_len), estimate=int(est), available=int(avail))
    return est


# -- measuring ------------------------------------------------------------------------

def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss() -> int:
    v = _status_bytes("VmRSS")
    if v is not None:
        return v
    import resource                                 # off Linux: best effort
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _malloc_trim() -> None:
    """Give free heap memory back to the OS so the baseline RSS is honest."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_hwm() -> bool:
    """Reset the process's RSS high-water mark (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_bytes("VmHWM") is not None
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.peak_bytes``: the peak
    memory of the block net of what was in use when it began.

    CUDA: ``torch.cuda.reset_peak_memory_stats`` and ``max_memory_allocated``
    minus ``memory_allocated`` before.  CPU: garbage is collected and free heap
    trimmed first; then the RSS high-water mark is reset through
    ``/proc/self/clear_refs`` and read from ``VmHWM`` after (exact).  Where
    that is not allowed a background thread samples RSS every
    ``interval`` seconds (``method == "sampled"``: short spikes can be missed).
    ``ru_maxrss`` alone never decreases, so it is not used.
    """

    def __init__(self, device="cpu", interval: float = 0.002):
        self.device = str(device)
        self.interval = interval
        self.peak_bytes: int | None = None
        self.method = None
        self._stop = threading.Event()
        self._thread = None
        self._max = 0

    def __enter__(self):
        gc.collect()
        if self.device.startswith("cuda"):
            import torch
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda"
            return self
        _malloc_trim()
        self._base = _rss()
        if _reset_hwm():
            self.method = "hwm"
        else:
            self.method = "sampled"
            self._max = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._max = max(self._max, _rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self.method == "cuda":
            import torch
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "hwm":
            peak = _status_bytes("VmHWM") or _rss()
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._max, _rss())
        self.peak_bytes = max(0, int(peak - self._base))
        return False
