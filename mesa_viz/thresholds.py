"""The paper's hidden-state thresholds (Section 3): smoothing, finder, crossings.

The theory: extrapolation fails when a hidden-state value that moves steadily
with position inside ``[0, train_length)`` is pushed past the value it reaches
at ``train_length`` (its *threshold*).  The finder looks, without being told
where, for (layer, dim) pairs whose smoothed value follows ``log(position)``
inside the training length, and reports per method the fraction of positions
beyond ``train_length`` where the smoothed value is past the threshold.

:func:`find` runs it all on a model (traces saved and reused, pairs saved as
JSON lines); :func:`find_thresholds` and :func:`measure_crossings` work on
traces alone.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .data import FILLER, repeat_tokens
from .checks import check_methods
from .results import Trace, append_jsonl

__all__ = ["ThresholdPair", "Found", "Crossings", "smooth", "crossings", "find_thresholds",
           "measure_crossings", "past_fraction", "threshold_input", "default_hidden_layers",
           "find", "traces_folder", "format_pairs", "order_pairs"]

log = logging.getLogger(__name__)


@dataclass
class ThresholdPair:
    """One (layer, dim) whose value follows log(position) inside ``[0, T)``;
    ``past_fraction`` and ``first_crossing`` are keyed by method."""

    layer: int
    dim: int
    correlation: float
    threshold: float
    past_fraction: dict
    first_crossing: dict


class Found(NamedTuple):
    """What :func:`find` returns: the pairs (strongest first) and the traces
    they were measured on (method -> Trace)."""

    pairs: list[ThresholdPair]
    traces: dict[str, Trace]


class Crossings(NamedTuple):
    """Positions ``>= T`` whose value is past a threshold: how many, which
    fraction of the positions ``>= T``, and the first (``None`` if none)."""

    count: int
    fraction: float
    first: int | None


def smooth(values, window: int) -> np.ndarray:
    """Trailing moving average over the last axis (``[..., pos]``); position
    ``p`` averages ``max(0, p - window + 1) .. p`` so it never sees the future
    (``window=1``: the values themselves)."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window={window!r}: allowed an integer >= 1 (tokens)")
    c = np.cumsum(np.asarray(values, dtype=np.float64), axis=-1)
    out = c.copy()
    out[..., window:] = c[..., window:] - c[..., :-window]
    count = np.minimum(np.arange(c.shape[-1]) + 1, window)
    return out / count


def crossings(values, train_length: int, threshold: float,
              correlation: float = 1.0) -> Crossings:
    """Positions ``>= train_length`` of ``values [pos]`` (already smoothed) past
    ``threshold`` in the direction the value grows with position: above it
    for ``correlation >= 0``, below it otherwise."""
    past = np.asarray(values, dtype=float)[train_length:]
    hit = past > threshold if correlation >= 0 else past < threshold
    if not hit.any():
        return Crossings(0, 0.0, None)
    return Crossings(int(hit.sum()), float(hit.mean()), int(np.argmax(hit)) + train_length)


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
    threshold is the smoothed value at ``T - 1``.  Strongest first; crossings
    not yet measured (:func:`measure_crossings`)."""
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
    values = smooth(tr.hidden_values(pair.layer, pair.dim), window)
    hit = crossings(values, tr.train_length, pair.threshold, pair.correlation)
    return hit.fraction, hit.first


def measure_crossings(pairs: list[ThresholdPair], traces: dict[str, Trace],
                      window: int = 256) -> list[ThresholdPair]:
    """Fill every pair's ``past_fraction`` and ``first_crossing`` for each
    method of ``traces`` (method -> Trace); returns ``pairs``."""
    for p in pairs:
        for name, tr in traces.items():
            p.past_fraction[name], p.first_crossing[name] = past_fraction(tr, p, window)
    return pairs


def threshold_input(tokenizer, length: int) -> list[int]:
    """``length`` token ids of the filler text (each sentence followed by a
    space, as the README's measurements ran)."""
    return repeat_tokens(tokenizer, FILLER + " ", length)


def default_hidden_layers(num_layers: int) -> list[int]:
    """Where the finder looks by default: the embeddings and the first 8
    decoder layers' outputs (the paper finds its pairs in early layers)."""
    return list(range(min(num_layers, 8) + 1))


def find(model, tokenizer, *, length: int, methods=("origin", "mesa", "rerope"),
         hidden_layers: list[int] | None = None, window: int = 256,
         min_correlation: float = 0.99, top: int = 8, method_params: dict | None = None,
         train_length: int | None = None, out: "str | Path | None" = None) -> Found:
    """Trace ``model`` on ``length`` tokens of filler text under origin and each
    method, find the pairs on origin, measure every method's crossings.

    ``hidden_layers``: default :func:`default_hidden_layers`; ``method_params``:
    ``{method: {param: value}}``; ``train_length``: default the model's.  With
    ``out`` (a ``.jsonl`` file) each trace is saved to ``<out stem>_traces/``
    as soon as it is computed (a rerun reuses a saved trace of the same input,
    layers and parameters) and the pairs are written to ``out``, one line each.
    """
    from tqdm.auto import tqdm

    method_params = dict(method_params or {})
    methods = list(dict.fromkeys(["origin", *methods]))      # origin: where pairs are found
    check_methods(methods, method_params)
    layers = default_hidden_layers(model.config.num_hidden_layers) if hidden_layers is None \
        else list(hidden_layers)
    ids = np.asarray(threshold_input(tokenizer, length))
    folder = None if out is None else traces_folder(out)
    traces = {}
    for name in tqdm(methods, desc=f"tracing {length} tokens"):
        traces[name] = _trace(model, ids, name, layers, train_length,
                              method_params.get(name, {}), folder)
    pairs = find_thresholds(traces["origin"], min_correlation=min_correlation, top=top,
                            window=window)
    measure_crossings(pairs, traces, window)
    if out is not None:
        _write_pairs(Path(out), pairs)
    return Found(pairs, traces)


def traces_folder(out: "str | Path") -> Path:
    """Where :func:`find` keeps the traces of the pairs file ``out``."""
    out = Path(out)
    return out.with_name(out.stem + "_traces")


def _trace(model, ids, method, hidden_layers, train_length, params, folder) -> Trace:
    from .probes import trace
    path = None if folder is None else folder / f"trace_{method}"
    saved = _saved_trace(path, model, ids, hidden_layers, train_length, params)
    if saved is not None:
        log.info("reusing %s", path)
        return saved
    tr = trace(model, ids, method, layers=[], hidden_layers=hidden_layers,
               train_length=train_length, **params)
    if path is not None:
        tr.save(path)
    return tr


def _saved_trace(path, model, ids, hidden_layers, train_length, params) -> Trace | None:
    """The trace saved at ``path`` if it was run by the same model (name and
    dtype) on ``ids`` with the same hidden layers, training length and
    parameters, else None."""
    if path is None or not path.with_suffix(".json").exists():
        return None
    tr = Trace.load(path)
    same = (tr.meta.get("model") == getattr(model.config, "_name_or_path", "")
            and tr.meta.get("dtype") == str(model.dtype)
            and np.array_equal(tr.input_ids, ids) and list(tr.hidden_layers) == list(hidden_layers)
            and (train_length is None or tr.train_length == train_length)
            and all(tr.params.get(k) == v for k, v in params.items()))
    return tr if same else None


def _write_pairs(out: Path, pairs: list[ThresholdPair]) -> None:
    out.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    for p in pairs:
        append_jsonl(out, asdict(p))


def order_pairs(pairs, method: str = "origin") -> list:
    """``pairs`` (``ThresholdPair`` or their dicts) ordered by what they show:
    the largest fraction of positions past ``T`` beyond the threshold under
    ``method`` first (where the theory's crossing is seen), then the largest
    ``|r|``.  A pair not measured under ``method`` (or without ``r``) counts as 0."""
    def key(p):
        d = asdict(p) if isinstance(p, ThresholdPair) else p
        past = (d.get("past_fraction") or {}).get(method) or 0.0
        return -float(past), -abs(d.get("correlation") or 0.0)
    return sorted(pairs, key=key)


def format_pairs(pairs) -> str:
    """One line per pair (``ThresholdPair`` or its dict): layer, dim, r,
    threshold and each method's fraction of positions past it beyond ``T``."""
    pairs = [asdict(p) if isinstance(p, ThresholdPair) else p for p in pairs]
    if not pairs:
        return "no (layer, dim) pair reached the correlation threshold"
    return "\n".join(
        f"layer {p['layer']:2d} dim {p['dim']:4d} r={p['correlation']:+.4f} "
        f"threshold={p['threshold']:+.4f} past T beyond it: "
        + ", ".join(f"{m} {f:.0%}" for m, f in p["past_fraction"].items()) for p in pairs)
