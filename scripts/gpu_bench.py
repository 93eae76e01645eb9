#!/usr/bin/env python3
"""GPU benchmark: Origin vs Mesa prefill/decode time and peak memory from 8k to 256k
tokens, then a 1,048,576-token Mesa prefill with 16 decoded tokens, on a random-weight
~1.1B Llama (bf16, SDPA), one command, each row beside its floor.

What it does
  * builds ``LlamaConfig(hidden 2048, MLP 5632, 22 layers, 32 heads / 4 KV heads,
    vocab 32000, max_position_embeddings 8192)`` (TinyLlama-1.1B's shape; T = 8192)
    with random weights straight on the GPU (no hub, no download);
  * runs ``mesa_viz.analyses.bench.run`` for origin and mesa at 8k, 16k, 32k, 64k, 128k,
    256k: median prefill of ``--repeats`` after ``--warmup``, peak CUDA memory
    net of the weights (``max_memory_allocated``), decode ms/token, useful GFLOP/s,
    and which SDPA backend each attention call got (``sdpa_backends`` per row);
  * then ``--long-length`` (default 1,048,576; any length up to it works through
    ``--lengths`` too): one Mesa prefill and ``--long-decode`` (16) decoded tokens,
    time and peak memory; origin's row there comes from the memory estimate
    (``oom: true`` when it would not fit the card, else run if its predicted time fits);
  * prints every row beside its floor (``bench.floors``): the useful FLOPs at the
    measured matmul rate (the best of several square sizes and the model's own
    linear shapes), and for decode the bytes a step must read (weights, KV cache,
    Mesa's rotated keys) at the measured memory bandwidth (``$OUT/floors.txt``);
  * ``--fused-off REASON``: the fused Triton launch off for the run (the torch kernels
    serve; rows say ``fused_off``).  The kernels' correctness on the device is not
    this script's: it is the ``gpu`` test layer (tests/gpu: every method on CUDA
    against the CPU, Mesa's fused launch at long positions), which
    scripts/gpu_bench.sh runs first, passing ``--fused-off`` here where it fails.
    A point that raises is written with its ``error`` and the grid goes on;
  * ``--long-memory-cap-gib 79.6`` holds the process to an H100's memory for the long
    row on a larger card (the out-of-memory check holds the same cap);
    ``--piece-tokens N`` sets the size of Mesa's prefill pieces (rows say it);
  * SDPA backends: flash attention first (``torch.nn.attention.sdpa_kernel`` with
    priority FLASH > EFFICIENT > CUDNN > MATH).  Origin's causal calls and Mesa's
    first and middle chunks run flash; calls with masks cannot, and fall back (the
    rows' ``sdpa_backends`` say to which).  ``--flash-only`` allows flash alone;
  * ``--profile LENGTH``: top operators of one Mesa prefill of LENGTH tokens and of two
    decode steps after it (``$OUT/profile.txt``);
  * writes JSON lines to ``$OUT/gpu_bench.jsonl`` as it goes (one machine line with
    the bf16 matmul TFLOP/s, one line per point) and ``$OUT/gpu_bench_summary.txt``;
  * time guard: ``--budget`` seconds in all (default 400, model build included) and
    ``--point-limit`` seconds per prefill; a point whose time, extrapolated from the
    method's shorter lengths, would pass either is skipped with the method's longer
    lengths (``skipped`` rows).  Predicted-OOM points are written, not run.

How to run it with the device tool (earlier runs: benchmarks/gpu/<card>-run*/)
  Here, once:   bash scripts/fetch_gpu_wheels.sh      # transformers 5.24 + regex into .whl/
  Then:         run(command="bash scripts/gpu_bench.sh", carry=[".whl"], timeout_s=540)
  or by hand:   run(command="python3 -m pip install -q --no-index --no-deps --no-compile
                  --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export
                  PYTHONPATH=/tmp/site; PYTHONUNBUFFERED=1 python3 scripts/gpu_bench.py
                  --out $OUT", carry=[".whl"], timeout_s=540)
  The wrapper (first form) installs the wheels, runs ``python3 -m pytest tests/gpu``
  (log and JUnit XML to $OUT/gpu_tests.log, .xml), then this script, with ``--fused-off``
  naming the failed tests where they failed (``MESA_VIZ_GPU_TESTS=0``: no tests; by
  hand, as above, they are not run).
  The device image has torch with CUDA but transformers 5.17 (mesa_viz needs >=5.20,<5.25):
  without the carried wheels this script stops at once with a message saying so.
  The results come back as $OUT/gpu_bench.jsonl; draw them here (plotly: not on the device)
  with ``mesa_viz.plots.bench_figure([r for r in mesa_viz.runs.read_jsonl(path)
  if r["kind"] == "point"])``.

Here on CPU (plumbing test, seconds):  python scripts/gpu_bench.py --tiny --out /tmp/gb
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

START = time.monotonic()

GPU_CONFIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                  num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                  max_position_embeddings=8192, rope_theta=10000.0, rms_norm_eps=1e-5,
                  tie_word_embeddings=False)
TINY_CONFIG = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                   rope_theta=10000.0)
GPU_LENGTHS = "8192,16384,32768,65536,131072,262144"
TINY_LENGTHS = "128,256,512,1024"
MAX_LENGTH = 1_048_576


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "out",
                   help="output folder (default $OUT, else ./out)")
    p.add_argument("--tiny", "--dry-run", dest="tiny", action="store_true",
                   help="tiny config, short lengths, CPU allowed (test the script here)")
    p.add_argument("--methods", default="origin,mesa")
    p.add_argument("--lengths", default=None, help=f"default {GPU_LENGTHS} (tiny: {TINY_LENGTHS})")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default 22)")
    p.add_argument("--kv-heads", type=int, default=None, help="KV heads (default 4)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--decode-tokens", type=int, default=8)
    p.add_argument("--long-length", type=int, default=None,
                   help=f"the Mesa-only long row (default {MAX_LENGTH}; tiny 4096; 0: none)")
    p.add_argument("--long-decode", type=int, default=16, help="decoded tokens of the long row")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole script (default 400; tiny 120)")
    p.add_argument("--point-limit", type=float, default=None,
                   help="max predicted seconds of one prefill (default 60; tiny 30)")
    p.add_argument("--flash-only", action="store_true", help="allow the flash backend alone")
    p.add_argument("--device", default=None)
    p.add_argument("--profile", type=int, default=0, metavar="LENGTH",
                   help="after the grid, profile one Mesa prefill of LENGTH tokens and two "
                        "decode steps (top kernels to $OUT/profile.txt)")
    p.add_argument("--piece-tokens", default=None, metavar="N[,N...]",
                   help="most tokens one forward of Mesa's prefill in pieces holds (default: "
                        "apply's: half the training length, at least 16,384 on a GPU; rows say "
                        "it); more than one value: the grid with the first, then Mesa's points "
                        "again with each other (an A/B in one call)")
    p.add_argument("--kernel-times", default=None, metavar="N[,N...]",
                   help="after the grid, time Mesa's two Triton launches alone at these key "
                        "counts under a few launch settings (rows kind kernel-time; needs CUDA "
                        "or TRITON_INTERPRET=1)")
    p.add_argument("--decode-ab", default=None, metavar="N[,N...]",
                   help="after the grid, origin's and Mesa's decode at these lengths one step "
                        "of each in turn (--decode-tokens steps each; rows kind decode-ab with "
                        "the paired ratio)")
    p.add_argument("--prefill-ab", default=None, metavar="N[,N...]",
                   help="after the grid, origin's and Mesa's prefills at these lengths taken in "
                        "turn (two warm-up rounds, then --prefill-ab-rounds; rows kind "
                        "prefill-ab with the paired ratio)")
    p.add_argument("--prefill-ab-rounds", type=int, default=5, metavar="N")
    p.add_argument("--fused-off", default=None, metavar="REASON",
                   help="turn the fused Triton launch off for the run (the torch kernels "
                        "serve; rows say fused_off: REASON); scripts/gpu_bench.sh passes it "
                        "where tests/gpu failed")
    p.add_argument("--long-memory-cap-gib", type=float, default=None, metavar="GIB",
                   help="cap this process's CUDA memory at GIB for the long row "
                        "(torch.cuda.set_per_process_memory_fraction), e.g. 79.6 to hold an "
                        "H200 to an H100's 80 GB")
    return p.parse_args(argv)


def check_env(tiny: bool):
    """torch present (with CUDA unless --tiny) and transformers in the tested range."""
    try:
        import torch
    except ImportError:
        sys.exit("gpu_bench: torch is not installed here; this script expects the device "
                 "image's torch with CUDA (it does not carry torch)")
    if not tiny and not torch.cuda.is_available():
        sys.exit(f"gpu_bench: torch {torch.__version__} sees no CUDA device; run it on the GPU "
                 "machine, or pass --tiny to test the plumbing on CPU")
    try:
        import transformers
    except ImportError:
        sys.exit("gpu_bench: transformers is missing: run `bash scripts/fetch_gpu_wheels.sh` "
                 "here and carry .whl (see this script's docstring)")
    from mesa_viz.models.compat import check_transformers
    try:
        check_transformers()
    except RuntimeError as exc:
        sys.exit(f"gpu_bench: {exc}.\nOn the device machine: run `bash scripts/fetch_gpu_wheels.sh`"
                 " here first, then call with carry=['.whl'] and install them to /tmp/site "
                 "(scripts/gpu_bench.sh does it).")
    return torch, transformers


#: Launch settings timed by --kernel-times: (block_m, block_n, num_warps) of the rows
#: launch, (block_n, num_warps, programs) of the decode launch; the first are the defaults
#: at the benchmark's head size, 64 (``mesa_viz.kernels.fused.triton.ROWS_LAUNCH``,
#: ``DECODE_LAUNCH``).
ROWS_SETTINGS = ((64, 64, 4), (128, 64, 8))
DECODE_SETTINGS = ((32, 4, 512), (64, 4, 512), (32, 4, 2048))


def _time_ms(torch, fn, device: str, reps: int = 5) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` calls after two (CUDA events)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        if device.startswith("cuda"):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2]


def kernel_times(torch, device: str, lengths: list[int], cfg: dict, T: int) -> list[dict]:
    """Mesa's two Triton launches alone, at the model's attention shape (bf16,
    random q/k/v): the last chunk's rows over ``n`` keys (``fused_attention``,
    keys rotated before it included) and one decode query (``fused_decode``,
    with its fold), under each of :data:`ROWS_SETTINGS` and
    :data:`DECODE_SETTINGS`; rows ``kind: kernel-time`` with milliseconds."""
    from mesa_viz import kernels
    from mesa_viz.kernels.fused import triton as ts
    from mesa_viz.methods import get_method
    h, kvh = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg["hidden_size"] // h
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float32,
                                                    device=device) / d))
    rows = []
    for n in lengths:
        m = get_method("mesa", train_length=T).resolve(n, prefill_length=n)
        s = m.plan().last_start
        g = torch.Generator(device=device).manual_seed(n)
        q = torch.randn(1, h, n - s, d, generator=g, device=device).to(torch.bfloat16)
        k = torch.randn(1, kvh, n, d, generator=g, device=device).to(torch.bfloat16)
        v = torch.randn(1, kvh, n, d, generator=g, device=device).to(torch.bfloat16)
        last, one = kernels.fused_rules(m, s), kernels.fused_rules(m, n - 1)
        for bm, bn, w in ROWS_SETTINGS:
            ms = _time_ms(torch, lambda: ts.fused_attention(
                q, k, v, s, inv, d ** -0.5, last, block_m=bm, block_n=bn, num_warps=w), device)
            rows.append({"kind": "kernel-time", "launch": "rows", "n": n, "rows": n - s,
                         "block_m": bm, "block_n": bn, "num_warps": w, "ms": ms})
        for bn, w, programs in DECODE_SETTINGS:
            ms = _time_ms(torch, lambda: ts.fused_decode(
                q[:, :, -1:], k, v, n - 1, inv, d ** -0.5, one, programs=programs, block_n=bn,
                num_warps=w), device)
            rows.append({"kind": "kernel-time", "launch": "decode", "n": n, "rows": 1,
                         "block_n": bn, "num_warps": w, "programs": programs, "ms": ms})
        for r in rows[-len(ROWS_SETTINGS) - len(DECODE_SETTINGS):]:
            print("gpu_bench: kernel-time " + json.dumps(r), flush=True)
        q = k = v = None                    # freed before the next length's (the lambdas read them)
    return rows


def ab_rows(torch, device: str, label: str, rows, out: Path, extra: dict) -> None:
    """Save the rows of an A/B (``bench.decode_ab``, ``bench.prefill_ab``: two
    methods taken in turn, so the host's drift between points does not enter
    the ratio) as they come, print each (without its per-step list) and empty
    the device's cache after it."""
    from mesa_viz.runs import append_jsonl
    for row in rows:
        append_jsonl(out, {**row, **extra})
        print(f"gpu_bench: {label} " + json.dumps({k: v for k, v in row.items()
                                                  if k not in ("ms_all", "s_all")}), flush=True)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def fused_off(why: str) -> None:
    """Turn the fused launch off for this process (``kernels.dispatch.use_fused``
    is the one decision for it), saying why: the run then measures the torch kernels."""
    from mesa_viz.kernels import dispatch
    dispatch.use_fused = lambda q, rope: False
    print(f"gpu_bench: fused launch OFF for this run: {why}", flush=True)


def profile_mesa(torch, model, length: int, device: str) -> str:
    """Top operators (device time) of one Mesa prefill of ``length`` tokens and of two
    decode steps after it."""
    from torch.profiler import ProfilerActivity, profile

    from mesa_viz.analyses.bench.machine import sync
    from mesa_viz.analyses.bench.point import _cache_kwarg, out_cache, random_ids
    from mesa_viz.runtime import apply
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda")
                                     else [])
    sort = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    ids = random_ids(model.config.vocab_size, length, 0, device)
    texts = []
    with torch.no_grad(), apply(model, "mesa"):
        model(ids, use_cache=True, logits_to_keep=1)                     # warm-up
        sync(device)
        t0 = time.perf_counter()
        with profile(activities=acts) as prof:
            out = model(ids, use_cache=True, logits_to_keep=1)
            sync(device)
        wall = time.perf_counter() - t0
        texts += [f"== mesa prefill of {length} tokens ({wall:.3f} s wall under the profiler; "
                  "compare the device time total: the rest is the host's) ==",
                  prof.key_averages().table(sort_by=sort, row_limit=18)]
        tok, cache = out.logits[:, -1:].argmax(-1), out_cache(out)
        with profile(activities=acts) as prof:
            for _ in range(2):
                step = model(tok, use_cache=True, **{_cache_kwarg(model): cache})
                tok, cache = step.logits[:, -1:].argmax(-1), out_cache(step)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        texts += [f"== mesa: two decode steps after {length} tokens ==",
                  prof.key_averages().table(sort_by=sort, row_limit=18)]
    return "\n".join(texts)


def build_model(torch, cfg_kw: dict, device: str, dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig
    cfg = LlamaConfig(**cfg_kw)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=dtype)
    model = model.to(device=device, dtype=dtype)          # no-op when built in place
    dev = next(model.parameters()).device
    if dev.type != torch.device(device).type:
        sys.exit(f"gpu_bench: the model is on {dev}, not {device}")
    return model.eval()


@contextlib.contextmanager
def sdpa_policy(torch, flash_only: bool, device: str):
    """Flash first; fall back (efficient, cuDNN, math) where a call's shape or mask needs."""
    if not device.startswith("cuda"):
        yield "cpu-default"
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel
    if flash_only:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            yield "flash-only"
        return
    order = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
             SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]
    try:
        cm = sdpa_kernel(order, set_priority=True)
        name = "flash>efficient>cudnn>math"
    except TypeError:                                   # older torch: no priority argument
        cm = sdpa_kernel(order)
        name = "flash,efficient,cudnn,math (torch's order)"
    with cm:
        yield name


def long_rows(torch, model, name: str, out: Path, length: int, args, device: str,
              cfg: dict) -> list:
    """The long row: one Mesa prefill of ``length`` tokens and ``--long-decode``
    tokens; origin's row at that length from the memory estimate (``oom``) unless
    it fits and its predicted time passes the point limit (then ``skipped``)."""
    from mesa_viz.analyses import bench
    if not 1 <= length <= MAX_LENGTH:
        sys.exit(f"gpu_bench: --long-length {length}: allowed 1..{MAX_LENGTH}")
    cap = memory_cap(torch, args.long_memory_cap_gib, device)
    settings = bench.Settings(repeats=1, warmup=0, decode_tokens=args.long_decode,
                              record_errors=True, memory_cap_bytes=cap,
                              piece_tokens=args.piece_tokens)
    extra = {"script": "gpu_bench", "config": cfg, "stage": "long", **args.row_extra}
    if cap:
        extra["memory_cap_bytes"] = cap
    got = bench.run(model, ["mesa"], [length], out, model_name=name, settings=settings,
                    progress=False, machine=False, extra=extra)
    return got + bench.run(model, ["origin"], [length], out, model_name=name, settings=settings,
                           progress=False, machine=False, extra=extra,
                           deadline=origin_deadline(model, out, name, length, device,
                                                    30.0 if args.tiny else 120.0, cap))


def memory_cap(torch, gib: float | None, device: str) -> int | None:
    """Hold this process's CUDA allocations to ``gib`` GiB (the caching
    allocator refuses beyond it as out of memory); the cap in bytes, or None."""
    if not gib or not device.startswith("cuda"):
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    cap = int(gib * 2 ** 30)
    if cap >= total:
        print(f"gpu_bench: memory cap {gib} GiB >= the card's {total / 2**30:.1f} GiB: none set",
              flush=True)
        return None
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(cap / total, torch.device(device).index or 0)
    print(f"gpu_bench: CUDA memory capped at {gib} GiB of {total / 2**30:.1f} GiB for the long "
          "row", flush=True)
    return cap


def origin_deadline(model, out: Path, name: str, length: int, device: str, limit: float,
                    cap: int | None = None):
    """None (run it, or let ``bench.run`` write it as out of memory: its
    check holds the same ``cap``) where the memory estimate says origin does
    not fit (``memory.available_bytes`` under ``cap``) or its time predicted
    from its grid rows is within ``limit`` seconds; a deadline already past
    otherwise, so its row is written as skipped with its estimate."""
    from mesa_viz.analyses import bench
    from mesa_viz.analyses.bench.grid import _predict_seconds
    from mesa_viz.runtime import memory
    est = memory.estimate_peak_bytes(model.config, "origin", length, dtype_bytes=2,
                                     device=device, decode_tokens=16)
    if est > 0.9 * memory.available_bytes(device, cap=cap):
        return None
    history = [(r["length"], r["prefill_s"]) for r in bench.rows_for(out, model, name)
               if r.get("method") == "origin" and r.get("prefill_s")]
    guess = _predict_seconds(history, length)
    return None if guess is not None and guess <= limit else time.monotonic() - 1


def floors_table(rows, config, n_params: int) -> str:
    """Every measured row beside its floor (``bench.floors``)."""
    from mesa_viz.analyses import bench
    from mesa_viz.analyses.bench.rows import _fmt, _pieces_note
    machine = next((r for r in rows if r.get("kind") == "machine"), None)
    if machine is None:
        return "(no machine row: floors not computed)"
    lines = [f"{'method':<8}{'length':>9}{'prefill s':>11}{'floor s':>9}{'x floor':>8}"
             f"{'decode ms':>11}{'floor ms':>10}{'x floor':>8}  note"]
    for r in rows:
        if r.get("kind") != "point":
            continue
        f = bench.floors(r, machine, config, n_params)
        pre, dec = r.get("prefill_s"), r.get("decode_ms_per_token")
        note = "OOM" if r.get("oom") else (r.get("skipped") or r.get("error") or "")
        note = "; ".join(x for x in (_pieces_note(r), note) if x)
        lines.append(
            f"{r['method']:<8}{r['length']:>9}{_fmt(pre, '.3f'):>11}"
            f"{f['prefill_floor_s']:>9.3f}{_fmt(pre and pre / f['prefill_floor_s'], '.1f'):>8}"
            f"{_fmt(dec, '.1f'):>11}{_fmt(f.get('decode_floor_ms'), '.2f'):>10}"
            f"{_fmt(dec and f.get('decode_floor_ms') and dec / f['decode_floor_ms'], '.1f'):>8}"
            f"  {note}")
    lines.append(f"(floors: useful FLOPs at {machine['matmul_gflops']:.0f} GFLOP/s, decode bytes "
                 f"at {machine.get('memory_gbps', 0):.0f} GB/s)")
    return "\n".join(lines)


def int_list(flag: str, text: str, high: int | None = None) -> list[int]:
    """A comma-separated list of integers ``>= 1`` (``<= high`` where given);
    exits naming a bad one, before anything runs."""
    values = []
    for part in str(text).split(","):
        try:
            value = int(part)
        except ValueError:
            value = 0
        if value < 1 or (high is not None and value > high):
            allowed = ">= 1" if high is None else f"allowed 1..{high}"
            sys.exit(f"gpu_bench: {flag} {text!r}: {part!r} is not an integer {allowed}")
        values.append(value)
    return values


def piece_sizes(text: str | None) -> list:
    """``--piece-tokens``: ``[None]`` (apply's default) or the listed sizes."""
    return int_list("--piece-tokens", text) if text else [None]


def main(argv=None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch, transformers = check_env(args.tiny)
    from mesa_viz.analyses import bench
    device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    cfg = dict(TINY_CONFIG if args.tiny else GPU_CONFIG)
    if args.layers:
        cfg["num_hidden_layers"] = args.layers
    if args.kv_heads:
        cfg["num_key_value_heads"] = args.kv_heads
    lengths = int_list("--lengths", args.lengths or (TINY_LENGTHS if args.tiny else GPU_LENGTHS),
                       MAX_LENGTH)
    ab_lengths = int_list("--decode-ab", args.decode_ab, MAX_LENGTH) if args.decode_ab else []
    prefill_ab_lengths = int_list("--prefill-ab", args.prefill_ab, MAX_LENGTH) \
        if args.prefill_ab else []
    int_list("--prefill-ab-rounds", str(args.prefill_ab_rounds))
    kernel_keys = int_list("--kernel-times", args.kernel_times, MAX_LENGTH) \
        if args.kernel_times else []
    pieces = piece_sizes(args.piece_tokens)
    args.piece_tokens = pieces[0]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    budget = args.budget if args.budget is not None else (120.0 if args.tiny else 400.0)
    point_limit = args.point_limit if args.point_limit is not None else (
        30.0 if args.tiny else 60.0)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "gpu_bench.jsonl"

    print(f"gpu_bench: torch {torch.__version__} (CUDA {torch.version.cuda}), transformers "
          f"{transformers.__version__}, device {device}"
          + (f" = {torch.cuda.get_device_name(0)}" if device.startswith("cuda") else ""),
          flush=True)
    args.row_extra = {}
    if args.fused_off:
        fused_off(args.fused_off)
        args.row_extra["fused_off"] = args.fused_off
    dtype = torch.bfloat16
    t0 = time.monotonic()
    model = build_model(torch, cfg, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    name = f"random-llama-{n_params / 1e9:.2f}B" if not args.tiny else "random-llama-tiny"
    print(f"gpu_bench: built {name} ({n_params / 1e6:.1f}M parameters, "
          f"{cfg['num_hidden_layers']} layers, {cfg['num_key_value_heads']} KV heads) in "
          f"{time.monotonic() - t0:.1f}s; lengths {lengths}; budget {budget:.0f}s",
          flush=True)
    with sdpa_policy(torch, args.flash_only, device) as policy:
        settings = bench.Settings(repeats=args.repeats, decode_tokens=args.decode_tokens,
                                  warmup=args.warmup, record_errors=True,
                                  piece_tokens=args.piece_tokens)
        extra = {"script": "gpu_bench", "sdpa_policy": policy, "config": cfg,
                 "n_params": n_params, **args.row_extra}
        rows = bench.run(
            model, methods, lengths, out, model_name=name, settings=settings, progress=False,
            deadline=START + budget, point_limit_s=point_limit,
            matmul_size=256 if args.tiny else None, extra=extra)
        for size in pieces[1:] if "mesa" in methods else []:   # the A/B: Mesa, other pieces
            rows += bench.run(
                model, ["mesa"], lengths, out, model_name=name,
                settings=dataclasses.replace(settings, piece_tokens=size), progress=False,
                deadline=START + budget, point_limit_s=point_limit, machine=False, extra=extra)
    long_n = args.long_length if args.long_length is not None else (
        4096 if args.tiny else MAX_LENGTH)
    if long_n:
        rows += long_rows(torch, model, name, out, long_n, args, device, cfg)
    for r in rows:
        if r.get("kind") == "point":
            print(json.dumps({k: r.get(k) for k in (
                "method", "length", "prefill_s", "peak_mem_bytes", "decode_ms_per_token",
                "gflops_achieved", "oom", "skipped", "sdpa_backends", "piece_tokens")}),
                flush=True)
    from mesa_viz.runs import append_jsonl
    T = cfg["max_position_embeddings"]
    if ab_lengths:
        ab_rows(torch, device, "decode-ab", bench.decode_ab(
            model, ["origin", "mesa"], ab_lengths, max(2, args.decode_tokens), train_length=T,
            piece_tokens=args.piece_tokens), out, args.row_extra)
    if prefill_ab_lengths:
        ab_rows(torch, device, "prefill-ab", bench.prefill_ab(
            model, ["origin", "mesa"], prefill_ab_lengths, args.prefill_ab_rounds, warmup=2,
            train_length=T, piece_tokens=args.piece_tokens), out, args.row_extra)
    for r in kernel_times(torch, device, kernel_keys, cfg, T):
        append_jsonl(out, {**r, **args.row_extra})
    if args.profile:
        text = profile_mesa(torch, model, args.profile, device)
        (out_dir / "profile.txt").write_text(text + "\n")
        print(text, flush=True)
    table = bench.summary_table(rows)
    (out_dir / "gpu_bench_summary.txt").write_text(table + "\n")
    print(table)
    limits = floors_table(rows, model.config, n_params)
    (out_dir / "floors.txt").write_text(limits + "\n")
    print(limits)
    print(f"gpu_bench: done in {time.monotonic() - START:.0f}s; rows in {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
