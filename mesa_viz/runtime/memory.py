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
SmolLM2-135M-Instruct: 30 layers, hidden 576, MLP 1536, 9 heads / 3 KV heads
of 64): the estimate was compared with the RSS high-water mark of one
``model(ids, use_cache=True, logits_to_keep=1)`` at 2k, 4k and 8k tokens for
every method with ``sdpa`` (origin, mesa, rerope, leaky-rerope, dynamic-ntk,
streaming-llm, lm-infinite; Mesa also chunked, ``train_length=2048``) and for
origin, rerope and chunked Mesa with ``eager``.  Measured inside
:func:`exact_rss` (as ``mesa-viz bench`` does) every point is within 30% (the
35 points of the 7-method grid from 2k to 32k tokens, ``benchmarks/cpu-grid/``: 0.74-1.00,
native attention 0.82-1.00); ``tests/tiny/runtime/test_memory.py`` measures the same layer
shape (two
random layers) against the estimate on every run.  The kernels' terms follow
``mesa_viz/kernels/`` as measured (2026-11-26): re-check after kernel changes (bench rows
carry ``predicted_mem_bytes`` beside ``peak_mem_bytes``).  Mesa past ``T`` runs its prefill
in pieces (``apply``): the estimate holds the longest piece's activations and the last
piece's key copies (``kernels.MESA_KV_COPIES``): 0.90-1.09 of the measured peak on a
2-layer model of SmolLM2's layer shape at 8k tokens (``tests/tiny/runtime/test_memory.py``
checks 4096).

Under glibc's default adaptive malloc policy the RSS depends on what ran
before: freed tensors stay in a fragmented heap (the same 2k prefill measured
160 MB in a fresh process and 270 MB after an 8k one; 4k-8k points ran 1.0 to
1.2 KV caches above the live tensors).  ``CPU_FRAGMENTATION`` (extra bytes per
KV-cache byte) covers that by default (``fragmentation=None``); it errs high
for short first runs.  CUDA peaks (``max_memory_allocated``) have no such
term; the CUDA side of the formula follows the same tensor count with the
kernels' CUDA block sizes, but is not calibrated (no GPU here).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import threading
import time

from ..kernels import kernel_for
from ..methods import Method, default_piece_tokens, resolve
from ..models.parts import ModelDims, model_device, model_dims, model_dtype, train_length_of

__all__ = ["available_bytes", "estimate_peak_bytes", "check_fits", "LengthTooLong",
           "PeakMemory", "exact_rss", "set_mmap_threshold", "ModelDims", "model_dims", "GiB",
           "fits"]

log = logging.getLogger(__name__)

GiB = 2 ** 30

#: Extra RSS per byte of KV cache on CPU under glibc's default (adaptive) malloc
#: policy: heap fragmentation, see the module doc (0 inside :func:`exact_rss`).
CPU_FRAGMENTATION = 1.0
#: Per-token transients of one decoder layer, in elements of the model dtype,
#: as multiples of (MLP width, hidden width, attention width = heads * head_dim,
#: KV width = kv_heads * head_dim).  MLP phase: gate, up, act(gate), product +
#: residual and norm output.  Attention phase: residual, norm, q, k, v, output.
MLP_PHASE = (4, 2, 0, 0)
ATTN_PHASE = (0, 2, 2, 2)
#: Extra per-token O(n) copies made by the blocked kernels (rotated queries and
#: near/far key sets, GQA-repeated keys and values), in attention and KV widths.
KERNEL_Q_COPIES, KERNEL_KV_COPIES = 4, 10
#: One query block's mask and bias tensors (int64 distances, bool masks, float
#: bias and its GQA repeat), in multiples of its 4-byte ``rows x keys`` area,
#: which the kernels cap at ``SCORE_BUDGET / 2`` per key set.
KERNEL_BLOCK_FACTOR = 3
#: Score tensors of one block alive at once in the kernels' eager path.
EAGER_SCORE_COPIES = 1.5
#: The mmap threshold :func:`exact_rss` sets while it measures (bytes), and the
#: one it leaves behind (glibc's adaptive maximum on 64-bit, 32 MiB).
MMAP_THRESHOLD, MMAP_THRESHOLD_AFTER = 1 << 20, 32 << 20


def set_mmap_threshold(threshold: int) -> bool:
    """``mallopt(M_MMAP_THRESHOLD, threshold)`` (and the trim threshold at
    twice it): allocations of ``threshold`` bytes or more get their own
    mapping, returned to the OS when freed.  This also stops glibc adapting the
    threshold for the rest of the process.  False where unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(-3, int(threshold)))                 # M_MMAP_THRESHOLD
        return ok and bool(libc.mallopt(-1, 2 * int(threshold)))    # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def exact_rss(threshold: int = MMAP_THRESHOLD, after: int = MMAP_THRESHOLD_AFTER):
    """Inside the block every allocation of ``threshold`` bytes or more is its
    own mapping, so the RSS high-water mark is the working set of live tensors
    (reproducible to ~1%), not what glibc's heap kept from earlier work (the
    same 2k prefill measured 160 MB in a fresh process and 270 MB after an 8k
    one).  Not for timing: page faults on every large allocation made decode
    steps 10-40x slower here.  On exit the threshold is fixed at ``after``
    (32 MiB, where glibc's adaptive policy ends up).  Yields whether it applied.
    """
    ok = set_mmap_threshold(threshold)
    try:
        yield ok
    finally:
        if ok:
            set_mmap_threshold(after)


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


def available_bytes(device=None, cap: int | None = None) -> int:
    """Bytes free for new tensors on ``device`` (default CPU), at most ``cap``
    less what this process holds now (CUDA: allocated tensors; CPU: RSS) when
    a cap is given.

    CPU: ``MemAvailable`` from ``/proc/meminfo`` (falls back to
    ``os.sysconf`` free pages off Linux).  CUDA: the free bytes of
    ``torch.cuda.mem_get_info`` plus what PyTorch's caching allocator holds
    reserved but unused (it hands that out before asking the driver), at
    most what a per-process cap leaves (``set_per_process_memory_fraction``:
    the cap less what is allocated).
    """
    dev = "cpu" if device is None else str(device)
    if dev.startswith("cuda"):
        import torch
        d = torch.device(dev)
        index = d.index if d.index is not None else torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        allocated = torch.cuda.memory_allocated(index)
        avail = free + max(0, torch.cuda.memory_reserved(index) - allocated)
        fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
        if fraction is not None and fraction(index) < 1.0:
            avail = min(avail, int(fraction(index) * total) - allocated)
        return int(max(0, avail if cap is None else min(avail, cap - allocated)))
    if dev != "cpu":
        raise ValueError(f"device {device!r}: allowed 'cpu' or 'cuda[:N]'")
    try:
        avail = _meminfo("MemAvailable")
    except (OSError, RuntimeError):
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(max(0, avail if cap is None else min(avail, cap - _rss())))


# -- the model's shapes -------------------------------------------------------------

# -- the estimate -------------------------------------------------------------------

def _native(m: Method, capture: bool = False) -> bool:
    """Whether the model's own attention runs (see ``apply``)."""
    return m.native and not capture


def _kv_copies(m: Method) -> float:
    """O(n) KV-width copies the method's kernel holds (its registry entry, or
    ``KERNEL_KV_COPIES``)."""
    copies = kernel_for(m).kv_copies
    return KERNEL_KV_COPIES if copies is None else copies


def _kernel_area(m: Method, n: int) -> int:
    """Bytes of one 4-byte ``[query rows, keys]`` plane over the queries the
    method's kernel scores in blocks (0 where it calls the fused causal kernel)."""
    return 4 * kernel_for(m).blocked_rows(m, n) * n


def estimate_peak_bytes(config, method_name, seq_len: int, *, dtype_bytes: int = 4,
                        backend: str = "sdpa", batch: int = 1, decode_tokens: int = 0,
                        device: str = "cpu", train_length: int | None = None,
                        logits_kept: int | None = 1, params: dict | None = None,
                        fragmentation: float | None = None,
                        piece_tokens: int | None = None) -> int:
    """Estimated peak activation bytes (net of weights) of one prefill of
    ``seq_len`` tokens under ``method_name`` (a name or a Method), followed by
    ``decode_tokens`` greedy steps on its cache.  ``config``: a transformers
    config or a :class:`ModelDims`.

    Terms (``b = dtype_bytes``, ``n = seq_len``, per batch row); one decoder
    layer is live at a time, and within it the MLP and the attention run one
    after the other, so the peak is the cache plus the larger of two phases.
    A prefill the method runs in pieces (:meth:`Method.prefill_pieces`, at
    most ``piece_tokens`` tokens a forward, default
    :func:`mesa_viz.methods.default_piece_tokens` as ``apply`` does: Mesa past
    ``T``) holds the activations of its longest piece, ``p`` tokens, in place
    of ``n`` (``p = n`` otherwise):

    * KV cache ``2 * layers * kv_heads * head_dim * (n + decode_tokens) * b``
      (times ``1 + fragmentation``);
    * MLP phase ``p * b * (4 * intermediate + 2 * hidden)`` (gate, up,
      act(gate), product; residual, norm output; 3 for ungated MLPs);
    * attention phase ``p * b * (2 * hidden + 2 * heads * head_dim + 2 *
      kv_heads * head_dim)`` plus the attention working set.  Native ``sdpa``
      (origin, dynamic-ntk; Mesa up to ``T``): the fused causal kernel (CPU
      flash, CUDA flash), measured O(n), nothing more.  Native ``eager``: the
      ``[heads, n, n]`` scores twice (scores + mask, softmax output) plus the
      ``[n, n]`` float and bool masks.  Blocked kernels (``mesa_viz.kernels``:
      Mesa beyond ``T``, rerope, leaky-rerope, streaming-llm, lm-infinite):
      O(p) query copies (``KERNEL_Q_COPIES`` attention widths) and O(n) key
      copies (the kernel's ``kv_copies``, default ``KERNEL_KV_COPIES`` KV
      widths) plus one query block's masks, ``KERNEL_BLOCK_FACTOR`` times
      its 4-byte ``rows x keys`` area, capped by ``kernels.sets.SCORE_BUDGET / 2``
      (``/ (2 * heads)`` on CUDA and with eager, where blocks hold every head;
      on CPU with ``sdpa`` by ``kernels.sets.CPU_BLOCK`` rows);
      ``eager`` adds the block's ``[heads, rows, keys]`` scores
      (``EAGER_SCORE_COPIES`` of them);
    * logits ``logits_kept * vocab * b`` (all ``n`` rows if ``logits_kept`` is
      None; in pieces, the ``n * hidden * b`` final states joined as well);
    * ``fragmentation``: extra RSS per byte of KV cache from glibc's heap
      (None: ``CPU_FRAGMENTATION`` on CPU, 0 on CUDA; pass 0 to predict a
      measurement made inside :func:`exact_rss`).

    Returns bytes (int).
    """
    from ..kernels.sets import CPU_BLOCK, SCORE_BUDGET
    dims = model_dims(config)
    n = int(seq_len)
    if n < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    if backend not in ("sdpa", "eager", "flash_attention_2"):
        raise ValueError(f"backend {backend!r}: allowed 'sdpa', 'eager', 'flash_attention_2'")
    params = dict(params or {})     # a method parameter train_length= names T as the argument does
    train_length = params.pop("train_length", None) or train_length
    m = resolve(method_name, n, train_length=train_length,
                default_train_length=dims.max_positions, **params)
    b = int(dtype_bytes)
    cpu = not str(device).startswith("cuda")
    if fragmentation is None:
        fragmentation = CPU_FRAGMENTATION if cpu else 0.0
    L, H, I = dims.layers, dims.hidden, dims.intermediate
    h, kvh, d = dims.heads, dims.kv_heads, dims.head_dim

    p = _longest_piece(m, n, piece_tokens, capture=False, on_gpu=not cpu)

    def phase(w):
        return p * b * (w[0] * I * (1 if dims.gated_mlp or w[0] == 0 else 0.75)
                        + w[1] * H + w[2] * h * d + w[3] * kvh * d)

    kv = 2 * L * kvh * d * (n + int(decode_tokens)) * b
    kv = int(kv * (1 + fragmentation))
    rows = n if logits_kept is None else min(n, int(logits_kept))
    logits = rows * dims.vocab * b + (n * H * b if p < n and logits_kept is None else 0)
    attn = phase(ATTN_PHASE)
    if _native(m):
        if backend == "eager":                      # scores x2, float mask, bool mask
            attn += 2 * h * n * n * b + n * n * b + n * n
    else:
        area = _kernel_area(m, n)                   # 4-byte rows x keys of the kernel's blocks
        if area or p < n:
            attn += b * (p * KERNEL_Q_COPIES * h * d + n * _kv_copies(m) * kvh * d)
        if p < n and not cpu:                       # GPU scores of few rows, by matmul
            attn += SCORE_BUDGET
        if area:
            # blocks hold every head on CUDA and with eager (the CPU flash path folds heads)
            per_head = backend == "eager" or not cpu
            cap = SCORE_BUDGET // (2 * h) if per_head else SCORE_BUDGET // 2
            if cpu and backend == "sdpa":           # CPU blocks of CPU_BLOCK query rows
                cap = min(cap, 4 * CPU_BLOCK * n)
            attn += KERNEL_BLOCK_FACTOR * min(cap, area)
            if backend == "eager":                  # [heads, rows, keys] scores, ~2 alive
                attn += int(EAGER_SCORE_COPIES * h * min(cap, area) * b / 4)
    peak = kv + max(phase(MLP_PHASE), attn)
    return int(batch) * int(peak) + int(batch) * logits


def _longest_piece(m: Method, n: int, piece_tokens: int | None, capture: bool,
                   on_gpu: bool = False) -> int:
    """Tokens of the longest forward of a prefill of ``n`` tokens under the
    resolved ``m`` (``apply``'s pieces; ``n`` for native attention)."""
    if _native(m, capture):
        return n
    budget = piece_tokens or default_piece_tokens(m.train_length, on_gpu)
    return max(b - a for a, b in m.prefill_pieces(n, budget))


# -- the check ------------------------------------------------------------------------

def check_fits(model, method_name, seq_len: int, device=None, margin: float = 0.9,
               **kw) -> int:
    """Estimate the peak of a prefill of ``seq_len`` tokens under
    ``method_name`` on ``model`` and raise :class:`LengthTooLong` if it exceeds
    ``margin * available_bytes(device)``; return the estimate (bytes) otherwise.

    ``device`` defaults to the model's; ``kw`` go to :func:`estimate_peak_bytes`
    (``dtype_bytes`` and ``backend`` default to the model's).
    """
    dev = str(device) if device is not None else model_device(model)
    kw.setdefault("dtype_bytes", model_dtype(model).itemsize)
    kw.setdefault("backend", getattr(model.config, "_attn_implementation", "sdpa") or "sdpa")
    if kw["backend"] not in ("sdpa", "eager", "flash_attention_2"):
        kw["backend"] = "sdpa"
    kw.setdefault("device", dev)
    if kw.get("train_length") is None:
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


def fits(model, method: str, length: int, params: dict | None = None,
         decode_tokens: int = 0, batch: int = 1) -> bool:
    """False (with a warning naming the estimate) when a prefill of ``batch``
    rows of ``length`` tokens under ``method`` is predicted not to fit
    (:func:`check_fits`): the sweeps skip such a length instead of running out
    of memory."""
    try:
        check_fits(model, method, length, params=params or {}, decode_tokens=decode_tokens,
                   batch=batch)
    except LengthTooLong as err:
        log.warning("skipping %s at length %d%s: %s", method, length,
                    f" in batches of {batch}" if batch > 1 else "", err)
        return False
    return True


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
    ``ru_maxrss`` alone never decreases, so it is not used.  ``exact=True``
    (CPU) measures inside :func:`exact_rss`: live tensors, not heap leftovers
    (slower code inside; not for timing).
    """

    def __init__(self, device="cpu", interval: float = 0.002, exact: bool = False):
        self.device = str(device)
        self.exact = exact
        self._exact_cm = None
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
        if self.exact:
            self._exact_cm = exact_rss()
            self._exact_cm.__enter__()
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
        if self._exact_cm is not None:
            self._exact_cm.__exit__(None, None, None)
            self._exact_cm = None
        return False
