"""``mesa-viz ruler``: RULER tasks that build their data offline, through
lm-eval, by method and length.

The prompts (``--samples`` per task and length, lm-eval's own generators) are
made once and shared by every method; one JSON line per method, task, length
and sample is appended to ``DIR/ruler.jsonl`` (a rerun resumes; finished
requests of an interrupted task come back from ``DIR/ruler_cache/``).  Draws
``DIR/ruler.html`` and prints the mean score per method and length.  Needs
``pip install mesa_viz[eval]``.
"""

from __future__ import annotations

import argparse

from ...cli.common import (add_model_arguments, add_out_arguments, add_param_argument,
                           checked_grid, int_list, load, name_list, run_folder)

#: The command's name (its rows file: ``DIR/ruler.jsonl``).
COMMAND = "ruler"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", type=name_list, default=["origin", "mesa"],
                        help="comma-separated method names (default origin,mesa)")
    parser.add_argument("--tasks", type=name_list, default=["ruler_offline"],
                        help="offline RULER tasks, or ruler_offline (all nine; default)")
    parser.add_argument("--lengths", type=int_list, required=True,
                        help="comma-separated target lengths in tokens, e.g. 4096,8192")
    parser.add_argument("--samples", type=int, default=5, help="prompts per task and length")
    add_out_arguments(parser, COMMAND)
    parser.add_argument("--max-gen-toks", type=int, default=None,
                        help="override the tasks' generation budget (changes the protocol)")
    parser.add_argument("--train-length", type=int, default=None,
                        help="T (default the model's max_position_embeddings)")
    add_param_argument(parser)
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ...models.parts import train_length_of
    from ...runs.stats import format_table
    from ...viz.page import save_html
    from .figures import task_scores
    from .rows import summary
    from .tasks import check_tasks
    where = run_folder(args, COMMAND)
    params = checked_grid(args)
    check_tasks(args.tasks)
    try:
        from .run import evaluate
    except ImportError as err:
        raise ValueError(f"lm-eval is not installed ({err}): allowed after "
                         "pip install 'mesa_viz[eval]'") from err
    model, tok, _ = load(args)
    gen = None if args.max_gen_toks is None else {"max_gen_toks": args.max_gen_toks}
    rows = list(evaluate(model, tok, methods=args.methods, tasks=args.tasks,
                         lengths=args.lengths, samples=args.samples, out=where.rows,
                         method_params=params, train_length=args.train_length,
                         gen_kwargs=gen))
    save_html(task_scores(rows, train_length=args.train_length or train_length_of(model)),
              where.figure, title="RULER by method and length")
    print(format_table(summary(rows)))
    return 0
