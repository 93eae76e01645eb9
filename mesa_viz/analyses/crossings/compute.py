"""Does crossing predict failure?  Threshold crossings against task scores.

The paper's assumption (Section 3.3): extrapolation fails once a hidden-state
value passes its threshold.  :func:`measure` tests it: the finder runs
**once**, on origin at the longest length, and the same (layer, dim) pairs and
thresholds (origin's smoothed value at ``T - 1``) are measured for every
method at every length, each (method, length) traced on its own (a chunked or
length-aware method computes every position differently at another length).
One row per (method, length) keeps three things apart:

- ``crossed``: pairs past their threshold at *some* position ``>= T``
  (``crossed_fraction`` = crossed / pairs), with ``first_crossing`` the
  earliest such position;
- ``crossed_at_end``: pairs still past it at the last position;
  ``turned_back`` = crossed - crossed_at_end (crossed at ``T``, came back);
- ``past_fraction_sum`` / ``_mean``: the fraction of positions ``>= T`` past
  the threshold, summed / averaged over pairs.

:func:`join` adds passkey accuracy (rows ``method, length, correct``) and
perplexity past ``T`` (rows ``method, length, text, bucket_start, tokens,
nll``) to these rows; :func:`format_table` and :func:`summary` say what they
show.  Plain rows in, plain rows out; the figure is ``plots.crossing_scatter``.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ...models.parts import train_length_of
from ...runs.sweep import ResultsFile, sweep
from ...runs.validate import check_lengths, check_methods
from ...runtime import Trace
from ..thresholds.compute import ThresholdPair, crossings, find, smooth, trace_methods

__all__ = ["X_MEASURES", "pair_crossings", "crossing_row", "measure", "pairs_file", "join",
           "summary", "format_table"]

log = logging.getLogger(__name__)

#: The crossing measures a row holds that a scatter can put on x.
X_MEASURES = ("crossed_fraction", "crossed_at_end_fraction", "past_fraction_mean")


def _pair_dict(p) -> dict:
    if isinstance(p, ThresholdPair):
        return dict(layer=p.layer, dim=p.dim, correlation=p.correlation, threshold=p.threshold)
    return {k: p[k] for k in ("layer", "dim", "correlation", "threshold")}


def pair_crossings(tr: Trace, pairs, window: int = 256) -> list[dict]:
    """For each pair (``ThresholdPair`` or dict with ``layer, dim, correlation,
    threshold``), on ``tr`` smoothed over ``window`` tokens: ``past_fraction``
    and ``first_crossing`` past ``T`` (:func:`..thresholds.compute.crossings`)
    and ``at_end``, whether the last position is past the threshold."""
    rows = []
    for p in map(_pair_dict, pairs):
        sm = smooth(tr.hidden_values(p["layer"], p["dim"]), window)
        hit = crossings(sm, tr.train_length, p["threshold"], p["correlation"])
        at_end = crossings(sm[-1:], 0, p["threshold"], p["correlation"]).count == 1
        rows.append(dict(layer=p["layer"], dim=p["dim"], past_fraction=hit.fraction,
                         first_crossing=hit.first, at_end=bool(at_end)))
    return rows


def crossing_row(tr: Trace, pairs, window: int = 256, **extra) -> dict:
    """One (method, length) row of the crossing measures (module doc) from
    trace ``tr``; ``extra`` fields are added as given."""
    if tr.seq_len <= tr.train_length:
        raise ValueError(f"the trace has {tr.seq_len} tokens: allowed more than "
                         f"train_length={tr.train_length} (crossings are measured past T)")
    per = pair_crossings(tr, pairs, window)
    if not per:
        raise ValueError("pairs is empty: allowed the finder's threshold pairs")
    crossed = sum(p["first_crossing"] is not None for p in per)
    at_end = sum(p["at_end"] for p in per)
    past = [p["past_fraction"] for p in per]
    firsts = [p["first_crossing"] for p in per if p["first_crossing"] is not None]
    return dict(method=tr.method, length=tr.seq_len, train_length=tr.train_length,
                params=tr.params, window=window, pairs=len(per), crossed=crossed,
                crossed_fraction=crossed / len(per), crossed_at_end=at_end,
                crossed_at_end_fraction=at_end / len(per), turned_back=crossed - at_end,
                past_fraction_sum=float(sum(past)), past_fraction_mean=float(np.mean(past)),
                first_crossing=min(firsts) if firsts else None, per_pair=per, **extra)


def pairs_file(out: "str | Path") -> Path:
    """Where :func:`measure` keeps the finder's pairs of the rows file ``out``
    (its origin trace goes to ``<that stem>_traces/``)."""
    out = Path(out)
    return out.with_name(out.stem + "_pairs.jsonl")


def measure(model, tokenizer, *, methods, lengths, out: "str | Path", text: str = "filler",
            word: str = "hello", hidden_layers: list[int] | None = None, window: int = 256,
            min_correlation: float = 0.99, top: int = 8, method_params: dict | None = None,
            train_length: int | None = None) -> Iterator[dict]:
    """Crossing rows (:func:`crossing_row`) for every method x length, streamed.

    The finder (:func:`mesa_viz.thresholds.find`) runs once on origin at
    ``max(lengths)`` tokens of ``text`` (pairs to :func:`pairs_file`); every
    (method, length) is then traced on the first ``length`` tokens of the same
    text, keeping only the pairs' layers and dims (saved in
    ``<out stem>_traces/trace_<method>_<length>``, reused by a rerun), and its
    row appended to ``out`` before it is yielded.  A rerun skips the rows
    already in ``out``; a file measured with other pairs or settings is
    refused.  Lengths must exceed ``T``.
    """
    method_params = dict(method_params or {})
    methods, lengths = list(dict.fromkeys(methods)), sorted(set(lengths))
    check_methods(methods, method_params)
    check_lengths(lengths)
    T = int(train_length or train_length_of(model))
    short = [n for n in lengths if n <= T]
    if short:
        raise ValueError(f"lengths {short} <= train_length={T}: allowed lengths > T "
                         "(crossings are measured past T)")
    found = find(model, tokenizer, length=lengths[-1], methods=["origin"], text=text, word=word,
                 hidden_layers=hidden_layers, window=window, min_correlation=min_correlation,
                 top=top, method_params={k: v for k, v in method_params.items()
                                         if k == "origin"},
                 train_length=T, out=pairs_file(out))
    if not found.pairs:
        raise ValueError(f"the finder found no pair with |r| >= {min_correlation} on origin at "
                         f"{lengths[-1]} tokens: allowed a lower min_correlation or other "
                         "hidden layers")
    setting = dict(text=text, word=word if text == "word" else None,
                   thresholds=[[p.layer, p.dim, p.threshold] for p in found.pairs])
    results = ResultsFile(out, lambda r: (r["method"], int(r["length"])))
    _check_settings(results, dict(setting, window=window))
    layers = sorted({p.layer for p in found.pairs})
    dims = sorted({p.dim for p in found.pairs})
    folder = Path(out).with_name(Path(out).stem + "_traces")

    def run(unit):
        m, n = unit
        tr = found.traces["origin"] if (m, n) == ("origin", lengths[-1]) else \
            trace_methods(model, tokenizer, length=n, methods=[m], text=text, word=word,
                          hidden_layers=layers, dims=dims,
                          method_params={m: method_params.get(m, {})}, train_length=T,
                          folder=folder, suffix=f"_{n}")[m]
        return [crossing_row(tr, found.pairs, window, **setting)]

    units = [(m, n) for n in lengths for m in methods]
    return sweep(results, units, keys=lambda u: [u], run=run, desc="crossings", unit="trace")


def _check_settings(results: ResultsFile, setting: dict) -> None:
    """Refuse a results file measured with other settings (pairs, text, window)."""
    for r in results.rows.values():
        other = {k for k, v in setting.items() if r.get(k) != v}
        if other:
            raise ValueError(f"{results.path} holds rows measured with other settings "
                             f"({', '.join(sorted(other))} differ): allowed a new out file, "
                             "or the settings of those rows")


# -- joining with task scores -------------------------------------------------------

_CROSSING_KEYS = ("method", "length", "train_length", "pairs", "crossed", "crossed_at_end")


def _check_rows(rows, keys, what: str) -> list[dict]:
    rows = list(rows or ())
    for k, r in enumerate(rows):
        missing = [key for key in keys if key not in r]
        if missing:
            raise ValueError(f"{what} row {k} lacks {missing}: allowed rows with {list(keys)}")
    return rows


def join(crossing_rows, passkey_rows=None, ppl_rows=None, *, ppl_text: str | None = None
         ) -> list[dict]:
    """Crossing rows (:func:`measure`) with, per (method, length), passkey
    accuracy (``passkey_n``, ``passkey_correct``, ``accuracy``) and perplexity
    past ``T`` (``ppl_tokens``, ``nll_past_t``: token-weighted mean NLL of the
    buckets starting at ``>= T``, over every text or ``ppl_text``;
    ``ppl_past_t = exp(nll_past_t)``).  Missing scores are None; a crossing
    row without any score is kept.  Per-pair details are left out."""
    rows = _check_rows(crossing_rows, _CROSSING_KEYS, "crossing")
    if not rows:
        raise ValueError("crossing_rows is empty: allowed the rows of crossings.measure")
    passkey = defaultdict(list)
    for r in _check_rows(passkey_rows, ("method", "length", "correct"), "passkey"):
        passkey[r["method"], int(r["length"])].append(bool(r["correct"]))
    ppl = defaultdict(list)
    for r in _check_rows(ppl_rows, ("method", "length", "text", "bucket_start", "tokens",
                                    "nll"), "ppl"):
        if ppl_text is None or r["text"] == ppl_text:
            ppl[r["method"], int(r["length"])].append(r)
    out = [_joined(r, passkey.get((r["method"], int(r["length"]))),
                   ppl.get((r["method"], int(r["length"])), [])) for r in rows]
    unused = sorted(set(passkey) - {(r["method"], int(r["length"])) for r in rows})
    if unused:
        log.warning("passkey rows for %s have no crossing row", unused)
    return out


def _joined(r: dict, hits, ppl_rows: list[dict]) -> dict:
    row = {k: v for k, v in r.items() if k not in ("per_pair", "thresholds", "params")}
    row.update(passkey_n=len(hits or ()), passkey_correct=sum(hits or ()),
               accuracy=sum(hits) / len(hits) if hits else None)
    past = [p for p in ppl_rows if p["bucket_start"] >= r["train_length"] and p["tokens"]]
    tokens = sum(int(p["tokens"]) for p in past)
    nll = sum(float(p["nll"]) * int(p["tokens"]) for p in past) / tokens if tokens else None
    row.update(ppl_tokens=tokens, nll_past_t=nll,
               ppl_past_t=None if nll is None else math.exp(nll))
    return row


def summary(rows) -> str:
    """What joined rows show, in one line: mean passkey accuracy of the rows
    where some pair crossed against those where none did (and where a pair is
    still crossed at the end), and Pearson's r of crossed fraction and
    accuracy."""
    scored = [r for r in rows if r.get("accuracy") is not None]
    if not scored:
        return "no row has a passkey accuracy yet"
    parts = []
    for label, test in (("some pair crossed", lambda r: r["crossed"] > 0),
                        ("none crossed", lambda r: r["crossed"] == 0),
                        ("a pair still crossed at the end", lambda r: r["crossed_at_end"] > 0)):
        acc = [r["accuracy"] for r in scored if test(r)]
        parts.append(f"{label}: " + (f"mean accuracy {np.mean(acc):.0%} over {len(acc)} "
                                     "(method, length)" if acc else "no row"))
    x = np.array([r["crossed_fraction"] for r in scored])
    y = np.array([r["accuracy"] for r in scored])
    r = float(np.corrcoef(x, y)[0, 1]) if len(scored) > 2 and x.std() and y.std() else None
    parts.append("Pearson r(crossed fraction, accuracy) = "
                 + ("undefined (a constant)" if r is None else f"{r:+.2f}"))
    return "; ".join(parts)


def _passkey_cell(r: dict) -> str:
    if r.get("accuracy") is None:
        return "(pending)"
    return f"{r['accuracy']:.0%} ({r['passkey_correct']}/{r['passkey_n']})"


def _ppl_cell(r: dict) -> str:
    return "(pending)" if r.get("ppl_past_t") is None else f"{r['ppl_past_t']:.2f}"


def format_table(rows, wide: bool = False) -> str:
    """A Markdown table of joined rows (:func:`join`), "(pending)" where a
    score is missing.  Long (default): one line per (method, length) with
    pairs crossed, still crossed at the end, summed past fraction, first
    crossing, passkey and perplexity past ``T``.  ``wide``: one line per
    method, one column per length, each cell ``crossed (at end) · sum ·
    passkey · ppl``."""
    if wide:
        return _wide_table(rows)
    lines = ["| method | length | pairs crossed | still crossed at end | sum of past fractions "
             "| first crossing | passkey | ppl past T |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['length']} | {r['crossed']} / {r['pairs']} | "
            f"{r['crossed_at_end']} / {r['pairs']} | {r['past_fraction_sum']:.2f} | "
            f"{'none' if r['first_crossing'] is None else r['first_crossing']} | "
            f"{_passkey_cell(r)} | {_ppl_cell(r)} |")
    return "\n".join(lines)


def _wide_table(rows) -> str:
    lengths = sorted({int(r["length"]) for r in rows})
    by = {(r["method"], int(r["length"])): r for r in rows}
    lines = ["| method | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for m in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for n in lengths:
            r = by.get((m, n))
            cells.append("(pending)" if r is None else
                         f"{r['crossed']}/{r['pairs']} ({r['crossed_at_end']} at end) · "
                         f"{r['past_fraction_sum']:.2f} · {_passkey_cell(r)} · {_ppl_cell(r)}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
