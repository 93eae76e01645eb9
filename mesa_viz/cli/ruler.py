"""``mesa-viz ruler``: RULER tasks that build their data offline, through
lm-eval, by method and length.

The prompts (``--samples`` per task and length, lm-eval's own generators) are
made once and shared by every method; one JSON line per method, task, length
and sample is appended to ``--out`` (a rerun resumes; finished requests of an
interrupted task come back from ``<out stem>_cache/``).  Draws
``<out>.html`` and prints the mean score per method and length.  Needs
``pip install mesa_viz[eval]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (add_model_arguments, add_param_argument, checked_grid, int_list, load,
                     name_list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", type=name_list, default=["origin", "mesa"],
                        help="comma-separated method names (default origin,mesa)")
    parser.add_argument("--tasks", type=name_list, default=["ruler_offline"],
                        help="offline RULER tasks, or ruler_offline (all nine; default)")
    parser.add_argument("--lengths", type=int_list, required=True,
                        help="comma-separated target lengths in tokens, e.g. 4096,8192")
    parser.add_argument("--samples", type=int, default=5, help="prompts per task and length")
    parser.add_argument("--out", required=True, help="JSON-lines file, one line per sample")
    parser.add_argument("--max-gen-toks", type=int, default=None,
                        help="override the tasks' generation budget (changes the protocol)")
    parser.add_argument("--train-length", type=int, default=None,
                        help="T (default the model's max_position_embeddings)")
    add_param_argument(parser)
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..lm_eval_tasks import check_tasks, summary
    from ..results import format_table
    params = checked_grid(args)
    check_tasks(args.tasks)
    try:
        from ..lm_eval_model import evaluate
    except ImportError as err:
        raise ValueError(f"lm-eval is not installed ({err}): allowed after "
                         "pip install 'mesa_viz[eval]'") from err
    model, tok, _ = load(args)
    gen = None if args.max_gen_toks is None else {"max_gen_toks": args.max_gen_toks}
    rows = list(evaluate(model, tok, methods=args.methods, tasks=args.tasks,
                         lengths=args.lengths, samples=args.samples, out=args.out,
                         method_params=params, train_length=args.train_length,
                         gen_kwargs=gen))
    from .. import plots
    from ..application import train_length_of
    plots.save_html(plots.task_scores(rows, train_length=args.train_length
                                      or train_length_of(model)),
                    Path(args.out).with_suffix(".html"), title="RULER by method and length")
    print(format_table(summary(rows)))
    return 0
