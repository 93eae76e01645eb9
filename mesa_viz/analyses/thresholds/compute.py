"""The paper's hidden-state thresholds (Section 3): smoothing, finder, crossings.

The theory: extrapolation fails when a hidden-state value that moves steadily
with position inside ``[0, train_length)`` is pushed past the value it reaches
at ``train_length`` (its *threshold*).  The finder looks, without being told
where, for (layer, dim) pairs whose smoothed value follows ``log(position)``
inside the training length, and reports per method the fraction of positions
beyond ``train_length`` where the smoothed value is past the threshold.

:func:`find` runs it all on a model (traces saved and reused, pairs saved as
JSON lines); :func:`find_thresholds` and :func:`measure_crossings` work on
traces alone.  :func:`trace_methods` traces any input of :data:`INPUTS`
(filler text, a word repeated as in the paper's Appendix F, a passkey
prompt); :func:`hidden_view` turns a trace into the heat-map data of the
paper's Figures 11-16 (layers x dims x position windows, pooled for display).
Whether crossing predicts failure is ``mesa_viz.analyses.crossings``; the
paper's heat maps of hidden states are :mod:`.hidden`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ...data import FILLER, repeat_tokens
from ...runs.jsonl import write_jsonl
from ...runs.validate import check_methods
from ...runtime import Trace, saved_trace, trace
from ..passkey.samples import make_sample

__all__ = ["ThresholdPair", "Found", "Crossings", "smooth", "crossings", "find_thresholds",
           "measure_crossings", "past_fraction", "INPUTS", "threshold_input",
           "default_hidden_layers", "find", "trace_methods", "traces_folder", "format_pairs",
           "order_pairs"]

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


#: What the threshold tools can trace (``text=``): the filler haystack, one
#: word repeated (the paper's Appendix F: "hello" x 8000), or a passkey prompt.
INPUTS = ("filler", "word", "passkey")


def threshold_input(tokenizer, length: int, text: str = "filler", *, word: str = "hello",
                    depth: float = 0.5, seed: int = 0) -> list[int]:
    """``length`` token ids of ``text`` (one of :data:`INPUTS`).

    ``"filler"``: the filler text, each sentence followed by a space (as the
    measurements of ``benchmarks/methods-thresholds`` ran); ``"word"``: the tokenizer's BOS
    token then
    ``" " + word`` repeated, the input of the paper's Figures 11-16 (its
    ``<bos>`` is added by LLaMA's tokenizer; here it is added whether or not
    the tokenizer adds it itself: without a distinct first token every value
    vector of a one-token word is the same, attention weights cannot matter,
    and the hidden states do not change with position); ``"passkey"``: the
    passkey prompt of ``passkey.make_sample`` (needle at ``depth``, key of
    ``seed``).
    """
    if text == "filler":
        return repeat_tokens(tokenizer, FILLER + " ", length)
    if text == "passkey":
        return make_sample(tokenizer, length, depth, seed)["input_ids"]
    if text != "word":
        raise ValueError(f"text={text!r}: allowed one of {list(INPUTS)}")
    if not str(word).strip():
        raise ValueError(f"word={word!r}: allowed a non-empty word")
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise ValueError(f"{type(tokenizer).__name__} has no bos_token_id: text='word' needs a "
                         "first token unlike the word (allowed a tokenizer with a BOS token)")
    if length < 2:
        raise ValueError(f"length={length}: allowed >= 2 (the BOS token and the word)")
    return [int(bos)] + repeat_tokens(tokenizer, " " + str(word).strip(), length - 1)


def default_hidden_layers(num_layers: int) -> list[int]:
    """Where the finder looks by default: the embeddings and the first 8
    decoder layers' outputs (the paper finds its pairs in early layers)."""
    return list(range(min(num_layers, 8) + 1))


def find(model, tokenizer, *, length: int, methods=("origin", "mesa", "rerope"),
         hidden_layers: list[int] | None = None, window: int = 256,
         min_correlation: float = 0.99, top: int = 8, method_params: dict | None = None,
         train_length: int | None = None, out: "str | Path | None" = None,
         text: str = "filler", word: str = "hello") -> Found:
    """Trace ``model`` on ``length`` tokens of ``text`` (:func:`threshold_input`,
    default the filler text) under origin and each method, find the pairs on
    origin, measure every method's crossings.

    ``hidden_layers``: default :func:`default_hidden_layers`; ``method_params``:
    ``{method: {param: value}}``; ``train_length``: default the model's.  With
    ``out`` (a ``.jsonl`` file) each trace is saved to ``<out stem>_traces/``
    as soon as it is computed (a rerun reuses a saved trace of the same input,
    layers and parameters) and the pairs are written to ``out``, one line each.
    """
    methods = list(dict.fromkeys(["origin", *methods]))      # origin: where pairs are found
    traces = trace_methods(model, tokenizer, length=length, methods=methods, text=text,
                           word=word, hidden_layers=hidden_layers, method_params=method_params,
                           train_length=train_length,
                           folder=None if out is None else traces_folder(out))
    pairs = find_thresholds(traces["origin"], min_correlation=min_correlation, top=top,
                            window=window)
    measure_crossings(pairs, traces, window)
    if out is not None:
        _write_pairs(Path(out), pairs)
    return Found(pairs, traces)


def trace_methods(model, tokenizer, *, length: int, methods, text: str = "filler",
                  word: str = "hello", hidden_layers: list[int] | None = None, dims=None,
                  method_params: dict | None = None, train_length: int | None = None,
                  folder: "str | Path | None" = None, suffix: str = "") -> dict[str, Trace]:
    """Hidden states (no attention) of ``length`` tokens of ``text``
    (:func:`threshold_input`) under each method: method -> Trace.

    ``hidden_layers``: default :func:`default_hidden_layers`; ``dims``: default
    all.  With ``folder`` each trace is saved there as ``trace_<method><suffix>``
    as soon as it is computed and a rerun reuses a saved trace of the same
    model, input, layers, dims and parameters.
    """
    from tqdm.auto import tqdm

    method_params = dict(method_params or {})
    methods = list(dict.fromkeys(methods))
    check_methods(methods, method_params)
    layers = default_hidden_layers(model.config.num_hidden_layers) if hidden_layers is None \
        else list(hidden_layers)
    dims = list(range(model.config.hidden_size)) if dims is None else [int(d) for d in dims]
    ids = np.asarray(threshold_input(tokenizer, length, text, word=word))
    folder = None if folder is None else Path(folder)
    return {name: _trace(model, ids, name, layers, dims, train_length,
                         method_params.get(name, {}),
                         None if folder is None else folder / f"trace_{name}{suffix}")
            for name in tqdm(methods, desc=f"tracing {length} tokens", leave=False)}


def traces_folder(out: "str | Path") -> Path:
    """Where :func:`find` keeps the traces of the pairs file ``out``."""
    out = Path(out)
    return out.with_name(out.stem + "_traces")


def _trace(model, ids, method, hidden_layers, dims, train_length, params, path) -> Trace:
    saved = saved_trace(path, model, ids, train_length=train_length, params=params,
                        hidden_layers=hidden_layers, dims=dims)
    if saved is not None:
        log.info("reusing %s", path)
        return saved
    tr = trace(model, ids, method, layers=[], hidden_layers=hidden_layers, dims=dims,
               train_length=train_length, **params)
    if path is not None:
        tr.save(path)
    return tr


def _write_pairs(out: Path, pairs: list[ThresholdPair]) -> None:
    """The pairs as JSON lines, the whole file replaced at once (:func:`write_jsonl`)."""
    write_jsonl(out, [asdict(p) for p in pairs])


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
