"""``mesa-viz passkey``: passkey accuracy by method, length and depth.

Writes ``DIR/passkey.jsonl`` (one line per sample, resumed) and
``DIR/passkey.html``, and prints the accuracy table.
"""

from __future__ import annotations

import argparse
import logging

from ...cli.common import (add_model_arguments, add_out_arguments, add_param_argument,
                           float_list, int_list, load, name_list, parse_params, run_folder)
from ...methods import METHODS

log = logging.getLogger(__name__)

#: The command's name (its rows file: ``DIR/passkey.jsonl``).
COMMAND = "passkey"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", type=name_list, default=["origin", "mesa"],
                        help=f"comma-separated method names, of {','.join(METHODS)} "
                             "(default origin,mesa)")
    parser.add_argument("--lengths", type=int_list, default=None,
                        help="comma-separated prompt lengths in tokens, e.g. 12288,16384")
    parser.add_argument("--depths", type=float_list, default=None,
                        help="comma-separated needle depths in [0, 1] (default 0.1,0.5,0.9)")
    parser.add_argument("--samples", type=int, default=1, help="samples per length x depth")
    add_out_arguments(parser, COMMAND)
    parser.add_argument("--data", default=None,
                        help="JSONL samples from datas/make_passkey_data.py (else made here)")
    add_param_argument(parser)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1,
                        help="samples of one method, length and depth answered in one batch "
                             "(default 1; on a GPU larger batches amortise each forward; the "
                             "rows are the same)")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ...models.parts import train_length_of
    from ...runs.stats import format_table
    from ...viz.page import save_html
    from . import check_batch_size, check_grid, evaluate, read_samples, summary
    from .figures import passkey_accuracy_lines, passkey_heatmap
    where = run_folder(args, COMMAND)
    params = parse_params(args.param)
    if args.data is None:
        if not args.lengths:
            raise ValueError("--lengths is empty: allowed comma-separated token counts "
                             "(or --data FILE.jsonl)")
        samples = args.samples
    else:
        samples = read_samples(args.data)
    check_grid(args.methods, args.lengths, args.depths, params)
    check_batch_size(args.batch_size)
    model, tok, _ = load(args)
    rows = list(evaluate(model, tok, methods=args.methods, lengths=args.lengths,
                         depths=args.depths, samples=samples, out=where.rows,
                         method_params=params, max_new_tokens=args.max_new_tokens,
                         batch_size=args.batch_size))
    if not rows:
        log.warning("no rows: every length was refused")
        return 1
    T = train_length_of(model)
    save_html([passkey_heatmap(rows, train_length=T),
               passkey_accuracy_lines(rows, train_length=T)], where.figure,
              title="passkey retrieval")
    print(format_table(summary(rows)))
    return 0
