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
Whether crossing predicts failure is :mod:`mesa_viz.failure`.
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
    README's measurements ran); ``"word"``: the tokenizer's BOS token then
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
        from .passkey import make_sample
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
            for name in tqdm(methods, desc=f"tracing {length} tokens")}


def traces_folder(out: "str | Path") -> Path:
    """Where :func:`find` keeps the traces of the pairs file ``out``."""
    out = Path(out)
    return out.with_name(out.stem + "_traces")


def _trace(model, ids, method, hidden_layers, dims, train_length, params, path) -> Trace:
    from .probes import trace
    saved = _saved_trace(path, model, ids, hidden_layers, dims, train_length, params)
    if saved is not None:
        log.info("reusing %s", path)
        return saved
    tr = trace(model, ids, method, layers=[], hidden_layers=hidden_layers, dims=dims,
               train_length=train_length, **params)
    if path is not None:
        tr.save(path)
    return tr


def _saved_trace(path, model, ids, hidden_layers, dims, train_length, params) -> Trace | None:
    """The trace saved at ``path`` if it was run by the same model (name and
    dtype) on ``ids`` with the same hidden layers, dims, training length and
    parameters, else None."""
    if path is None or not path.with_suffix(".json").exists():
        return None
    tr = Trace.load(path)
    same = (tr.meta.get("model") == getattr(model.config, "_name_or_path", "")
            and tr.meta.get("dtype") == str(model.dtype)
            and np.array_equal(tr.input_ids, ids) and list(tr.hidden_layers) == list(hidden_layers)
            and list(tr.dims) == list(dims)
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


# == the paper's own views on the real model (Appendix F, Figures 11-16; issue 14) ====

__all__ += ["HiddenView", "paper_windows", "hidden_view", "mean_change", "layer_changes",
            "format_changes"]


@dataclass
class HiddenView:
    """One trace's hidden-state values over position windows, pooled for display.

    ``values[w] [layer, dim, col]``: window ``w`` = ``windows[w]`` (``start,
    stop``), column ``c`` the mean of positions ``edges[w][c] ..
    edges[w][c + 1] - 1`` (``edges[w] [col + 1]``; ``pool`` positions a column,
    column edges at ``T + k * pool`` so ``T`` is always an edge).  With
    ``relative_to`` (a position), every value is minus the column of ``pool``
    positions ending there in the trace of method ``reference``.
    """

    method: str
    train_length: int
    seq_len: int
    layers: list[int]
    dims: list[int]
    windows: list[tuple[int, int]]
    pool: int
    edges: list[np.ndarray]
    values: list[np.ndarray]
    relative_to: int | None = None
    reference: str | None = None


def paper_windows(seq_len: int, train_length: int, width: int | None = None
                  ) -> list[tuple[int, int]]:
    """The position windows of the paper's Figures 11-16, scaled to ``T``:
    ``width`` positions (default ``T/4``; the paper: 1000 at ``T = 4096``)
    starting ``width/8`` before ``T`` (the paper: 4000-5000) and the last
    ``width`` positions; windows that overlap are merged, and what lies past
    ``seq_len`` is cut."""
    width = max(1, train_length // 4) if width is None else width
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width={width!r}: allowed an integer >= 1 (positions)")
    start = max(0, train_length - width // 8)
    spans = [(start, min(seq_len, start + width)), (max(0, seq_len - width), seq_len)]
    merged: list[tuple[int, int]] = []
    for a, b in sorted(s for s in spans if s[0] < s[1]):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def _indices(name: str, wanted, have) -> list[int]:
    """Where each of ``wanted`` (default all of ``have``) sits in ``have``."""
    have = [int(v) for v in have]
    wanted = have if wanted is None else [int(v) for v in wanted]
    missing = [v for v in wanted if v not in have]
    if missing or not wanted:
        raise ValueError(f"{name} {missing or wanted}: allowed a non-empty list of the traced "
                         f"{name} {have[:12]}{' ...' if len(have) > 12 else ''}")
    return [have.index(v) for v in wanted]


def _check_windows(windows, seq_len: int) -> list[tuple[int, int]]:
    spans = [(int(a), int(b)) for a, b in windows]
    if not spans or any(not 0 <= a < b <= seq_len for a, b in spans) or any(
            b1 > a2 for (_, b1), (a2, _) in zip(spans, spans[1:])):
        raise ValueError(f"windows={spans}: allowed sorted, non-overlapping (start, stop) "
                         f"with 0 <= start < stop <= {seq_len}")
    return spans


def _edges(a: int, b: int, pool: int, T: int) -> np.ndarray:
    """Column edges of window ``[a, b)``: ``a``, every ``T + k * pool`` inside, ``b``."""
    first = T + -((T - a) // pool) * pool                      # smallest T + k*pool >= a
    inner = np.arange(first, b, pool)
    return np.unique(np.concatenate([[a], inner[inner > a], [b]])).astype(np.int64)


def _pooled(hidden: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``hidden [layer, pos, dim]`` -> ``[layer, dim, col]``, each column the
    mean of its positions ``edges[c] .. edges[c + 1] - 1``."""
    a, b = int(edges[0]), int(edges[-1])
    sums = np.add.reduceat(hidden[:, a:b].astype(np.float64), edges[:-1] - a, axis=1)
    return np.transpose(sums / np.diff(edges)[None, :, None], (0, 2, 1))


def hidden_view(tr: Trace, *, layers=None, dims=None, windows=None, columns: int = 1000,
                relative_to: int | None = None, reference: Trace | None = None) -> HiddenView:
    """The heat-map data of the paper's Figures 11-16 from one trace: hidden
    layers x dims x position windows, pooled to at most ``columns`` columns
    over all windows, plus one a window where aligning on ``T`` splits one
    (no pooling when they fit).

    ``layers``/``dims``: default all the trace holds.  ``windows``: default
    :func:`paper_windows`; ``"all"``: every position; else sorted
    ``(start, stop)`` pairs.  ``relative_to``: a position (e.g. ``T - 1``):
    show each value minus ``reference``'s (default this trace's) column of
    ``pool`` positions ending there.
    """
    T, n = tr.train_length, tr.seq_len
    li, di = _indices("hidden layers", layers, tr.hidden_layers), _indices("dims", dims, tr.dims)
    spans = paper_windows(n, T) if windows is None else \
        [(0, n)] if isinstance(windows, str) and windows == "all" else None
    if spans is None and isinstance(windows, str):
        raise ValueError(f"windows={windows!r}: allowed None (the paper's), 'all' or "
                         "(start, stop) pairs")
    spans = _check_windows(spans if spans is not None else windows, n)
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise ValueError(f"columns={columns!r}: allowed an integer >= 1")
    pool = max(1, -(-sum(b - a for a, b in spans) // columns))
    hidden = tr.hidden[np.ix_(li, np.arange(n), di)]              # [layer, pos, dim]
    edges = [_edges(a, b, pool, T) for a, b in spans]
    values = [_pooled(hidden, e) for e in edges]
    if relative_to is not None:
        values = [v - _baseline(reference or tr, li, di, pool, relative_to, tr)
                  for v in values]
    return HiddenView(tr.method, T, n, [int(tr.hidden_layers[k]) for k in li],
                      [int(tr.dims[k]) for k in di], spans, pool, edges, values,
                      None if relative_to is None else int(relative_to),
                      None if relative_to is None else (reference or tr).method)


def _baseline(ref: Trace, li, di, pool: int, at: int, tr: Trace) -> np.ndarray:
    """``[layer, dim, 1]``: ``ref``'s mean of the ``pool`` positions ending at ``at``."""
    if not 0 <= at < ref.seq_len:
        raise ValueError(f"relative_to={at}: allowed a position in [0, {ref.seq_len})")
    if (list(ref.hidden_layers), list(ref.dims)) != (list(tr.hidden_layers), list(tr.dims)):
        raise ValueError("reference holds other hidden layers or dims than the trace: allowed "
                         "a trace of the same layers and dims")
    lo = max(0, at - pool + 1)
    return ref.hidden[np.ix_(li, np.arange(lo, at + 1), di)].mean(axis=1)[..., None]


def mean_change(tr: Trace, at: int, width: int, *, layers=None, dims=None,
                to: int | None = None) -> np.ndarray:
    """``[layer, dim]``: the mean value over ``[to - width, to)`` (default
    ``to = at + width``, the ``width`` positions from ``at``) minus the mean over
    the ``width`` positions before ``at``: the jump at ``T`` the paper's heat
    maps show (``at = T``), or the drift to the end (``to = seq_len``)."""
    to = at + width if to is None else to
    if not (isinstance(width, (int, np.integer)) and 1 <= width <= at and at < to - width + 1
            and to <= tr.seq_len):
        raise ValueError(f"at={at}, width={width}, to={to}: allowed width >= 1 positions "
                         f"before at and at <= to - width, to <= {tr.seq_len}")
    li, di = _indices("hidden layers", layers, tr.hidden_layers), _indices("dims", dims, tr.dims)
    h = tr.hidden[np.ix_(li, np.arange(tr.seq_len), di)].astype(np.float64)
    return h[:, to - width:to].mean(axis=1) - h[:, at - width:at].mean(axis=1)


def layer_changes(tr: Trace, width: int, *, layers=None, dims=None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(at_t, to_end)``, each ``[layer]``: the mean over ``dims`` of
    ``|mean_change|`` across ``T`` (the ``width`` positions after against the
    ``width`` before) and to the end (the last ``width`` against the same)."""
    T = tr.train_length
    at = np.abs(mean_change(tr, T, width, layers=layers, dims=dims)).mean(axis=1)
    end = np.abs(mean_change(tr, T, width, layers=layers, dims=dims, to=tr.seq_len))
    return at, end.mean(axis=1)


def format_changes(traces: dict, width: int, *, layers=None, dims=None) -> str:
    """One line per method (method -> Trace) of :func:`layer_changes`:
    ``L<layer> <across T>/<to the end>``."""
    lines = [f"mean |change| over the dims, per hidden layer: across T ({width} positions after "
             f"vs before) / to the end (last {width} vs the {width} before T)"]
    for m, tr in traces.items():
        at, end = layer_changes(tr, width, layers=layers, dims=dims)
        shown = tr.hidden_layers if layers is None else layers
        lines.append(f"{m:>14}: " + "  ".join(
            f"L{l} {a:.3g}/{e:.3g}" for l, a, e in zip(shown, at, end)))
    return "\n".join(lines)
