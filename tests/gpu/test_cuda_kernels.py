"""The CUDA kernels on a GPU: every method's attention on the device against the
CPU's, and Mesa's fused launch at long positions against its torch kernel.

On CUDA the kernels take branches the CPU suite (``tests/unit/kernels``) reaches
only by forcing them: near and far key sets through one SDPA call (head dimension
doubled), matmul scores for calls with few query rows, Mesa's middle chunks
through the causal kernel, a decode step's output split by stair run, and the
Triton launches (``mesa_viz.kernels.fused.triton``) where triton imports.

* ``test_method_on_device[<method>]``: every method of ``METHODS`` (small
  windows and sinks) and Mesa's anchored stair (``mesa-anchored``), random
  q/k/v (8 heads, 2 KV heads, head size 64), ``N`` tokens past ``T``: the
  prefill, the last piece (Mesa's last chunk as its own call) and one decode
  step through ``kernels.attend``, the device against the CPU in fp32 (within
  1e-3) and the device in bf16 against the CPU's fp32, relative to the
  output's largest magnitude (within 0.05);
* ``test_mesa_at_long_positions``: Mesa's last rows and one decode step over
  ``MESA_VIZ_GPU_LONG`` keys (default 1,048,576: positions as large as the
  benchmark's long row, where a rotation's angle is largest; a smaller card
  can run it smaller), ``kernels.attend`` (the fused launch) against the
  method's own torch kernel ``kernels.kernel_for(m).run(...)`` on the device:
  fp32 within 1e-3, bf16 within 3 % of the output's largest magnitude;
* ``test_fused_launch_serves_on_cuda``: where triton imports,
  ``kernels.dispatch.use_fused`` says yes for CUDA tensors, ``kernels.fused_rules``
  gives rules, and Mesa's last chunk and a decode step go through the Triton
  launches.

The module is skipped without CUDA.  ``MESA_VIZ_GPU_DEVICE=cpu`` rehearses it on
the CPU: no skip, the "device" is the CPU (the fp32 comparisons are then
trivial, the bf16 ones are not), and the fused-launch test skips itself::

    MESA_VIZ_GPU_DEVICE=cpu MESA_VIZ_GPU_LONG=20000 python -m pytest tests/gpu

``scripts/gpu_bench.sh`` runs this folder first on the device machine and runs
the benchmark with the fused launch off where it fails.  Imports torch, numpy,
pytest and mesa_viz's kernels and methods only (the GPU machine has no plotly).
"""

from __future__ import annotations

import os

import pytest
import torch

from mesa_viz import kernels
from mesa_viz.methods import METHODS, get_method

#: Where the kernels run: CUDA, or the CPU for a rehearsal (module doc).
DEVICE = os.environ.get("MESA_VIZ_GPU_DEVICE", "cuda")
#: Keys of the long check (module doc).
LONG = int(os.environ.get("MESA_VIZ_GPU_LONG", 1_048_576))

pytestmark = pytest.mark.skipif(
    DEVICE.startswith("cuda") and not torch.cuda.is_available(),
    reason="no CUDA device (MESA_VIZ_GPU_DEVICE=cpu rehearses these tests on the CPU)")

N, T = 1500, 256                      # prompt tokens past the training length
H, KVH, D = 8, 2, 64                  # full rotary, power-of-two head size: fused-eligible
STEPS = ("prefill", "last-piece", "decode")
FP32_TOL, BF16_REL_TOL = 1e-3, 0.05
LONG_FP32_TOL, LONG_BF16_REL_TOL = 1e-3, 0.03


def checked_methods() -> dict:
    """Every method of ``METHODS`` (small windows and sinks, so ``N`` passes
    them) and Mesa's anchored stair: name -> (method, parameters)."""
    small = {"rerope": {"window": 96}, "leaky-rerope": {"window": 96},
             "streaming-llm": {"sink_tokens": 4}, "lm-infinite": {"sink_tokens": 4}}
    out = {name: (name, small.get(name, {})) for name in METHODS}
    out["mesa-anchored"] = ("mesa", {"stair": "anchored"})
    return out


CHECKED = checked_methods()


def inv_freq(device="cpu"):
    return 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32, device=device) / D))


@pytest.fixture(scope="module")
def qkv():
    """Random fp32 q/k/v on the CPU, ``N + 1`` positions (a decode step after ``N``)."""
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, H, N + 1, D, generator=g), torch.randn(1, KVH, N + 1, D, generator=g),
            torch.randn(1, KVH, N + 1, D, generator=g))


def step_call(base: str, params: dict, step: str):
    """``(method resolved for the step, i0, query rows)``: the prefill from 0,
    the last piece (Mesa's last chunk; else the last 300 rows), one decode row."""
    m = get_method(base, train_length=T, **params).resolve(N + (step == "decode"),
                                                           prefill_length=N)
    i0 = {"prefill": 0, "decode": N,
          "last-piece": m.plan().last_start if m.chunked else N - 300}[step]
    return m, i0, 1 if step == "decode" else N - i0


def device_diffs(base: str, params: dict, q, k, v) -> dict:
    """``{step: largest |device - CPU| in fp32, step + "-bf16-rel": largest
    |device bf16 - CPU fp32| over the CPU output's largest magnitude}``."""
    diffs, inv, dev_inv = {}, inv_freq(), inv_freq(DEVICE)
    for step in STEPS:
        m, i0, lq = step_call(base, params, step)
        args = (q[:, :, i0:i0 + lq], k[:, :, :i0 + lq], v[:, :, :i0 + lq])
        cpu = kernels.attend(m, *args, i0, kernels.Rope(inv), D ** -0.5)
        dev = kernels.attend(m, *(x.to(DEVICE) for x in args), i0, kernels.Rope(dev_inv),
                             D ** -0.5)
        diffs[step] = float((dev.cpu() - cpu).abs().max())
        half = kernels.attend(m, *(x.to(DEVICE, torch.bfloat16) for x in args), i0,
                              kernels.Rope(dev_inv), D ** -0.5)
        diffs[step + "-bf16-rel"] = float((half.float().cpu() - cpu).abs().max()
                                          / cpu.abs().max().clamp_min(1e-6))
        del dev, half
    return diffs


@pytest.mark.parametrize("name", list(CHECKED))
def test_method_on_device(name, qkv):
    base, params = CHECKED[name]
    diffs = device_diffs(base, params, *qkv)
    bad = {key: x for key, x in diffs.items()
           if not x <= (BF16_REL_TOL if key.endswith("-bf16-rel") else FP32_TOL)}
    assert not bad, f"{name} on {DEVICE}: out of tolerance {bad}; all {diffs}"


def long_train_length(n: int) -> int:
    """Mesa's training length for ``n`` keys: 8192 (the benchmark model's) from
    65,536 keys on, else ``n / 8`` (at least 256), so a small ``n`` is chunked too."""
    return 8192 if n >= 65536 else max(256, n // 8)


def test_mesa_at_long_positions():
    n, rows = LONG, 64
    m = get_method("mesa", train_length=long_train_length(n)).resolve(n, prefill_length=n)
    i0 = max(m.plan().last_start, n - rows)
    rows = n - i0
    assert kernels.fused_rules(m, i0) is not None, "Mesa's last chunk has no fused rules"
    g = torch.Generator(device=DEVICE).manual_seed(0)
    inv = inv_freq(DEVICE)
    seen, bad = {}, {}
    for dt, tol in ((torch.float32, None), (torch.bfloat16, LONG_BF16_REL_TOL)):
        q = torch.randn(1, H, rows, D, generator=g, device=DEVICE).to(dt)
        k = torch.randn(1, KVH, n, D, generator=g, device=DEVICE).to(dt)
        v = torch.randn(1, KVH, n, D, generator=g, device=DEVICE).to(dt)
        name = str(dt).replace("torch.", "")
        for what, a in (("rows", i0), ("decode", n - 1)):
            qa = q[:, :, a - i0:]
            tables = kernels.RopeTables(kernels.Rope(inv), m)
            ref = kernels.kernel_for(m).run(m, qa, k, v, a, tables, D ** -0.5, "sdpa").float()
            got = kernels.attend(m, qa, k, v, a, kernels.Rope(inv), D ** -0.5).float()
            diff, top = float((got - ref).abs().max()), float(ref.abs().max())
            seen[f"{what}-{name}"] = (diff, top)
            if not diff <= (LONG_FP32_TOL if tol is None else tol * top):
                bad[f"{what}-{name}"] = (diff, top)
            del ref, got
        del q, k, v
    if DEVICE.startswith("cuda"):
        torch.cuda.empty_cache()
    assert not bad, (f"Mesa at {n} keys (rows {i0}..{n - 1}) on {DEVICE}: (max |diff|, "
                     f"max |out|) out of tolerance {bad}; all {seen}")


def test_fused_launch_serves_on_cuda(monkeypatch):
    if not DEVICE.startswith("cuda"):
        pytest.skip(f"the fused launch serves CUDA tensors only (device {DEVICE})")
    pytest.importorskip("triton")
    from mesa_viz.kernels.fused import triton as launches
    calls = []

    def counted(fn):
        def wrapped(*args, **kwargs):
            calls.append(fn.__name__)
            return fn(*args, **kwargs)
        return wrapped
    monkeypatch.setattr(launches, "fused_attention", counted(launches.fused_attention))
    monkeypatch.setattr(launches, "fused_decode", counted(launches.fused_decode))
    inv = inv_freq(DEVICE)
    g = torch.Generator(device=DEVICE).manual_seed(1)
    q, k, v = (torch.randn(1, h, N + 1, D, generator=g, device=DEVICE) for h in (H, KVH, KVH))
    for step, launch in (("last-piece", "fused_attention"), ("decode", "fused_decode")):
        m, i0, lq = step_call("mesa", {}, step)
        tables = kernels.RopeTables(kernels.Rope(inv), m)
        assert kernels.dispatch.use_fused(q[:, :, i0:i0 + lq], tables), \
            "kernels.dispatch.use_fused says no on CUDA"
        assert kernels.fused_rules(m, i0) is not None, f"no fused rules for Mesa's {step}"
        calls.clear()
        kernels.attend(m, q[:, :, i0:i0 + lq], k[:, :, :i0 + lq], v[:, :, :i0 + lq], i0,
                       tables, D ** -0.5)
        assert calls == [launch], f"Mesa's {step} on CUDA launched {calls}, not {launch}"
    m, i0, _ = step_call("rerope", CHECKED["rerope"][1], "prefill")
    assert kernels.fused_rules(m, i0) is not None, "ReRoPE has no fused rules"
