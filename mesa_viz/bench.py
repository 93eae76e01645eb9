"""Benchmark: prefill time, peak memory, decode time and FLOP rate by method and length.

``mesa-viz bench --methods origin,mesa --lengths 2048,4096 --out bench.jsonl``

Writes JSON lines as it goes (:func:`mesa_viz.results.append_jsonl`):

* once per run ``{"kind": "machine", "matmul_gflops": ..., "device": ...,
  "threads": ...}``: the machine's dense square matmul rate (best of a few);
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
import logging
import math
import statistics
import time
from pathlib import Path

from .memory import GiB, PeakMemory, available_bytes, estimate_peak_bytes, model_dims
from .methods import Mesa, Method, get_method
from .results import append_jsonl, read_jsonl

__all__ = ["visible_pairs", "prefill_flops", "matmul_gflops", "measure_point", "run_bench",
           "summary_table", "sdpa_choices", "add_arguments", "run", "ALL_METHODS"]

log = logging.getLogger(__name__)

ALL_METHODS = ("origin", "mesa", "rerope", "leaky-rerope", "dynamic-ntk", "streaming-llm",
               "lm-infinite")
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
    m = get_method(method, **(params or {}))
    if m.train_length is None or (isinstance(m, Mesa) and m.prefill_length is None) \
            or train_length is not None:
        T = train_length or m.train_length or dims.max_positions or n
        m = m.resolve(n, int(T))
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


def matmul_gflops(device="cpu", dtype="float32", size: int | None = None,
                  repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of a square ``size x size`` matmul
    (default 2048 on CPU, 8192 on CUDA)."""
    import torch
    dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    size = size or (8192 if str(device).startswith("cuda") else 2048)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device=device, dtype=dt)
    b = torch.randn(size, size, generator=g).to(device=device, dtype=dt)
    with torch.no_grad():
        torch.matmul(a, b)
        _sync(device)
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best / 1e9


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

def _model_device(model) -> str:
    return str(next(model.parameters()).device)


def _dtype_name(model) -> str:
    return str(next(model.parameters()).dtype).replace("torch.", "")


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


def _resolved(state, method, params, n, T):
    if state is not None and state.resolved is not None:
        return state.resolved
    return get_method(method, **params).resolve(n, T, prefill_length=n)


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


def measure_point(model, method: str, length: int, *, repeats: int = 3,
                  decode_tokens: int = 8, warmup: int = 0, params: dict | None = None,
                  train_length: int | None = None, seed: int = 0,
                  record_sdpa: bool = True, exact_memory: bool = True) -> dict:
    """Measure one (method, length): prefill seconds (each timed repeat), peak
    memory net of what was allocated before, decode seconds per greedy step
    and the resolved parameters.  Raises on OOM.

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
    dev = _model_device(model)
    cpu_exact = exact_memory and not dev.startswith("cuda")
    warmup = max(warmup, 1) if cpu_exact else warmup
    T = train_length or train_length_of(model)
    ids = random_ids(model.config.vocab_size, length, seed, dev)
    times, peaks, resolved, sdpa, how = [], [], None, {}, None
    out = None
    with torch.no_grad(), apply(model, method, train_length=T, **params) as state:
        for r in range(warmup + repeats):
            out = None
            exact = cpu_exact and r == 0
            rec = sdpa_choices() if (record_sdpa and r == 0) else contextlib.nullcontext({})
            with rec as counts, PeakMemory(dev, exact=exact) as pm:
                t0 = time.perf_counter()
                out = model(ids, use_cache=True, logits_to_keep=1)
                _sync(dev)
                dt = time.perf_counter() - t0
            if r == 0:
                sdpa = dict(counts)
                resolved = _resolved(state, method, params, length, T)
            if exact or (not cpu_exact and r >= warmup):
                peaks.append(pm.peak_bytes)
                how = pm.method + ("-exact" if exact else "")
            if r >= warmup:
                times.append(dt)
        steps = []
        if decode_tokens > 0:
            cache_arg = _cache_kwarg(model)
            cache = _out_cache(out)
            tok = out.logits[:, -1:].argmax(-1)
            out = None
            for _ in range(decode_tokens):
                t0 = time.perf_counter()
                step = model(tok, use_cache=True, **{cache_arg: cache})
                _sync(dev)
                steps.append(time.perf_counter() - t0)
                tok = step.logits[:, -1:].argmax(-1)
                cache = _out_cache(step)
            del cache, step
    out = None
    return {"prefill_s_all": times, "peak_mem_all": peaks, "decode_s_all": steps,
            "resolved": resolved, "train_length": T, "sdpa_backends": sdpa,
            "mem_method": how}


# -- the grid -------------------------------------------------------------------------------------

def _key(row) -> tuple:
    return (row.get("model"), row.get("device"), row.get("dtype"), row.get("backend"),
            row.get("method"), int(row.get("length", -1)))


def _plan_summary(m: Method):
    if isinstance(m, Mesa):
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


def run_bench(model, methods, lengths, out, *, model_name: str = "model", repeats: int = 3,
              decode_tokens: int = 8, warmup: int = 0, params_by_method: dict | None = None,
              train_length: int | None = None, margin: float = 0.9, seed: int = 0,
              progress: bool = True, deadline: float | None = None,
              point_limit_s: float | None = None, machine: bool = True,
              matmul_size: int | None = None, exact_memory: bool = True,
              extra: dict | None = None) -> list[dict]:
    """Measure every (method, length) and append one JSON line each to ``out``.

    ``deadline`` (``time.monotonic()`` value) and ``point_limit_s``: a point
    whose predicted time (from the same method's earlier lengths) would pass
    the deadline or the limit is not run (a ``skipped`` row; the method's
    longer lengths are skipped too).  ``machine``: write the machine line
    (``matmul_size``: its matmul size).  ``extra``: fields added to every row.
    ``exact_memory`` (CPU): see :func:`measure_point`; ``predicted_mem_bytes``
    then predicts that measurement (no heap fragmentation) while the OOM check
    uses the estimate with fragmentation (``oom_check_bytes``).  Weights are
    paged in and one short forward runs first, so neither counts in the first
    point.
    Returns the rows written by this call (machine line first).
    """
    import torch
    from tqdm.auto import tqdm

    from .application import train_length_of
    out = Path(out)
    dev = _model_device(model)
    dtype = _dtype_name(model)
    backend = model.config._attn_implementation
    T = train_length or train_length_of(model)
    extra = dict(extra or {})
    common = {"device": dev, "dtype": dtype, "model": model_name, "backend": backend, **extra}
    done = {_key(r) for r in read_jsonl(out)
            if r.get("kind", "point") == "point" and not r.get("skipped")}
    grid = [(m, int(n)) for n in lengths for m in methods]
    todo = [(m, n) for m, n in grid if _key({**common, "method": m, "length": n}) not in done]
    rows: list[dict] = []
    if len(todo) < len(grid):
        log.info("resuming %s: %d of %d points already there", out, len(grid) - len(todo),
                 len(grid))
    if not todo:
        return rows
    threads = torch.get_num_threads()
    if machine:
        mrow = {"kind": "machine", "matmul_gflops": matmul_gflops(dev, dtype, matmul_size),
                "device": dev, "dtype": dtype, "threads": threads, "torch": torch.__version__,
                "device_name": (torch.cuda.get_device_name(dev) if dev.startswith("cuda")
                                else _cpu_name()),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
        append_jsonl(out, mrow)
        rows.append(mrow)
        log.info("machine: %.1f GFLOP/s dense %s matmul on %s (%d threads)",
                 mrow["matmul_gflops"], dtype, dev, threads)
    page_in(model)
    with torch.no_grad():                          # one-time allocations (thread pools...)
        model(random_ids(model.config.vocab_size, 16, seed, dev), use_cache=True,
              logits_to_keep=1)
    dims = model_dims(model.config)
    elem = next(model.parameters()).element_size()
    history: dict[str, list[tuple[int, float]]] = {}
    stopped: dict[str, str] = {}
    bar = tqdm(todo, desc="bench", disable=not progress, unit="pt")
    for m, n in bar:
        bar.set_postfix_str(f"{m} @ {n}")
        params = dict((params_by_method or {}).get(m, {}))
        resolved = get_method(m, **params).resolve(n, T, prefill_length=n)
        kw = dict(dtype_bytes=elem, backend=backend, decode_tokens=decode_tokens, device=dev)
        predicted = estimate_peak_bytes(dims, resolved, n, fragmentation=(
            0.0 if exact_memory else None), **kw)
        check = estimate_peak_bytes(dims, resolved, n, **kw)
        avail = available_bytes(dev)
        flops = prefill_flops(dims, resolved, n)
        row = {"kind": "point", "method": m, "length": n, "prefill_s": None,
               "prefill_s_all": None, "peak_mem_bytes": None, "decode_ms_per_token": None,
               "gflops_achieved": None, "useful_flops": flops,
               "attention_pairs": visible_pairs(resolved, n),
               "predicted_mem_bytes": predicted, "oom_check_bytes": check,
               "available_bytes": avail, "oom": False,
               **common, "params": resolved.params(), "plan": _plan_summary(resolved),
               "train_length": T, "threads": threads, "repeats": repeats,
               "decode_tokens": decode_tokens, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        guess = _predict_seconds(history.get(m, []), n)
        why = stopped.get(m)
        if why is None and guess is not None:
            total = guess * (repeats + warmup) * 1.1
            if point_limit_s is not None and guess > point_limit_s:
                why = f"predicted prefill {guess:.1f}s > point limit {point_limit_s:.0f}s"
            elif deadline is not None and time.monotonic() + total > deadline:
                why = f"predicted {total:.1f}s would pass the time budget"
        if why is None and deadline is not None and time.monotonic() > deadline:
            why = "time budget spent"
        if why is not None:
            stopped[m] = why
            row.update(skipped=why, predicted_prefill_s=guess)
            log.info("skipping %s @ %d: %s", m, n, why)
        elif check > margin * avail:
            row["oom"] = True
            row["oom_reason"] = (f"predicted {check / GiB:.2f} GiB > {margin:.0%} of "
                                 f"{avail / GiB:.2f} GiB available")
            log.info("not running %s @ %d: %s", m, n, row["oom_reason"])
        else:
            try:
                res = measure_point(model, m, n, repeats=repeats, decode_tokens=decode_tokens,
                                    warmup=warmup, params=params, train_length=T, seed=seed,
                                    exact_memory=exact_memory)
            except Exception as exc:             # noqa: BLE001
                if not _is_oom(exc):
                    raise
                if dev.startswith("cuda"):
                    torch.cuda.empty_cache()
                row.update(oom=True, oom_reason=f"{type(exc).__name__}: {str(exc)[:300]}")
                log.warning("%s @ %d ran out of memory: %s", m, n, exc)
            else:
                pre = statistics.median(res["prefill_s_all"])
                row.update(
                    prefill_s=pre, prefill_s_all=res["prefill_s_all"],
                    peak_mem_bytes=max(res["peak_mem_all"]),
                    peak_mem_all=res["peak_mem_all"], mem_method=res["mem_method"],
                    decode_ms_per_token=(1e3 * statistics.median(res["decode_s_all"])
                                         if res["decode_s_all"] else None),
                    decode_ms_all=[1e3 * s for s in res["decode_s_all"]],
                    gflops_achieved=flops / pre / 1e9, params=res["resolved"].params(),
                    sdpa_backends=res["sdpa_backends"])
                history.setdefault(m, []).append((n, pre))
        append_jsonl(out, row)
        rows.append(row)
    bar.close()
    return rows


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
        note = "OOM" if r.get("oom") else ("skipped: " + r["skipped"] if r.get("skipped") else "")
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


# -- the command ------------------------------------------------------------------------------

def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser) -> None:
    parser.add_argument("--methods", default=",".join(ALL_METHODS),
                        help=f"comma-separated methods (default all: {','.join(ALL_METHODS)})")
    parser.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)),
                        help="comma-separated input lengths in tokens")
    parser.add_argument("--repeats", type=int, default=3, help="prefills per point (median)")
    parser.add_argument("--warmup", type=int, default=0, help="unmeasured prefills first")
    parser.add_argument("--decode-tokens", type=int, default=8,
                        help="greedy decode steps after the prefill (0: none)")
    parser.add_argument("--out", default="runs/bench.jsonl", help="JSON-lines file (resumed)")
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--model", default=None, help="HF id or path (default SmolLM2-135M-Instruct)")
    g.add_argument("--tiny", action="store_true", help="a random tiny Llama (plumbing test)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="default float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--backend", default="sdpa", choices=("sdpa", "eager"),
                        help="attention implementation the model is loaded with")
    parser.add_argument("--train-length", type=int, default=None,
                        help="T (default the model's max_position_embeddings)")
    parser.add_argument("--params", default=None,
                        help='method parameters as JSON, e.g. \'{"mesa": {"stair": "anchored"}}\'')
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds; points predicted to pass it are skipped")
    parser.add_argument("--figure", default=None, help="also write this HTML figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    import json

    import torch

    from .models import DEFAULT_MODEL, load_model, tiny_model
    methods, lengths = _csv(args.methods), [int(x) for x in _csv(args.lengths)]
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}: allowed {','.join(ALL_METHODS)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("float32" if device == "cpu" else "bfloat16")
    if args.tiny:
        model, _ = tiny_model("llama", attn_implementation=args.backend)
        model = model.to(device=device, dtype=getattr(torch, dtype))
        name = "tiny-llama"
    else:
        model, _ = load_model(args.model, device=device, dtype=dtype,
                              attn_implementation=args.backend)
        name = args.model or DEFAULT_MODEL
    params = json.loads(args.params) if args.params else None
    deadline = None if args.time_budget is None else time.monotonic() + args.time_budget
    run_bench(model, methods, lengths, args.out, model_name=name, repeats=args.repeats,
              decode_tokens=args.decode_tokens, warmup=args.warmup, params_by_method=params,
              train_length=args.train_length, seed=args.seed, progress=not args.no_progress,
              deadline=deadline)
    common = {"model": name, "device": _model_device(model), "dtype": _dtype_name(model),
              "backend": model.config._attn_implementation}
    rows = [r for r in read_jsonl(args.out)
            if r.get("kind") == "machine" or all(r.get(k) == v for k, v in common.items())]
    if args.figure:
        from . import plots
        pts = [r for r in rows if r.get("kind", "point") == "point" and not r.get("skipped")]
        plots.save_html(plots.bench_figure(pts, title=f"{name} on {common['device']} "
                                           f"({common['dtype']})"), args.figure,
                        title="mesa_viz bench")
    return summary_table(rows)
