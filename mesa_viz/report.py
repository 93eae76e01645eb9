"""``mesa-viz report``: a headless, self-contained HTML report.

Sections: the layouts of every method and Mesa's chunk plan; attention of
the last query under each traced method on a prompt past the training length
(needle marked); hidden-state thresholds (when ``mesa_viz.thresholds`` is
available); passkey and bench sweeps from result files (``--passkey``,
``--bench``).  Everything computed is saved next to the HTML (``<out>_data/``)
before it is drawn.  One HTML file, plotly.js inlined: it works offline.

    mesa-viz report --out report.html                  # default model, 1.25 x T tokens
    mesa-viz report --tiny --out /tmp/r.html           # random tiny model, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import plots
from .layouts import layout
from .methods import METHODS

__all__ = ["add_arguments", "run", "build_report"]

log = logging.getLogger(__name__)

TINY_TRAIN_LENGTH = 64
TINY_LENGTH = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``mesa-viz report`` options."""
    parser.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file to write")
    parser.add_argument("--model", default=None,
                        help="HF id or local path (default: SmolLM2-135M-Instruct, offline)")
    parser.add_argument("--tiny", action="store_true",
                        help=f"random-weight tiny llama, T={TINY_TRAIN_LENGTH}, "
                             f"{TINY_LENGTH} tokens (tests)")
    parser.add_argument("--no-model", action="store_true",
                        help="layouts and given result files only")
    parser.add_argument("--length", type=int, default=None,
                        help="prompt length in tokens (default: 1.25 x train length)")
    parser.add_argument("--train-length", type=int, default=None,
                        help="training length T (default: the model's)")
    parser.add_argument("--methods", nargs="+", default=["origin", "mesa"],
                        choices=list(METHODS), help="methods traced on the model")
    parser.add_argument("--layers", type=int, nargs="+", default=None,
                        help="decoder layers whose attention is shown (default: first, middle, last)")
    parser.add_argument("--layout-length", type=int, default=48,
                        help="sequence length of the layout figures")
    parser.add_argument("--layout-train-length", type=int, default=16,
                        help="train length of the layout figures")
    parser.add_argument("--window", type=int, default=None,
                        help="threshold smoothing window (default min(256, T/4))")
    parser.add_argument("--min-correlation", type=float, default=None,
                        help="threshold finder |r| cut (default 0.99; 0.5 with --tiny)")
    parser.add_argument("--passkey", type=Path, default=None, help="passkey results (.jsonl/.json/.csv)")
    parser.add_argument("--bench", type=Path, default=None, help="bench results (.jsonl/.json/.csv)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """Build the report; returns the exit status."""
    path = build_report(args)
    log.info("wrote %s", path)
    return 0


def _h(text: str, level: int = 2) -> str:
    return f"<h{level}>{html.escape(text)}</h{level}>"


def _p(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


def build_report(args: argparse.Namespace) -> Path:
    """Compute, save and draw every section; returns the HTML path."""
    out = Path(args.out)
    data = out.with_name(out.stem + "_data")
    data.mkdir(parents=True, exist_ok=True)
    steps = [("layouts", _layout_section)]
    if not args.no_model:
        steps.append(("model", _model_sections))
    steps += [("passkey", _passkey_section), ("bench", _bench_section)]
    items: list = [_p("Mesa-Extrapolation (arXiv 2410.15859) and its baselines: position "
                      "layouts, attention past the training length, hidden-state thresholds, "
                      f"passkey retrieval and cost. Data: {data.name}/")]
    for name, step in tqdm(steps, desc="report", unit="section"):
        log.info("report section: %s", name)
        items += step(args, data)
    return plots.save_html(items, out, title="mesa_viz report")


# -- layouts ---------------------------------------------------------------------

def _layout_section(args, data: Path) -> list:
    n, T = args.layout_length, args.layout_train_length
    lays = [layout(m, n, train_length=T) for m in METHODS]
    summary = [{"method": l.method, "seq_len": n, "params": l.params,
                "max_relative_position": l.max_relative_position,
                "chunk_plan": l.chunk_plan.to_dict() if l.chunk_plan else None} for l in lays]
    (data / "layouts.json").write_text(json.dumps(summary, indent=1))
    mesa = next(l for l in lays if l.method == "mesa")
    origin = next(l for l in lays if l.method == "origin")
    beyond = [l.method for l in lays if l.max_relative_position >= T]
    return [_h("Position layouts"),
            _p(f"n={n}, T={T}. Methods using relative positions >= T somewhere: "
               f"{', '.join(beyond) or 'none'}."),
            plots.layouts_side_by_side(lays), plots.layout_heatmap(mesa),
            plots.chunk_plan_figure(mesa), plots.layout_difference(mesa, origin)]


# -- the model: attention and thresholds -------------------------------------------

def _load(args):
    from .application import train_length_of
    if args.tiny:
        from .models import tiny_model
        from .passkey import default_tokenizer
        tok = default_tokenizer()
        T = args.train_length or TINY_TRAIN_LENGTH
        model, _ = tiny_model("llama", seed=args.seed, vocab_size=len(tok),
                              max_position_embeddings=T)
    else:
        from .models import load_model
        model, tok = load_model(args.model, device=args.device)
        T = args.train_length or train_length_of(model)
    n = args.length or (TINY_LENGTH if args.tiny else int(T * 1.25))
    if args.min_correlation is None:
        args.min_correlation = 0.5 if args.tiny else 0.99
    return model, tok, T, n


def _model_sections(args, data: Path) -> list:
    model, tok, T, n = _load(args)
    ids, needle, info = _prompt(model, tok, n, args.seed)
    np.save(data / "input_ids.npy", ids)
    (data / "prompt.json").write_text(json.dumps({"needle": needle, **info}))
    items = [_h("Attention past the training length"),
             _p(f"{n} tokens, T={T}; {info.get('what', '')}")]
    items += _attention_section(args, data, model, tok, ids, needle, T)
    items += _threshold_section(args, data, model, tok, n, T)
    return items


def _prompt(model, tok, n: int, seed: int):
    """``(ids [pos], needle (start, stop) or None, info)``: a passkey prompt of
    ``n`` tokens (needle at half depth) when there is a tokenizer, else random
    ids with a marked span at half depth."""
    if tok is not None:
        from .passkey import make_sample
        s = make_sample(tok, n, depth=0.5, seed=seed)
        return (np.asarray(s["input_ids"]), tuple(s["needle_span"]),
                {"what": "passkey prompt, needle at half depth", "passkey": s["passkey"]})
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, model.config.vocab_size, size=n)
    start = n // 2
    return ids, (start, start + 5), {"what": "random token ids; marked span at half depth"}


def _pick_layers(model, layers):
    L = model.config.num_hidden_layers
    if layers is None:
        return sorted({0, L // 2, L - 1})
    bad = [l for l in layers if not 0 <= l < L]
    if bad:
        raise ValueError(f"--layers {bad} out of range: allowed [0, {L - 1}]")
    return list(layers)


def _attention_section(args, data, model, tok, ids, needle, T) -> list:
    from . import trace
    n = len(ids)
    layers = _pick_layers(model, args.layers)
    rows, names, items = [], [], []
    for method in tqdm(args.methods, desc="trace", unit="method"):
        tr = trace(model, ids, method=method, layers=layers, query_rows=[n - 1],
                   hidden_layers=[], tokenizer=tok, train_length=T)
        tr.save(data / f"trace_{method}")
        per_layer = tr.attention[:, :, 0].max(axis=1)           # [layer, k_pos], max over heads
        marks = {"needle": needle} if needle else None
        items.append(plots.attention_heatmap(
            per_layer, [f"layer {l}" for l in tr.layers], marks=marks, train_length=T,
            row_title="layer (max over heads)",
            title=f"{method}: attention of the last query (q={n - 1}), max over heads"))
        rows.append(tr.attention[:, :, 0].mean(axis=(0, 1)))     # [k_pos]
        names.append(method)
        if needle:
            share = tr.attention[:, :, 0, needle[0]:needle[1]].sum(axis=-1)   # [layer, head]
            items.append(_p(f"{method}: needle share of the last query's attention, "
                            f"mean over heads, by layer: " + ", ".join(
                                f"{l}: {s:.2%}" for l, s in zip(tr.layers, share.mean(axis=1)))))
    items.append(plots.attention_by_distance(
        np.stack(rows), [n - 1] * len(rows), names=names, train_length=T,
        title="attention mass of the last query by distance (mean over layers and heads)"))
    return items


def _threshold_section(args, data, model, tok, n, T) -> list:
    try:
        from .thresholds import run_thresholds
    except ImportError:
        return [_h("Hidden-state thresholds"), _p("mesa_viz.thresholds is not available.")]
    if tok is None:
        return [_h("Hidden-state thresholds"), _p("needs a tokenizer (plain-text input).")]
    window = args.window or max(1, min(256, T // 4))
    pairs, traces = run_thresholds(
        model, tok, n, args.methods, window=window, min_correlation=args.min_correlation,
        method_params={m: {"train_length": T} for m in ["origin", *args.methods]},
        out_dir=data / "thresholds")
    pairs = [dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in pairs]
    (data / "thresholds.json").write_text(json.dumps(pairs, indent=1, default=float))
    items = [_h("Hidden-state thresholds (Figure 2)"),
             _p(f"(layer, dim) pairs whose value follows log(position) inside T (|r| >= "
                f"{args.min_correlation}), smoothed over {window} tokens; the horizontal line "
                "is the value reached at T. The theory: origin passes it beyond T, a weave PE "
                f"stays inside. {len(pairs)} pairs found.")]
    for p in pairs[:4]:
        values = {m: tr.hidden_values(p["layer"], p["dim"]) for m, tr in traces.items()}
        items.append(plots.hidden_state_figure(
            values, T, threshold=p.get("threshold"), smooth=window,
            title=f"layer {p['layer']}, dim {p['dim']}, r={p['correlation']:+.3f}; past T beyond "
                  f"the threshold: {_fmt_fraction(p.get('past_fraction'))}"))
    return items


def _fmt_fraction(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:.0%}" for k, v in value.items())
    return "n/a" if value is None else f"{value:.0%}"


# -- result files ------------------------------------------------------------------

def _copy_rows(rows, data: Path, name: str) -> None:
    (data / f"{name}.json").write_text(json.dumps(rows, indent=1, default=str))


def _passkey_section(args, data: Path) -> list:
    if args.passkey is None:
        return []
    rows = plots.load_rows(args.passkey)
    _copy_rows(rows, data, "passkey")
    return [_h("Passkey retrieval"), _p(f"{len(rows)} samples from {args.passkey.name}"),
            plots.passkey_accuracy_lines(rows, train_length=args.train_length),
            plots.passkey_heatmap(rows)]


def _bench_section(args, data: Path) -> list:
    if args.bench is None:
        return []
    rows = plots.load_rows(args.bench)
    _copy_rows(rows, data, "bench")
    return [_h("Memory and latency"), _p(f"{len(rows)} rows from {args.bench.name}"),
            plots.bench_figure(rows)]
