"""``mesa-viz report``: a headless, self-contained HTML report.

    mesa-viz report --out runs/report                  # default model, 1.25 x T tokens
    mesa-viz report --tiny --out /tmp/r                # random tiny model, seconds
    mesa-viz report --no-model --passkey runs/demo/passkey.jsonl --bench runs/bench/bench.jsonl

Writes ``DIR/report.html`` (or ``--figure``) and what it computed beside it
(``DIR/report_data/``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..methods import METHODS
from ..cli.common import (add_model_arguments, add_out_arguments, int_list, load, name_list,
                          run_folder)

#: The command's name (its page: ``DIR/report.html``).
COMMAND = "report"

#: Prompt length of ``--tiny`` (its T is 64).
TINY_LENGTH = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_out_arguments(parser, COMMAND)
    add_model_arguments(parser)
    parser.add_argument("--no-model", action="store_true",
                        help="layouts and given result files only")
    parser.add_argument("--length", type=int, default=None,
                        help=f"prompt length in tokens (default: 1.25 x T; {TINY_LENGTH} "
                             "with --tiny)")
    parser.add_argument("--train-length", type=int, default=None,
                        help="training length T (default: the model's)")
    parser.add_argument("--methods", type=name_list, default=["origin", "mesa"],
                        help=f"comma-separated methods traced on the model, of {','.join(METHODS)}")
    parser.add_argument("--layers", type=int_list, default=None,
                        help="comma-separated decoder layers whose attention is shown "
                             "(default: first, middle, last)")
    parser.add_argument("--layout-length", type=int, default=48,
                        help="sequence length of the layout figures")
    parser.add_argument("--layout-train-length", type=int, default=16,
                        help="train length of the layout figures")
    parser.add_argument("--window", type=int, default=None,
                        help="threshold smoothing window (default min(256, T/4))")
    parser.add_argument("--min-correlation", type=float, default=None,
                        help="threshold finder |r| cut (default 0.99; 0.5 with --tiny)")
    parser.add_argument("--passkey", type=Path, default=None,
                        help="passkey results (.jsonl/.json/.csv)")
    parser.add_argument("--bench", type=Path, default=None,
                        help="bench results (.jsonl/.json/.csv)")
    parser.add_argument("--perplexity", "--ppl", type=Path, default=None,
                        help="perplexity results of mesa-viz perplexity (.jsonl)")
    parser.add_argument("--ruler", type=Path, default=None,
                        help="RULER results of mesa-viz ruler (.jsonl)")
    parser.add_argument("--crossings", type=Path, default=None,
                        help="joined rows of mesa-viz crossings (crossings_joined.jsonl)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from . import build
    where = run_folder(args, COMMAND)
    min_correlation = args.min_correlation
    if min_correlation is None:
        min_correlation = 0.5 if args.tiny else 0.99       # a random model has no clean trend
    model, tok = (None, None) if args.no_model else load(args)[:2]
    results = {k: v for k, v in (("passkey", args.passkey), ("bench", args.bench),
                                 ("perplexity", args.perplexity), ("ruler", args.ruler),
                                 ("crossings", args.crossings)) if v}
    path = build(where.figure, model=model, tokenizer=tok, results=results,
                 train_length=args.train_length,
                 length=args.length or (TINY_LENGTH if args.tiny else None),
                 methods=tuple(args.methods), layers=args.layers,
                 layout_length=args.layout_length, layout_train_length=args.layout_train_length,
                 window=args.window, seed=args.seed, min_correlation=min_correlation)
    print(f"wrote {path}")
    return 0
