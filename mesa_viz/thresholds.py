"""The paper's hidden-state thresholds (Section 3): finder and crossings.

The theory: extrapolation fails when a hidden-state value that moves steadily
with position inside ``[0, train_length)`` is pushed past the value it reaches
at ``train_length`` (its *threshold*).  The finder looks, without being told
where, for (layer, dim) pairs whose smoothed value follows ``log(position)``
inside the training length, and reports per method the fraction of positions
beyond ``train_length`` where the smoothed value is past the threshold.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .results import Trace, append_jsonl

__all__ = ["ThresholdPair", "smooth", "find_thresholds", "past_fraction", "run_thresholds",
           "add_arguments", "run"]

log = logging.getLogger(__name__)

#: Plain English text repeated to the wanted length (the passkey haystack style).
FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
          "There and back again. ")


@dataclass
class ThresholdPair:
    """One (layer, dim) whose value follows log(position) inside ``[0, T)``."""

    layer: int
    dim: int
    correlation: float
    threshold: float
    past_fraction: dict
    first_crossing: dict


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over the last axis (``[..., pos]``); position
    ``p`` averages ``max(0, p - window + 1) .. p`` so it never sees the future."""
    c = np.cumsum(np.asarray(values, dtype=np.float64), axis=-1)
    out = c.copy()
    out[..., window:] = c[..., window:] - c[..., :-window]
    count = np.minimum(np.arange(values.shape[-1]) + 1, window)
    return out / count


def _log_correlation(sm: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Pearson correlation of each row of ``sm [k, pos]`` with ``log(pos + 1)``
    over positions ``start..stop-1``."""
    x = np.log(np.arange(start, stop) + 1.0)
    x = (x - x.mean()) / x.std()
    y = sm[:, start:stop]
    y = (y - y.mean(1, keepdims=True)) / (y.std(1, keepdims=True) + 1e-12)
    return (y * x).mean(1)


def find_thresholds(origin: Trace, *, min_correlation=0.99, top=8, window=256,
                    start=None) -> list[ThresholdPair]:
    """Pairs from an origin trace whose smoothed value correlates with
    ``log(pos)`` at ``|r| >= min_correlation`` over ``[start, T)``; the
    threshold is the smoothed value at ``T - 1``.  Strongest first."""
    T = origin.train_length
    if origin.seq_len < T:
        raise ValueError(f"the origin trace has {origin.seq_len} tokens: the finder needs "
                         f">= train_length={T}")
    start = window if start is None else start
    pairs = []
    for li, layer in enumerate(origin.hidden_layers):
        sm = smooth(origin.hidden[li].T, window)            # [dim, pos]
        r = _log_correlation(sm, start, T)
        for d in np.flatnonzero(np.abs(r) >= min_correlation):
            pairs.append(ThresholdPair(int(layer), int(origin.dims[d]), float(r[d]),
                                       float(sm[d, T - 1]), {}, {}))
    pairs.sort(key=lambda p: -abs(p.correlation))
    log.info("%d pairs with |r| >= %.3f; keeping %d", len(pairs), min_correlation, top)
    return pairs[:top]


def past_fraction(tr: Trace, pair: ThresholdPair, window=256) -> tuple[float, int | None]:
    """Fraction of positions ``>= T`` whose smoothed value is past the pair's
    threshold (in the direction the value grows), and the first such position."""
    T = tr.train_length
    if tr.seq_len <= T:
        return 0.0, None
    sm = smooth(tr.hidden_values(pair.layer, pair.dim), window)[T:]
    past = sm > pair.threshold if pair.correlation > 0 else sm < pair.threshold
    first = int(np.argmax(past)) + T if past.any() else None
    return float(past.mean()), first


def threshold_input(tokenizer, length: int):
    """``[1, length]`` token ids of repeated plain text."""
    import torch
    unit = tokenizer(FILLER, add_special_tokens=False).input_ids
    reps = length // len(unit) + 1
    return torch.tensor([(unit * reps)[:length]])


def run_thresholds(model, tokenizer, length: int, methods=("origin", "mesa", "rerope"), *,
                   hidden_layers=None, window=256, min_correlation=0.99, top=8,
                   method_params=None, out_dir=None):
    """Trace every method on the same ``length`` tokens, find the pairs on
    origin and measure each method's crossings.

    Returns ``(pairs, traces)``; with ``out_dir`` each trace is saved there
    (``trace_<method>.npz/.json``) as soon as it is computed.
    """
    from tqdm.auto import tqdm

    from .probes import trace
    L = model.config.num_hidden_layers
    hidden_layers = list(range(min(L, 8) + 1)) if hidden_layers is None else hidden_layers
    ids = threshold_input(tokenizer, length)
    methods = list(dict.fromkeys(["origin", *methods]))
    traces = {}
    for name in tqdm(methods, desc=f"tracing {length} tokens"):
        traces[name] = trace(model, ids, name, layers=[], hidden_layers=hidden_layers,
                             **(method_params or {}).get(name, {}))
        if out_dir is not None:
            traces[name].save(Path(out_dir) / f"trace_{name}")
    pairs = find_thresholds(traces["origin"], min_correlation=min_correlation, top=top,
                            window=window)
    for p in pairs:
        for name, tr in traces.items():
            p.past_fraction[name], p.first_crossing[name] = past_fraction(tr, p, window)
    return pairs, traces


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length", type=int, default=16384, help="tokens per trace")
    p.add_argument("--methods", default="origin,mesa,rerope", help="comma-separated")
    p.add_argument("--out", required=True, help="JSON-lines file, one line per pair")
    p.add_argument("--model", default=None, help="HF id or path (default: SmolLM2-135M)")
    p.add_argument("--hidden-layers", default=None, help="e.g. 0-8 (default 0..8)")
    p.add_argument("--min-correlation", type=float, default=0.99)
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--window", type=int, default=256, help="smoothing window (tokens)")


def _range(text):
    if text is None:
        return None
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",")]


def run(args) -> int:
    from .models import load_model
    model, tok = load_model(args.model)
    out = Path(args.out)
    pairs, traces = run_thresholds(
        model, tok, args.length, args.methods.split(","), window=args.window,
        hidden_layers=_range(args.hidden_layers), min_correlation=args.min_correlation,
        top=args.top, out_dir=out.with_suffix("").with_name(out.stem + "_traces"))
    out.unlink(missing_ok=True)
    for p in pairs:
        append_jsonl(out, asdict(p))
    _figure(pairs, traces, out.with_suffix(".html"), args.window)
    lines = [f"layer {p.layer:2d} dim {p.dim:3d} r={p.correlation:+.4f} "
             f"threshold={p.threshold:+.3f} past: " +
             ", ".join(f"{m}={f:.2f}" for m, f in p.past_fraction.items()) for p in pairs]
    return "\n".join(lines) or "no (layer, dim) pair reached the correlation threshold"


def _figure(pairs, traces, path, window):
    from . import plots
    figs = [plots.hidden_state_figure(
        {m: smooth(t.hidden_values(p.layer, p.dim), window) for m, t in traces.items()},
        train_length=next(iter(traces.values())).train_length, threshold=p.threshold,
        title=f"layer {p.layer}, dim {p.dim} (r = {p.correlation:+.3f})") for p in pairs[:4]]
    if figs:
        plots.save_html(figs, path, title="Hidden-state thresholds")
