"""``mesa-viz passkey``: passkey accuracy by method, length and depth.

Writes ``OUT/passkey.jsonl`` (one line per sample, resumed) and
``OUT/passkey.html``, and prints the accuracy table.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..methods import METHODS
from .common import (add_model_arguments, add_param_argument, float_list, int_list, load,
                     name_list, parse_params)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", type=name_list, default=["origin", "mesa"],
                        help=f"comma-separated method names, of {','.join(METHODS)} "
                             "(default origin,mesa)")
    parser.add_argument("--lengths", type=int_list, default=None,
                        help="comma-separated prompt lengths in tokens, e.g. 12288,16384")
    parser.add_argument("--depths", type=float_list, default=None,
                        help="comma-separated needle depths in [0, 1] (default 0.1,0.5,0.9)")
    parser.add_argument("--samples", type=int, default=1, help="samples per length x depth")
    parser.add_argument("--out", required=True, help="output folder (passkey.jsonl, passkey.html)")
    parser.add_argument("--data", default=None,
                        help="JSONL samples from datas/make_passkey_data.py (else made here)")
    add_param_argument(parser)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..passkey import RESULTS_FILE, check_grid, evaluate, format_table, read_samples, summary
    params = parse_params(args.param)
    if args.data is None:
        if not args.lengths:
            raise ValueError("--lengths is empty: allowed comma-separated token counts "
                             "(or --data FILE.jsonl)")
        samples = args.samples
    else:
        samples = read_samples(args.data)
    check_grid(args.methods, args.lengths, args.depths, params)
    model, tok, _ = load(args)
    rows = list(evaluate(model, tok, methods=args.methods, lengths=args.lengths,
                         depths=args.depths, samples=samples,
                         out=Path(args.out) / RESULTS_FILE, method_params=params,
                         max_new_tokens=args.max_new_tokens))
    if not rows:
        log.warning("no rows: every length was refused")
        return 1
    _draw(rows, Path(args.out) / "passkey.html", model)
    print(format_table(summary(rows)))
    return 0


def _draw(rows, path: Path, model) -> None:
    from .. import plots
    from ..application import train_length_of

    figs = [plots.passkey_heatmap(rows),
            plots.passkey_accuracy_lines(rows, train_length=train_length_of(model))]
    plots.save_html(figs, path, title="passkey retrieval")
