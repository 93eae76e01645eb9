"""``mesa-viz explain``: why one result row failed.

    mesa-viz explain --passkey runs/demo/passkey.jsonl --out runs/explain      # first failed row
    mesa-viz explain --passkey FILE --index 3 --against rerope --out DIR

Re-runs the row's sample under its method and the comparison, capturing the
answer step at every layer and head; writes ``DIR/explain_<row>_vs_<method>``
(``.json`` + ``.npz``: redraws without the model; a rerun loads it) and its
figures to ``DIR/explain.html`` (or ``--figure``); prints the answers and the
heads that carry the needle.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...cli.common import (add_model_arguments, add_out_arguments, add_param_argument, load,
                           parse_params, run_folder)

#: The command's name (its page: ``DIR/explain.html``).
COMMAND = "explain"


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--passkey", type=Path, help="results file (.jsonl/.json/.csv) of passkey "
                                                  "or a needle task")
    src.add_argument("--row", help="one result row as JSON")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--index", type=int, default=None, help="row number in the file (0-based)")
    pick.add_argument("--failed", type=int, default=0,
                      help="the K-th failed row of the file (0-based; default 0, the first)")
    p.add_argument("--against", default=None,
                   help="the method to compare with (default origin; mesa for an origin row)")
    p.add_argument("--query-row", type=int, default=None,
                   help="the answer step (default the last prompt token)")
    p.add_argument("--top", type=int, default=8, help="heads listed and drawn")
    p.add_argument("--max-new-tokens", type=int, default=8, help="greedy answer length")
    p.add_argument("--train-length", type=int, default=None,
                   help="T (default the row's, else the model's)")
    add_out_arguments(p, COMMAND)
    add_param_argument(p)
    add_model_arguments(p)


def pick_row(args: argparse.Namespace) -> dict:
    """The row ``--row``, ``--index`` or ``--failed`` names."""
    if args.row is not None:
        return json.loads(args.row)
    from ...runs.jsonl import load_rows
    rows = load_rows(args.passkey)
    if args.index is not None:
        if not 0 <= args.index < len(rows):
            raise ValueError(f"--index {args.index}: allowed 0..{len(rows) - 1} "
                             f"({len(rows)} rows in {args.passkey})")
        return rows[args.index]
    failed = [r for r in rows if not r.get("correct")]
    if not 0 <= args.failed < len(failed):
        raise ValueError(f"--failed {args.failed}: allowed 0..{len(failed) - 1} "
                         f"({len(failed)} failed rows in {args.passkey})")
    return failed[args.failed]


def run(args: argparse.Namespace) -> int:
    from ...viz.page import save_html
    from .compute import Explanation, comparison_for, explain, file_name
    from .figures import explanation_figures
    where = run_folder(args, COMMAND)
    row = pick_row(args)
    against = args.against or comparison_for(row.get("method"))
    params = parse_params(args.param)
    path = where.beside(file_name(row, against))
    if Path(f"{path}.json").exists():
        exp = Explanation.load(path)
        print(f"loaded {path}.json (delete it to re-run)")
    else:
        model, tok, _ = load(args)
        exp = explain(row, model, tok, against=against, against_params=params.get(against),
                      query_row=args.query_row, max_new_tokens=args.max_new_tokens,
                      train_length=args.train_length)
        exp.save(path)
    figures = explanation_figures(exp, top=args.top)
    save_html(list(figures.values()), where.figure, title=f"why it fails: {path.name}")
    print(exp.summary(args.top))
    print(f"wrote {path}.json, .npz and {where.figure}")
    return 0
