"""``mesa-viz perplexity`` (also ``mesa-viz ppl``): perplexity by position bucket,
by method, length and text.

Appends one JSON line per method, length, text and bucket to
``DIR/perplexity.jsonl`` (a rerun resumes), draws ``DIR/perplexity.html`` (NLL
against position, ``T`` marked) and prints the mean NLL per bucket at the
longest length.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...cli.common import (add_model_arguments, add_out_arguments, add_param_argument,
                           checked_grid, int_list, load, name_list, run_folder)

#: The command's name (its rows file: ``DIR/perplexity.jsonl``).
COMMAND = "perplexity"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", type=name_list, default=["origin", "mesa"],
                        help="comma-separated method names (default origin,mesa)")
    parser.add_argument("--lengths", type=int_list, required=True,
                        help="comma-separated token counts, e.g. 16384,32768")
    parser.add_argument("--texts", type=name_list, default=["book", "code"],
                        help="comma-separated texts: book (the King James Bible), code "
                             "(sympy's polytools.py), or NAME=FILE for a UTF-8 file of yours "
                             "(default book,code)")
    add_out_arguments(parser, COMMAND)
    parser.add_argument("--buckets", type=int_list, default=None,
                        help="bucket edges in tokens from 0 (default 0, T, 1.5T, 2T, ...)")
    parser.add_argument("--train-length", type=int, default=None,
                        help="T (default the model's max_position_embeddings)")
    parser.add_argument("--slice-tokens", type=int, default=512,
                        help="positions the LM head scores at once (memory: x vocab floats)")
    add_param_argument(parser)
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ...runs.stats import format_table
    from ...viz.page import save_html
    from .figures import ppl_by_position
    from .rows import summary
    from .run import evaluate
    where = run_folder(args, COMMAND)
    params = checked_grid(args)
    model, tok, _ = load(args)
    rows = list(evaluate(model, tok, methods=args.methods, lengths=args.lengths,
                         texts=_texts(args.texts), out=where.rows, method_params=params,
                         buckets=args.buckets, train_length=args.train_length,
                         slice_tokens=args.slice_tokens))
    if not rows:
        print("no rows: every length was refused (see the warnings)")
        return 1
    save_html(ppl_by_position(rows), where.figure, title="perplexity by position")
    print(format_table(summary(rows)))
    return 0


def _texts(items: list[str]):
    """Text names, or ``{name: text}`` when any item is ``NAME=FILE``."""
    if not any("=" in t for t in items):
        return items
    from ...data import long_text
    texts = {}
    for item in items:
        name, sep, path = item.partition("=")
        if sep and not Path(path).is_file():
            raise ValueError(f"--texts {item!r}: {path!r} is not a file; allowed NAME=FILE "
                             "with a UTF-8 text file, or book, code")
        texts[name] = Path(path).read_text(encoding="utf-8") if sep else long_text(name)
    return texts
