"""``mesa-viz ppl``: perplexity by position bucket, by method, length and text.

Appends one JSON line per method, length, text and bucket to ``--out`` (a
rerun resumes), draws ``<out>.html`` (NLL against position, ``T`` marked) and
prints the mean NLL per bucket at the longest length.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (add_model_arguments, add_param_argument, checked_grid, int_list, load,
                     name_list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", type=name_list, default=["origin", "mesa"],
                        help="comma-separated method names (default origin,mesa)")
    parser.add_argument("--lengths", type=int_list, required=True,
                        help="comma-separated token counts, e.g. 16384,32768")
    parser.add_argument("--texts", type=name_list, default=["book", "code"],
                        help="comma-separated texts: book (the King James Bible), code "
                             "(sympy's polytools.py), or NAME=FILE for a UTF-8 file of yours "
                             "(default book,code)")
    parser.add_argument("--out", required=True, help="JSON-lines file, one line per bucket")
    parser.add_argument("--buckets", type=int_list, default=None,
                        help="bucket edges in tokens from 0 (default 0, T, 1.5T, 2T, ...)")
    parser.add_argument("--train-length", type=int, default=None,
                        help="T (default the model's max_position_embeddings)")
    parser.add_argument("--slice-tokens", type=int, default=512,
                        help="positions the LM head scores at once (memory: x vocab floats)")
    add_param_argument(parser)
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..perplexity import perplexity, summary
    from ..results import format_table
    params = checked_grid(args)
    model, tok, _ = load(args)
    rows = list(perplexity(model, tok, methods=args.methods, lengths=args.lengths,
                           texts=_texts(args.texts), out=args.out, method_params=params,
                           buckets=args.buckets, train_length=args.train_length,
                           slice_tokens=args.slice_tokens))
    if not rows:
        print("no rows: every length was refused (see the warnings)")
        return 1
    from .. import plots
    plots.save_html(plots.ppl_by_position(rows), Path(args.out).with_suffix(".html"),
                    title="perplexity by position")
    print(format_table(summary(rows)))
    return 0


def _texts(items: list[str]):
    """Text names, or ``{name: text}`` when any item is ``NAME=FILE``."""
    if not any("=" in t for t in items):
        return items
    from ..data import long_text
    texts = {}
    for item in items:
        name, sep, path = item.partition("=")
        if sep and not Path(path).is_file():
            raise ValueError(f"--texts {item!r}: {path!r} is not a file; allowed NAME=FILE "
                             "with a UTF-8 text file, or book, code")
        texts[name] = Path(path).read_text(encoding="utf-8") if sep else long_text(name)
    return texts
