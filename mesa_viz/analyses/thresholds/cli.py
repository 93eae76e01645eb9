"""``mesa-viz thresholds``: hidden-state threshold pairs and each method's crossings.

Writes the pairs to ``DIR/thresholds.jsonl`` (one line a pair), the traces to
``DIR/thresholds_traces/`` (reused by a rerun) and the four strongest pairs'
figure to ``DIR/thresholds.html``; prints one line per pair.  The options of the
traced input and of the finder are shared with ``hidden-map`` and ``crossings``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...cli.common import (add_model_arguments, add_out_arguments, add_param_argument, int_list,
                           load, name_list, parse_params, run_folder)
from ...methods import METHODS
from .compute import INPUTS

#: The command's name (its rows file: ``DIR/thresholds.jsonl``).
COMMAND = "thresholds"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length", type=int, default=16384, help="tokens per trace")
    p.add_argument("--methods", type=name_list, default=["origin", "mesa", "rerope"],
                   help=f"comma-separated, of {','.join(METHODS)} (origin is always traced)")
    add_out_arguments(p, COMMAND)
    add_input_arguments(p, "filler")
    add_finder_arguments(p)


def add_input_arguments(p: argparse.ArgumentParser, default: str) -> None:
    """``--text`` (:data:`.compute.INPUTS`) and ``--word``: the traced input."""
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
    from .compute import find, format_pairs
    where = run_folder(args, COMMAND)
    params = parse_params(args.param)
    model, tok, _ = load(args)
    found = find(model, tok, length=args.length, methods=args.methods,
                 hidden_layers=args.hidden_layers, window=args.window,
                 min_correlation=args.min_correlation, top=args.top, method_params=params,
                 train_length=args.train_length, out=where.rows, text=args.text, word=args.word)
    _figure(found, where.figure, args.window)
    print(format_pairs(found.pairs))
    return 0


def _figure(found, path: Path, window: int) -> None:
    from ...viz.page import save_html
    from .compute import smooth
    from .figures import hidden_state_figure
    traces = found.traces
    figs = [hidden_state_figure(
        {m: smooth(t.hidden_values(p.layer, p.dim), window) for m, t in traces.items()},
        train_length=next(iter(traces.values())).train_length, threshold=p.threshold,
        title=f"layer {p.layer}, dim {p.dim} (r = {p.correlation:+.3f})") for p in found.pairs[:4]]
    if figs:
        save_html(figs, path, title="Hidden-state thresholds")
