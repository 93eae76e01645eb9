"""``mesa-viz crossings``: does crossing predict failure?

The threshold finder runs once, on origin at the longest length; the same
(layer, dim) pairs and thresholds are measured for every method at every
length (each traced on its own).  Writes one row per (method, length) to
``OUT`` (JSON lines; a rerun resumes), joins them with the passkey and
perplexity rows given (``--passkey``, ``--ppl``) into ``<OUT stem>_joined.jsonl``,
draws ``<OUT stem>.html`` (the table, and the scatter when scores are given)
and prints the table.  ``--join-only`` joins and draws the rows already in
``OUT`` without a model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import int_list, load, name_list, parse_params
from .thresholds import add_finder_arguments, add_input_arguments

LENGTHS = [9216, 12288, 16384]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..failure import X_MEASURES
    from ..methods import METHODS
    p.add_argument("--methods", type=name_list, default=list(METHODS),
                   help="comma-separated (default every method)")
    p.add_argument("--lengths", type=int_list, default=LENGTHS,
                   help="tokens, each > T; the same as the passkey run's "
                        f"(default {','.join(map(str, LENGTHS))})")
    p.add_argument("--out", required=True, help="JSON-lines file, one row per (method, length)")
    p.add_argument("--passkey", default=None, help="passkey results (.jsonl/.json/.csv)")
    p.add_argument("--ppl", default=None, help="perplexity rows (.jsonl/.json/.csv)")
    p.add_argument("--ppl-text", default=None, help="use only this text's perplexity rows")
    p.add_argument("--x", default=X_MEASURES[0], choices=X_MEASURES, help="the scatter's x")
    p.add_argument("--join-only", action="store_true",
                   help="no model: join and draw the rows already in --out")
    add_input_arguments(p, "filler")
    add_finder_arguments(p)


def run(args: argparse.Namespace) -> int:
    from .. import failure
    from ..results import read_jsonl
    out = Path(args.out)
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
        rows = list(failure.measure(
            model, tok, methods=args.methods, lengths=args.lengths, out=out, text=args.text,
            word=args.word, hidden_layers=args.hidden_layers, window=args.window,
            min_correlation=args.min_correlation, top=args.top, method_params=params,
            train_length=args.train_length))
    joined = _join(rows, args)
    print(failure.format_table(joined))
    print(failure.format_table(joined, wide=True))
    print(failure.summary(joined))
    return 0


def _join(rows: list[dict], args) -> list[dict]:
    from .. import failure, plots
    from ..results import append_jsonl
    passkey = plots.load_rows(args.passkey) if args.passkey else None
    ppl = plots.load_rows(args.ppl) if args.ppl else None
    joined = failure.join(rows, passkey, ppl, ppl_text=args.ppl_text)
    out = Path(args.out)
    path = out.with_name(out.stem + "_joined.jsonl")
    path.unlink(missing_ok=True)
    for r in joined:
        append_jsonl(path, r)
    items = [f"<p class='note'>{failure.summary(joined)}</p>",
             "<pre>" + failure.format_table(joined) + "</pre>",
             "<pre>" + failure.format_table(joined, wide=True) + "</pre>"]
    if any(r["accuracy"] is not None or r["ppl_past_t"] is not None for r in joined):
        items.insert(0, plots.crossing_scatter(joined, x=args.x))
    plots.save_html(items, out.with_suffix(".html"), title="Does crossing predict failure?")
    return joined
