"""``mesa-viz thresholds``: hidden-state threshold pairs and each method's crossings.

Writes the pairs to ``OUT`` (JSON lines), the traces to ``<OUT stem>_traces/``
(reused by a rerun) and the four strongest pairs' figure to ``OUT`` with
``.html``; prints one line per pair.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..methods import METHODS
from .common import add_model_arguments, add_param_argument, int_list, load, name_list, parse_params


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length", type=int, default=16384, help="tokens per trace")
    p.add_argument("--methods", type=name_list, default=["origin", "mesa", "rerope"],
                   help=f"comma-separated, of {','.join(METHODS)} (origin is always traced)")
    p.add_argument("--out", required=True, help="JSON-lines file, one line per pair")
    add_input_arguments(p, "filler")
    add_finder_arguments(p)


def add_input_arguments(p: argparse.ArgumentParser, default: str) -> None:
    """``--text`` (``thresholds.INPUTS``) and ``--word``: the traced input."""
    from ..thresholds import INPUTS
    p.add_argument("--text", default=default, choices=INPUTS,
                   help=f"the traced input (default {default}; word: a word repeated, "
                        "the paper's Figures 11-16)")
    p.add_argument("--word", default="hello", help="the repeated word of --text word")


def add_finder_arguments(p: argparse.ArgumentParser, hidden_help: str = "where the finder "
                         "looks, e.g. 0-8 or 1,2,4 (default 0..8)") -> None:
    """The finder's options (``--hidden-layers``, ``--min-correlation``,
    ``--top``, ``--window``) and :func:`add_run_arguments`."""
    p.add_argument("--hidden-layers", type=int_list, default=None, help=hidden_help)
    p.add_argument("--min-correlation", type=float, default=0.99)
    p.add_argument("--top", type=int, default=8, help="pairs kept")
    p.add_argument("--window", type=int, default=256, help="smoothing window (tokens)")
    add_run_arguments(p)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """``--train-length``, ``--param`` and the model's options."""
    p.add_argument("--train-length", type=int, default=None,
                   help="T (default the model's max_position_embeddings)")
    add_param_argument(p)
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..thresholds import find, format_pairs
    params = parse_params(args.param)
    model, tok, _ = load(args)
    found = find(model, tok, length=args.length, methods=args.methods,
                 hidden_layers=args.hidden_layers, window=args.window,
                 min_correlation=args.min_correlation, top=args.top, method_params=params,
                 train_length=args.train_length, out=args.out, text=args.text, word=args.word)
    _figure(found, Path(args.out).with_suffix(".html"), args.window)
    print(format_pairs(found.pairs))
    return 0


def _figure(found, path: Path, window: int) -> None:
    from .. import plots
    from ..thresholds import smooth
    traces = found.traces
    figs = [plots.hidden_state_figure(
        {m: smooth(t.hidden_values(p.layer, p.dim), window) for m, t in traces.items()},
        train_length=next(iter(traces.values())).train_length, threshold=p.threshold,
        title=f"layer {p.layer}, dim {p.dim} (r = {p.correlation:+.3f})") for p in found.pairs[:4]]
    if figs:
        plots.save_html(figs, path, title="Hidden-state thresholds")
