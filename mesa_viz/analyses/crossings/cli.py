"""``mesa-viz crossings``: does crossing predict failure?

The threshold finder runs once, on origin at the longest length; the same
(layer, dim) pairs and thresholds are measured for every method at every
length (each traced on its own).  Writes one row per (method, length) to
``DIR/crossings.jsonl`` (a rerun resumes; the finder's pairs in
``DIR/crossings_pairs.jsonl``, traces in ``DIR/crossings_traces/``), joins them
with the passkey and perplexity rows given (``--passkey``, ``--ppl``) into
``DIR/crossings_joined.jsonl``, draws ``DIR/crossings.html`` (the table, and
the scatter when scores are given) and prints the table.  ``--join-only`` joins
and draws the rows already there without a model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...cli.common import add_out_arguments, int_list, load, name_list, parse_params, run_folder
from ...methods import METHODS
from ..thresholds.cli import add_finder_arguments, add_input_arguments
from .compute import X_MEASURES

#: The command's name (its rows file: ``DIR/crossings.jsonl``).
COMMAND = "crossings"

LENGTHS = [9216, 12288, 16384]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", type=name_list, default=list(METHODS),
                   help="comma-separated (default every method)")
    p.add_argument("--lengths", type=int_list, default=LENGTHS,
                   help="tokens, each > T; the same as the passkey run's "
                        f"(default {','.join(map(str, LENGTHS))})")
    add_out_arguments(p, COMMAND)
    p.add_argument("--passkey", default=None, help="passkey results (.jsonl/.json/.csv)")
    p.add_argument("--ppl", default=None, help="perplexity rows (.jsonl/.json/.csv)")
    p.add_argument("--ppl-text", default=None, help="use only this text's perplexity rows")
    p.add_argument("--x", default=X_MEASURES[0], choices=X_MEASURES, help="the scatter's x")
    p.add_argument("--join-only", action="store_true",
                   help="no model: join and draw the rows already in DIR/crossings.jsonl")
    add_input_arguments(p, "filler")
    add_finder_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ...runs.jsonl import read_jsonl
    from . import compute
    where = run_folder(args, COMMAND)
    out = where.rows
    for option, path in (("--passkey", args.passkey), ("--ppl", args.ppl)):
        if path and not Path(path).is_file():
            raise ValueError(f"{option} {path}: no such file: allowed an existing results file "
                             "(or leave it out and join later with --join-only)")
    if args.join_only:
        rows = read_jsonl(out)
        if not rows:
            raise ValueError(f"--join-only: {out} holds no rows: allowed a file written by "
                             "mesa-viz crossings")
    else:
        params = parse_params(args.param)
        model, tok, _ = load(args)
        rows = list(compute.measure(
            model, tok, methods=args.methods, lengths=args.lengths, out=out, text=args.text,
            word=args.word, hidden_layers=args.hidden_layers, window=args.window,
            min_correlation=args.min_correlation, top=args.top, method_params=params,
            train_length=args.train_length))
    joined = _join(rows, args, where)
    print(compute.format_table(joined))
    print(compute.format_table(joined, wide=True))
    print(compute.summary(joined))
    return 0


def _join(rows: list[dict], args, where) -> list[dict]:
    """The rows joined with the scores given, written whole to
    ``DIR/crossings_joined.jsonl`` (a temporary file moved into place) and drawn."""
    from ...runs.jsonl import load_rows, write_jsonl
    from ...viz.page import save_html
    from . import compute
    from .figures import crossing_scatter
    passkey = load_rows(args.passkey) if args.passkey else None
    ppl = load_rows(args.ppl) if args.ppl else None
    joined = compute.join(rows, passkey, ppl, ppl_text=args.ppl_text)
    write_jsonl(where.beside(f"{COMMAND}_joined.jsonl"), joined)
    items = [f"<p class='note'>{compute.summary(joined)}</p>",
             "<pre>" + compute.format_table(joined) + "</pre>",
             "<pre>" + compute.format_table(joined, wide=True) + "</pre>"]
    if any(r["accuracy"] is not None or r["ppl_past_t"] is not None for r in joined):
        items.insert(0, crossing_scatter(joined, x=args.x))
    save_html(items, where.figure, title="Does crossing predict failure?")
    return joined
