"""Benchmark: prefill time, peak memory, decode time and FLOP rate by method and length.

``bench.run(model, ["origin", "mesa"], [2048, 4096], "bench.jsonl")`` (the
command line: ``mesa-viz bench --methods origin,mesa --lengths 2048,4096``)
writes JSON lines as it goes (:func:`mesa_viz.runs.append_jsonl`):

* once per run ``{"kind": "machine", "matmul_gflops": ..., "matmul_rates": ...,
  "device": ..., "threads": ...}``: the machine's dense matmul rate, the best
  over square products of several sizes and the model's own linear-layer shapes
  (:func:`matmul_rates`);
* one ``{"kind": "point", "method", "length", ...}`` per (method, length):
  ``prefill_s`` (median of ``repeats`` prefills ``model(ids, use_cache=True,
  logits_to_keep=1)``), ``peak_mem_bytes`` (peak activation memory net of
  everything allocated before, weights included; CPU: RSS of one extra untimed
  prefill under :func:`mesa_viz.runtime.memory.exact_rss`, CUDA: ``max_memory_allocated``;
  see :func:`measure_point`), ``decode_ms_per_token`` (median of
  greedy one-token steps on the prefill's cache), ``useful_flops``
  (:func:`prefill_flops`) and ``gflops_achieved`` (useful FLOPs / prefill
  seconds), ``predicted_mem_bytes`` (:func:`mesa_viz.runtime.memory.estimate_peak_bytes`);
  ``oom: true`` when the prediction exceeds the available memory (not run) or
  the run ran out of memory; ``skipped`` when a time budget stopped it.

A file that already holds a point of the same model, device and dtype is
resumed: measured and OOM points are not run again.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from ...methods import METHODS, Method, default_piece_tokens
from ...models.parts import model_device, model_dims, model_dtype, train_length_fields
from ...runs.jsonl import read_jsonl
from ...runs.sweep import ResultsFile
from ...runs.validate import check_lengths, check_methods
from ...runtime.memory import GiB, available_bytes, estimate_peak_bytes
from .flops import model_gemms, prefill_flops, visible_pairs
from .machine import machine_row
from .point import dtype_name, is_oom, measure_point, page_in, random_ids, resolve_point

__all__ = ["run", "Settings", "check_grid", "rows_for", "ALL_METHODS", "DEFAULT_LENGTHS",
           "row_key"]

log = logging.getLogger(__name__)


#: Every method of :data:`mesa_viz.methods.METHODS` (the bench's default).
ALL_METHODS = tuple(METHODS)


DEFAULT_LENGTHS = (2048, 4096, 8192, 16384, 32768)


def row_key(row) -> tuple:
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
    train_length_from: str = "train_length="

    @property
    def device(self) -> str:
        return self.common["device"]


def _common_fields(model, model_name: str, extra: dict) -> dict:
    """The fields that identify a run's rows (and key its resume)."""
    return {"device": model_device(model), "dtype": dtype_name(model), "model": model_name,
            "backend": model.config._attn_implementation, **extra}


def _todo(out: Path, common: dict, methods, lengths,
          piece_tokens: int | None = None) -> tuple[ResultsFile, list[tuple[str, int]]]:
    """The results file of ``out`` and the (method, length) points not measured
    yet there with this piece size (skipped points are measured again)."""
    results = ResultsFile(out, row_key, accept=lambda r: r.get("kind", "point") == "point"
                          and not r.get("skipped"))
    grid = [(m, int(n)) for n in lengths for m in methods]
    todo = [(m, n) for m, n in grid if row_key({**common, "method": m, "length": n,
                                                "piece_tokens": piece_tokens}) not in results]
    if len(todo) < len(grid):
        log.info("resuming %s: %d of %d points already there", out, len(grid) - len(todo),
                 len(grid))
    return results, todo


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
    resolved = resolve_point(method, params, n, grid.train_length)
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
            "train_length": grid.train_length, "train_length_from": grid.train_length_from,
            "threads": torch.get_num_threads(),
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
        if not is_oom(exc):
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

    method_params = dict(method_params or {})
    check_grid(methods, lengths, method_params)
    out, extra = Path(out), dict(extra or {})
    fields = train_length_fields(model, train_length)
    grid = _Grid(model, fields["train_length"], _common_fields(model, model_name, extra),
                 settings, fields["train_length_from"])
    results, todo = _todo(out, grid.common, methods, lengths, settings.piece_tokens)
    if not todo:
        return []
    rows = [machine_row(grid.device, grid.common["dtype"], matmul_size, extra,
                        () if matmul_size else model_gemms(model.config))] if machine else []
    for row in rows:
        results.add(row)
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
        rows.append(results.add(row))
    return rows


def rows_for(out: "str | Path", model, model_name: str) -> list[dict]:
    """The rows of ``out`` measured on this model, device, dtype and backend,
    and the machine rows."""
    common = _common_fields(model, model_name, {})
    return [r for r in read_jsonl(out)
            if r.get("kind") == "machine" or all(r.get(k) == v for k, v in common.items())]
