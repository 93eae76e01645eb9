"""Benchmark: prefill time, peak memory, decode time and FLOP rate by method and length.

``bench.run(model, ["origin", "mesa"], [2048, 4096], "bench.jsonl")`` (the
command line: ``mesa-viz bench --methods origin,mesa --lengths 2048,4096``)
writes JSON lines as it goes (:func:`mesa_viz.results.append_jsonl`):

* once per run ``{"kind": "machine", "matmul_gflops": ..., "matmul_rates": ...,
  "device": ..., "threads": ...}``: the machine's dense matmul rate, the best
  over square products of several sizes and the model's own linear-layer shapes
  (:func:`matmul_rates`);
* one ``{"kind": "point", "method", "length", ...}`` per (method, length):
  ``prefill_s`` (median of ``repeats`` prefills ``model(ids, use_cache=True,
  logits_to_keep=1)``), ``peak_mem_bytes`` (peak activation memory net of
  everything allocated before, weights included; CPU: RSS of one extra untimed
  prefill under :func:`mesa_viz.memory.exact_rss`, CUDA: ``max_memory_allocated``;
  see :func:`measure_point`), ``decode_ms_per_token`` (median of
  greedy one-token steps on the prefill's cache), ``useful_flops``
  (:func:`prefill_flops`) and ``gflops_achieved`` (useful FLOPs / prefill
  seconds), ``predicted_mem_bytes`` (:func:`mesa_viz.memory.estimate_peak_bytes`);
  ``oom: true`` when the prediction exceeds the available memory (not run) or
  the run ran out of memory; ``skipped`` when a time budget stopped it.

A file that already holds a point of the same model, device and dtype is
resumed: measured and OOM points are not run again.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path


from .checks import check_lengths, check_methods
from .memory import GiB, PeakMemory, available_bytes, estimate_peak_bytes, model_dims
from .methods import METHODS, Method, _check_int, default_piece_tokens, resolve
from .models import model_device, model_dtype
from .results import append_jsonl, read_jsonl

__all__ = ["visible_pairs", "prefill_flops", "matmul_gflops", "matmul_rates", "model_gemms",
           "memory_gbps", "decode_bytes", "floors",
           "CALIBRATION_SIZES", "measure_point", "run",
           "Settings", "machine_row", "check_grid", "rows_for", "summary_table",
           "sdpa_choices", "ALL_METHODS", "DEFAULT_LENGTHS"]

log = logging.getLogger(__name__)

#: Every method of :data:`mesa_viz.methods.METHODS` (the bench's default).
ALL_METHODS = tuple(METHODS)
DEFAULT_LENGTHS = (2048, 4096, 8192, 16384, 32768)


# -- FLOPs ------------------------------------------------------------------------------

def visible_pairs(method: Method, seq_len: int) -> int:
    """Query/key pairs the (resolved) method's layout makes visible in a prefill
    of ``seq_len`` tokens, each counted once: :meth:`Method.visible_pairs`."""
    return method.visible_pairs(int(seq_len))


def _linear_params(dims) -> int:
    """Weights one token passes through in the decoder layers' matmuls."""
    d = dims
    attn = d.hidden * d.heads * d.head_dim * 2 + d.hidden * d.kv_heads * d.head_dim * 2
    mlp = (3 if d.gated_mlp else 2) * d.hidden * d.intermediate
    return d.layers * (attn + mlp)


def prefill_flops(config, method, seq_len: int, *, train_length: int | None = None,
                  logits_kept: int | None = 1, batch: int = 1, params: dict | None = None,
                  detail: bool = False):
    """Useful FLOPs of one prefill of ``seq_len`` tokens.

    ``2 * n * (weights of the decoder layers' matmuls: q, k, v, o, MLP)``
    + ``4 * head_dim * heads * visible_pairs`` per layer (QK^T and PV, 2 FLOPs
    per multiply-add) + the LM head ``2 * kept * hidden * vocab`` for the kept
    logits only.  Embedding lookups, norms, RoPE and softmax are not counted.
    ``method``: a name (resolved for ``seq_len`` against ``train_length``,
    default the config's ``max_position_embeddings``) or a resolved Method.
    ``detail=True`` returns a dict of the parts.
    """
    dims = model_dims(config)
    n = int(seq_len)
    m = resolve(method, n, train_length=train_length, default_train_length=dims.max_positions,
                **(params or {}))
    pairs = visible_pairs(m, n)
    linear = 2 * n * _linear_params(dims)
    attention = 4 * dims.head_dim * dims.heads * pairs * dims.layers
    kept = n if logits_kept is None else min(n, int(logits_kept))
    head = 2 * kept * dims.hidden * dims.vocab
    total = batch * (linear + attention + head)
    if detail:
        return {"linear": batch * linear, "attention": batch * attention,
                "lm_head": batch * head, "pairs": pairs, "total": total}
    return total


# -- the machine ---------------------------------------------------------------------------

def _sync(device):
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
            _sync(device)
            best, spent, runs = math.inf, 0.0, 0
            while runs < repeats or spent < min_seconds:
                t0 = time.perf_counter()
                torch.matmul(a, b)
                _sync(device)
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
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best / 1e9


def decode_bytes(config, length: int, *, dtype_bytes: int, n_params: int,
                 rotated_keys: bool = False) -> int:
    """Bytes one decode step must read at ``length`` cached tokens: every
    weight once and the KV cache (plus one rotated copy of the keys where a
    method keeps one, ``rotated_keys``: the torch kernels' decode memo)."""
    d = model_dims(config)
    kv = (3 if rotated_keys else 2) * d.layers * d.kv_heads * d.head_dim * length
    return int(dtype_bytes * (n_params + kv))


def floors(row: dict, machine: dict, config, n_params: int) -> dict:
    """The limits of a point row on the machine of ``machine`` (a ``kind:
    machine`` row): ``prefill_floor_s`` (useful FLOPs at the matmul rate) and,
    with a memory bandwidth, ``decode_floor_ms`` (:func:`decode_bytes` at it)."""
    out = {"prefill_floor_s": row["useful_flops"] / (machine["matmul_gflops"] * 1e9)}
    if machine.get("memory_gbps"):
        b = decode_bytes(config, row["length"], dtype_bytes=2 if row["dtype"] in (
            "bfloat16", "float16") else 4, n_params=n_params,
            rotated_keys=_keeps_rotated_keys(row))
        out["decode_floor_ms"] = 1e3 * b / (machine["memory_gbps"] * 1e9)
    return out


def _keeps_rotated_keys(row: dict) -> bool:
    """Whether a point's decode reads a rotated copy of the keys (the torch
    kernels' decode memo): methods with kernels, except on CUDA, where the
    split-key Triton launch rotates the keys it reads instead (unless the row
    says the launch was turned off)."""
    if METHODS[row["method"]].native:
        return False
    return not (str(row.get("device", "")).startswith("cuda") and not row.get("fused_off"))


def model_gemms(config, rows: int = 4096) -> list[tuple[int, int, int]]:
    """``(m, k, n)`` of a model's linear layers for ``rows`` tokens: q/o, k/v
    and the MLP's up and down products."""
    d = model_dims(config)
    return [(rows, d.hidden, d.heads * d.head_dim), (rows, d.hidden, d.kv_heads * d.head_dim),
            (rows, d.hidden, d.intermediate), (rows, d.intermediate, d.hidden)]


# -- which SDPA kernel ran --------------------------------------------------------------------

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


# -- one point ----------------------------------------------------------------------------------

def _dtype_name(model) -> str:
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


def _resolve(method: str, params: dict, n: int, T: int) -> Method:
    """``method`` with ``params`` resolved for a prefill of ``n`` tokens
    against training length ``T`` (the bench's one way to resolve)."""
    return resolve(method, n, train_length=T, prefill_length=n, **params)


def _cache_kwarg(model) -> str:
    """``cache`` (transformers >= 5.2x) or the older ``past_key_values``."""
    import inspect
    return "cache" if "cache" in inspect.signature(model.forward).parameters \
        else "past_key_values"


def _out_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _is_oom(exc: BaseException) -> bool:
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


def _prefill(model, ids, dev: str, *, exact: bool, record_sdpa: bool):
    """``(output, _Prefill)`` of one timed ``model(ids, use_cache=True,
    logits_to_keep=1)`` under a peak-memory meter, on a cache presized for the
    prompt (``application.presized_cache``, every method alike: decode steps
    append in place instead of copying the cache)."""
    from .application import presized_cache
    rec = sdpa_choices() if record_sdpa else contextlib.nullcontext({})
    with rec as counts, PeakMemory(dev, exact=exact) as pm:
        t0 = time.perf_counter()
        out = model(ids, use_cache=True, logits_to_keep=1,
                    **{_cache_kwarg(model): presized_cache(model, ids.shape[1])})
        _sync(dev)
        dt = time.perf_counter() - t0
    how = pm.method + ("-exact" if exact else "")
    return out, _Prefill(dt, pm.peak_bytes, how, exact, dict(counts))


def _memory_of(prefills: list[_Prefill], cpu_exact: bool, warmup: int) -> tuple[list, str]:
    """``(peaks, mem_method)``: the exact untimed prefill's peak (CPU with
    ``exact_memory``), else the peaks of the timed prefills."""
    kept = [p for r, p in enumerate(prefills) if p.exact or (not cpu_exact and r >= warmup)]
    return [p.peak_bytes for p in kept], (kept[-1].mem_method if kept else None)


def _step(model, cache, token, dev: str):
    """One timed greedy step on ``cache``: ``(seconds, next token, cache)``."""
    t0 = time.perf_counter()
    step = model(token, use_cache=True, **{_cache_kwarg(model): cache})
    _sync(dev)
    return time.perf_counter() - t0, step.logits[:, -1:].argmax(-1), _out_cache(step)


def _decode(model, cache, token, steps: int, dev: str) -> list[float]:
    """Seconds of each of ``steps`` greedy one-token steps on ``cache``."""
    seconds = []
    for _ in range(steps):
        dt, token, cache = _step(model, cache, token, dev)
        seconds.append(dt)
    return seconds


def _applied(stack: contextlib.ExitStack, runs: dict, train_length: int | None,
             piece_tokens: int | None) -> None:
    """Enter ``apply(model, method)`` for every run of ``runs`` on ``stack``."""
    from .application import apply, train_length_of
    for model, method in runs.values():
        T = train_length or train_length_of(model)
        stack.enter_context(apply(model, method, train_length=T, piece_tokens=piece_tokens))


def interleaved_decode(runs: dict, length: int, steps: int, *, train_length: int | None = None,
                       seed: int = 0, piece_tokens: int | None = None) -> dict:
    """Greedy decode steps of several runs taken in turn, one step of each
    run before the next step of any, on caches prefilled with the same random
    prompt of ``length`` tokens: a host whose speed drifts (other processes,
    clocks) then slows every run alike, and a step's ratio pairs steps taken
    moments apart (:func:`paired_ratio`).

    ``runs``: ``{label: (model, method)}`` with one model object per run
    (``apply`` holds one method per model; :func:`weight_sharing_twin` gives
    a second one on the same weights).  Returns
    ``{label: {"seconds": [...], "tokens": [...], "sdpa": {...}}}``: per step,
    and the SDPA backends the first step's calls went to (:func:`sdpa_choices`;
    that step is left out of the medians).
    """
    import torch
    got = {label: {"seconds": [], "tokens": [], "sdpa": {}} for label in runs}
    with torch.no_grad(), contextlib.ExitStack() as stack:
        _applied(stack, runs, train_length, piece_tokens)
        state = {}
        for label, (model, _) in runs.items():
            dev = model_device(model)
            out, _ = _prefill(model, random_ids(model.config.vocab_size, length, seed, dev), dev,
                              exact=False, record_sdpa=False)
            state[label] = (_out_cache(out), out.logits[:, -1:].argmax(-1))
            del out
        for n in range(steps):
            for label, (model, _) in runs.items():
                cache, token = state[label]
                with sdpa_choices() if n == 0 else contextlib.nullcontext({}) as counts:
                    dt, token, cache = _step(model, cache, token, model_device(model))
                got[label]["sdpa"].update(counts)
                state[label] = (cache, token)
                got[label]["seconds"].append(dt)
                got[label]["tokens"].append(int(token[0, 0]))
    return got


def interleaved_prefill(runs: dict, length: int, rounds: int, *,
                        train_length: int | None = None, seed: int = 0,
                        piece_tokens: int | None = None, progress: bool = False) -> dict:
    """Prefills of several runs taken in turn, one of each run a round, of the
    same random prompt of ``length`` tokens; each is timed alone (the last
    prefill's cache is freed first), on a presized cache like
    :func:`measure_point`'s.  ``runs``: as for :func:`interleaved_decode`.
    Returns ``{label: [seconds, ...]}`` (one a round)."""
    import torch
    from tqdm.auto import tqdm
    got = {label: [] for label in runs}
    ids = {label: random_ids(model.config.vocab_size, length, seed, model_device(model))
           for label, (model, _) in runs.items()}
    with torch.no_grad(), contextlib.ExitStack() as stack:
        _applied(stack, runs, train_length, piece_tokens)
        for _ in tqdm(range(rounds), desc=f"prefill A/B, {length} tokens", unit="round",
                      disable=not progress):
            for label, (model, _) in runs.items():
                out, p = _prefill(model, ids[label], model_device(model), exact=False,
                                  record_sdpa=False)
                del out
                got[label].append(p.seconds)
    return got


def weight_sharing_twin(model):
    """A second model object holding the same parameter tensors (no copy of
    the weights; its own modules and buffers), so that ``apply`` can hold
    another method on it beside the first model's."""
    return copy.deepcopy(model, memo={id(p): p for p in model.parameters()})


def _ab_runs(model, methods) -> tuple[str, str, dict]:
    """``(a, b, runs)``: two different methods, ``a`` on ``model`` and ``b``
    on its :func:`weight_sharing_twin`."""
    names = list(methods)
    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(f"an A/B takes two different methods: got {names}")
    a, b = names
    return a, b, {a: (model, a), b: (weight_sharing_twin(model), b)}


def decode_ab(model, methods, lengths, steps: int, *, train_length: int | None = None,
              seed: int = 0, piece_tokens: int | None = None):
    """Rows ``kind: decode-ab``, yielded length by length (save each as it
    comes): the two ``methods``' greedy decode, one step of each in turn
    (:func:`interleaved_decode`, the second on a :func:`weight_sharing_twin`):
    every step's milliseconds, the medians (first step left out: compiles,
    first rotations) and the median of the per-step ratios, second over first
    (:func:`paired_ratio`), and the SDPA backends of each method's first step."""
    a, b, runs = _ab_runs(model, methods)
    for n in lengths:
        got = interleaved_decode(runs, n, steps, train_length=train_length, seed=seed,
                                 piece_tokens=piece_tokens)
        ms = {k: [1e3 * x for x in v["seconds"]] for k, v in got.items()}
        med = {k: statistics.median(v[1:]) for k, v in ms.items()}
        yield {"kind": "decode-ab", "length": n, "steps": steps, "methods": [a, b],
               "device": model_device(model), "ms_all": ms, "ms": med,
               "ratio_paired": paired_ratio(ms[b], ms[a]), "ratio_of_medians": med[b] / med[a],
               "sdpa_backends": {k: v["sdpa"] for k, v in got.items()},
               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def prefill_ab(model, methods, lengths, repeats: int, *, warmup: int = 1,
               train_length: int | None = None, seed: int = 0,
               piece_tokens: int | None = None, progress: bool = False):
    """Rows ``kind: prefill-ab``, yielded length by length (save each as it
    comes): the two ``methods``' prefills taken in turn (:func:`interleaved_prefill`,
    the second on a :func:`weight_sharing_twin`), ``warmup`` rounds and then
    ``repeats`` timed ones: every prefill's seconds, the medians of the timed
    ones and the median of the per-round ratios, second over first
    (:func:`paired_ratio`): a machine whose speed drifts slows both alike."""
    _check_int("repeats", repeats, 1)
    _check_int("warmup", warmup, 0)
    a, b, runs = _ab_runs(model, methods)
    for n in lengths:
        s = interleaved_prefill(runs, n, warmup + repeats, train_length=train_length, seed=seed,
                                piece_tokens=piece_tokens, progress=progress)
        med = {k: statistics.median(v[warmup:]) for k, v in s.items()}
        yield {"kind": "prefill-ab", "length": n, "repeats": repeats, "warmup": warmup,
               "methods": [a, b], "device": model_device(model), "s_all": s, "s": med,
               "ratio_paired": paired_ratio(s[b], s[a], skip=warmup),
               "ratio_of_medians": med[b] / med[a], "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def paired_ratio(a: list[float], b: list[float], skip: int = 1) -> float:
    """Median over steps of ``a[i] / b[i]`` (steps taken in turn, the first
    ``skip`` left out: first calls compile and fill caches)."""
    pairs = [x / y for x, y in zip(a[skip:], b[skip:])]
    if not pairs:
        raise ValueError(f"paired_ratio needs more than skip={skip} steps: got {len(a)}")
    return statistics.median(pairs)


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
    :func:`mesa_viz.memory.exact_rss` (live tensors; that allocator setting
    slows large allocations, so nothing timed runs under it); it also serves
    as a warm-up.  CPU without it: the RSS peak over the timed prefills under
    the ordinary allocator (heap leftovers included).
    """
    import torch

    from .application import apply, train_length_of
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
            out, p = _prefill(model, ids, dev, exact=cpu_exact and r == 0,
                              record_sdpa=record_sdpa and r == 0)
            prefills.append(p)
        resolved = state.resolved or _resolve(method, params, length, T)
        cache, token = _out_cache(out), out.logits[:, -1:].argmax(-1)
        out = None
        steps = _decode(model, cache, token, decode_tokens, dev)
        del cache
    peaks, how = _memory_of(prefills, cpu_exact, warmup)
    return {"prefill_s_all": [p.seconds for p in prefills[warmup:]], "peak_mem_all": peaks,
            "decode_s_all": steps, "resolved": resolved, "train_length": T,
            "sdpa_backends": prefills[0].sdpa if prefills else {}, "mem_method": how}


# -- the grid -------------------------------------------------------------------------------------

def _key(row) -> tuple:
    return (row.get("model"), row.get("device"), row.get("dtype"), row.get("backend"),
            row.get("method"), int(row.get("length", -1)), row.get("piece_tokens"))


def _plan_summary(m: Method):
    if m.chunked:
        plan = m.plan()
        return {"chunks": len(plan.chunks), "first": list(plan.first),
                "middle": len(plan.middle), "last": list(plan.last)}
    return None


def _predict_seconds(history: list[tuple[int, float]], n: int) -> float | None:
    """Prefill seconds at ``n`` extrapolated from earlier (length, seconds) of
    the same method: power law fitted to the last two, exponent in [1, 2]."""
    pts = sorted(history)
    if not pts:
        return None
    if len(pts) == 1:
        (n0, t0), p = pts[0], 2.0
    else:
        (n1, t1), (n0, t0) = pts[-2], pts[-1]
        p = math.log(max(t0, 1e-9) / max(t1, 1e-9)) / math.log(n0 / n1) if n0 != n1 else 2.0
        p = min(2.0, max(1.0, p))
    return t0 * (n / n0) ** p


@dataclass(frozen=True)
class Settings:
    """How every point of a grid is measured (see :func:`run`).
    ``record_errors``: a point that raises (other than running out of memory)
    is written with its ``error`` and the grid goes on, instead of stopping.
    ``memory_cap_bytes``: the memory the out-of-memory check allows the
    process in all (``memory.available_bytes(cap=...)``), e.g. a smaller
    card's on a larger one; None: what the device has free.  ``piece_tokens``:
    :func:`measure_point`'s (rows say it)."""

    repeats: int = 3
    decode_tokens: int = 8
    warmup: int = 0
    seed: int = 0
    exact_memory: bool = True
    margin: float = 0.9
    record_errors: bool = False
    memory_cap_bytes: int | None = None
    piece_tokens: int | None = None


@dataclass(frozen=True)
class _Grid:
    """What every point of one run shares: the model, its training length and
    dimensions, the fields common to all rows, and the settings."""

    model: object
    train_length: int
    common: dict
    settings: Settings

    @property
    def device(self) -> str:
        return self.common["device"]


def _common_fields(model, model_name: str, extra: dict) -> dict:
    """The fields that identify a run's rows (and key its resume)."""
    return {"device": model_device(model), "dtype": _dtype_name(model), "model": model_name,
            "backend": model.config._attn_implementation, **extra}


def _todo(out: Path, common: dict, methods, lengths,
          piece_tokens: int | None = None) -> list[tuple[str, int]]:
    """The (method, length) points not measured yet in ``out`` with this
    piece size (skipped points are measured again)."""
    done = {_key(r) for r in read_jsonl(out)
            if r.get("kind", "point") == "point" and not r.get("skipped")}
    grid = [(m, int(n)) for n in lengths for m in methods]
    todo = [(m, n) for m, n in grid if _key({**common, "method": m, "length": n,
                                             "piece_tokens": piece_tokens}) not in done]
    if len(todo) < len(grid):
        log.info("resuming %s: %d of %d points already there", out, len(grid) - len(todo),
                 len(grid))
    return todo


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
           "device_name": (torch.cuda.get_device_name(device) if device.startswith("cuda")
                           else _cpu_name()),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {})}
    log.info("machine: %.1f GFLOP/s dense %s matmul on %s (%d threads)",
             row["matmul_gflops"], dtype, device, row["threads"])
    return row


def _warm_up(model, seed: int) -> None:
    """Page the weights in and run one short forward (one-time allocations,
    thread pools...), so neither counts in the first point."""
    import torch
    page_in(model)
    with torch.no_grad():
        model(random_ids(model.config.vocab_size, 16, seed, model_device(model)),
              use_cache=True, logits_to_keep=1)


def _plan_point(grid: _Grid, method: str, n: int, params: dict) -> dict:
    """The row of one point before it runs: resolved parameters, predicted
    memory (and the OOM check's estimate), available memory, useful FLOPs."""
    import torch
    s, dev, model = grid.settings, grid.device, grid.model
    resolved = _resolve(method, params, n, grid.train_length)
    dims = model_dims(model.config)
    kw = dict(dtype_bytes=model_dtype(model).itemsize, backend=grid.common["backend"],
              decode_tokens=s.decode_tokens, device=dev)
    flops = prefill_flops(dims, resolved, n)
    pieces_of = s.piece_tokens or default_piece_tokens(grid.train_length,
                                                       on_gpu=str(dev).startswith("cuda"))
    return {"kind": "point", "method": method, "length": n, "prefill_s": None,
            "prefill_s_all": None, "peak_mem_bytes": None, "decode_ms_per_token": None,
            "gflops_achieved": None, "useful_flops": flops,
            "attention_pairs": visible_pairs(resolved, n),
            "predicted_mem_bytes": estimate_peak_bytes(
                dims, resolved, n, fragmentation=0.0 if s.exact_memory else None, **kw),
            "oom_check_bytes": estimate_peak_bytes(dims, resolved, n, **kw),
            "available_bytes": available_bytes(dev, cap=s.memory_cap_bytes), "oom": False,
            **grid.common, "params": resolved.params(), "plan": _plan_summary(resolved),
            "train_length": grid.train_length, "threads": torch.get_num_threads(),
            "piece_tokens": s.piece_tokens, "piece_tokens_used": pieces_of,
            "prefill_pieces": len(resolved.prefill_pieces(n, pieces_of)),
            "repeats": s.repeats, "decode_tokens": s.decode_tokens,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _skip_reason(guess: float | None, runs: int, deadline: float | None,
                 point_limit_s: float | None) -> str | None:
    """Why a point predicted to take ``guess`` seconds a prefill (``runs``
    prefills) is not run, or None."""
    if guess is not None:
        if point_limit_s is not None and guess > point_limit_s:
            return f"predicted prefill {guess:.1f}s > point limit {point_limit_s:.0f}s"
        if deadline is not None and time.monotonic() + guess * runs * 1.1 > deadline:
            return f"predicted {guess * runs * 1.1:.1f}s would pass the time budget"
    if deadline is not None and time.monotonic() > deadline:
        return "time budget spent"
    return None


def _oom_reason(row: dict, margin: float) -> str | None:
    """Why a point is predicted not to fit, or None."""
    check, avail = row["oom_check_bytes"], row["available_bytes"]
    if check > margin * avail:
        return f"predicted {check / GiB:.2f} GiB > {margin:.0%} of {avail / GiB:.2f} GiB available"
    return None


def _measure(grid: _Grid, method: str, n: int, params: dict, flops: int) -> dict:
    """The measured fields of one point, or ``oom`` fields if it ran out of memory."""
    s = grid.settings
    try:
        res = measure_point(grid.model, method, n, repeats=s.repeats,
                            decode_tokens=s.decode_tokens, warmup=s.warmup, params=params,
                            train_length=grid.train_length, seed=s.seed,
                            exact_memory=s.exact_memory, piece_tokens=s.piece_tokens)
    except Exception as exc:             # noqa: BLE001
        if not _is_oom(exc):
            if not s.record_errors:
                raise
            log.exception("%s @ %d failed (recorded as an error row)", method, n)
            return {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
        if grid.device.startswith("cuda"):
            import torch
            torch.cuda.empty_cache()
        log.warning("%s @ %d ran out of memory: %s", method, n, exc)
        return {"oom": True, "oom_reason": f"{type(exc).__name__}: {str(exc)[:300]}"}
    pre = statistics.median(res["prefill_s_all"])
    return {"prefill_s": pre, "prefill_s_all": res["prefill_s_all"],
            "peak_mem_bytes": max(res["peak_mem_all"]), "peak_mem_all": res["peak_mem_all"],
            "mem_method": res["mem_method"],
            "decode_ms_per_token": (1e3 * statistics.median(res["decode_s_all"])
                                    if res["decode_s_all"] else None),
            "decode_ms_all": [1e3 * t for t in res["decode_s_all"]],
            "gflops_achieved": flops / pre / 1e9, "params": res["resolved"].params(),
            "sdpa_backends": res["sdpa_backends"]}


def check_grid(methods, lengths, method_params: dict | None = None) -> None:
    """Raise ValueError for a grid :func:`run` would refuse (no model needed)."""
    check_methods(methods, method_params)
    check_lengths(lengths)


def run(model, methods, lengths, out, *, model_name: str = "model",
        method_params: dict | None = None, train_length: int | None = None,
        settings: Settings = Settings(), deadline: float | None = None,
        point_limit_s: float | None = None, machine: bool = True,
        matmul_size: int | None = None, extra: dict | None = None,
        progress: bool = True) -> list[dict]:
    """Measure every (method, length) and append one JSON line each to ``out``.

    ``method_params``: ``{method: {param: value}}``; ``train_length``: default
    the model's; ``settings``: repeats, decode steps, warm-up, seed, memory
    mode and OOM margin (:class:`Settings`).  ``deadline``
    (``time.monotonic()`` value) and ``point_limit_s``: a point whose
    predicted time (from the same method's earlier lengths) would pass the
    deadline or the limit is not run (a ``skipped`` row; the method's longer
    lengths are skipped too).  ``machine``: write the machine line first
    (``matmul_size``: its matmul size).  ``extra``: fields added to every row.
    With ``exact_memory`` (CPU, :func:`measure_point`) ``predicted_mem_bytes``
    predicts that measurement (no heap fragmentation) while the OOM check uses
    the estimate with fragmentation (``oom_check_bytes``).  Points already in
    ``out`` for the same model, device, dtype and backend are not run again.
    Returns the rows written by this call (machine line first).
    """
    from tqdm.auto import tqdm

    from .application import train_length_of
    method_params = dict(method_params or {})
    check_grid(methods, lengths, method_params)
    out, extra = Path(out), dict(extra or {})
    grid = _Grid(model, train_length or train_length_of(model),
                 _common_fields(model, model_name, extra), settings)
    todo = _todo(out, grid.common, methods, lengths, settings.piece_tokens)
    if not todo:
        return []
    rows = [machine_row(grid.device, grid.common["dtype"], matmul_size, extra,
                        () if matmul_size else model_gemms(model.config))] if machine else []
    for row in rows:
        append_jsonl(out, row)
    _warm_up(model, settings.seed)
    history: dict[str, list[tuple[int, float]]] = {}
    stopped: dict[str, str] = {}
    for m, n in tqdm(todo, desc="bench", disable=not progress, unit="pt"):
        params = method_params.get(m, {})
        row = _plan_point(grid, m, n, params)
        guess = _predict_seconds(history.get(m, []), n)
        why = stopped.get(m) or _skip_reason(guess, settings.repeats + settings.warmup,
                                             deadline, point_limit_s)
        if why is not None:
            stopped[m] = why
            row.update(skipped=why, predicted_prefill_s=guess)
            log.info("skipping %s @ %d: %s", m, n, why)
        elif (reason := _oom_reason(row, settings.margin)) is not None:
            row.update(oom=True, oom_reason=reason)
            log.info("not running %s @ %d: %s", m, n, reason)
        else:
            row.update(_measure(grid, m, n, params, row["useful_flops"]))
            if row["prefill_s"] is not None:
                history.setdefault(m, []).append((n, row["prefill_s"]))
        append_jsonl(out, row)
        rows.append(row)
    return rows


def rows_for(out: "str | Path", model, model_name: str) -> list[dict]:
    """The rows of ``out`` measured on this model, device, dtype and backend,
    and the machine rows."""
    common = _common_fields(model, model_name, {})
    return [r for r in read_jsonl(out)
            if r.get("kind") == "machine" or all(r.get(k) == v for k, v in common.items())]


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform
    return platform.processor() or "cpu"


# -- the table ------------------------------------------------------------------------------

def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _pieces_note(row: dict) -> str:
    """"N pieces of at most S tokens" where the prefill ran in more than one
    forward (rows before ``prefill_pieces`` was recorded: the size alone)."""
    size = row.get("piece_tokens") or row.get("piece_tokens_used")
    if not size:
        return ""
    label = f"{size}" if row.get("piece_tokens") else f"{size} (default)"
    count = row.get("prefill_pieces")
    if count is None:
        return f"pieces of {label}"
    return f"{count} pieces of <= {label}" if count > 1 else ""


def summary_table(rows, matmul_gflops: float | None = None) -> str:
    """A plain-text table of point rows (and the machine's matmul rate)."""
    pts = [r for r in rows if r.get("kind", "point") == "point"]
    if matmul_gflops is None:
        ms = [r["matmul_gflops"] for r in rows if r.get("kind") == "machine"]
        matmul_gflops = ms[-1] if ms else None
    head = (f"{'method':<14}{'length':>8}{'prefill s':>11}{'peak GiB':>10}{'pred GiB':>10}"
            f"{'decode ms':>11}{'GFLOP/s':>9}{'% mm':>6}  note")
    lines = [head, "-" * len(head)]
    for r in sorted(pts, key=lambda r: (r["method"], r["length"])):
        g = r.get("gflops_achieved")
        pct = None if (g is None or not matmul_gflops) else 100 * g / matmul_gflops
        note = "OOM" if r.get("oom") else ("skipped: " + r["skipped"] if r.get("skipped") else
                                           "error: " + r["error"][:60] if r.get("error") else "")
        note = "; ".join(x for x in (_pieces_note(r), note) if x)
        mem = r.get("peak_mem_bytes")
        lines.append(
            f"{r['method']:<14}{r['length']:>8}{_fmt(r.get('prefill_s'), '.3f'):>11}"
            f"{_fmt(None if mem is None else mem / GiB, '.3f'):>10}"
            f"{_fmt(r.get('predicted_mem_bytes', 0) / GiB, '.3f'):>10}"
            f"{_fmt(r.get('decode_ms_per_token'), '.1f'):>11}{_fmt(g, '.1f'):>9}"
            f"{_fmt(pct, '.0f'):>6}  {note}")
    if matmul_gflops:
        lines.append(f"(machine: {matmul_gflops:.1f} GFLOP/s dense matmul; '% mm' = achieved "
                     "useful GFLOP/s as a share of it)")
    return "\n".join(lines)
