"""``mesa-viz bench``: prefill/decode time, peak memory and FLOP rate by method and length.

Appends to ``DIR/bench.jsonl`` (resumed), draws ``DIR/bench.html`` (or
``--figure``) and prints the table of this model's rows; ``--decode-ab`` and
``--prefill-ab`` append their rows to ``DIR/bench.jsonl`` too.
"""

from __future__ import annotations

import argparse
import time

from ...cli.common import (add_model_arguments, add_out_arguments, add_param_argument, int_list,
                           checked_grid, load, name_list, run_folder)
from .grid import ALL_METHODS, DEFAULT_LENGTHS

#: The command's name (its rows file: ``DIR/bench.jsonl``).
COMMAND = "bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", type=name_list, default=list(ALL_METHODS),
                        help=f"comma-separated methods (default all: {','.join(ALL_METHODS)})")
    parser.add_argument("--lengths", type=int_list, default=list(DEFAULT_LENGTHS),
                        help="comma-separated input lengths in tokens")
    parser.add_argument("--repeats", type=int, default=3, help="prefills per point (median)")
    parser.add_argument("--warmup", type=int, default=0, help="unmeasured prefills first")
    parser.add_argument("--memory", choices=("exact", "rss"), default="exact",
                        help="exact (CPU): one extra untimed prefill a point measured on live "
                             "tensors; rss: the RSS high-water mark of the timed prefills "
                             "(heap leftovers included, one prefill a point); CUDA ignores it")
    parser.add_argument("--decode-tokens", type=int, default=8,
                        help="greedy decode steps after the prefill (0: none)")
    add_out_arguments(parser, COMMAND)
    add_model_arguments(parser)
    parser.add_argument("--train-length", type=int, default=None,
                        help="T (default the model's max_position_embeddings)")
    add_param_argument(parser)
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds; points predicted to pass it are skipped")
    parser.add_argument("--decode-ab", action="store_true",
                        help="instead of the grid: the two --methods' decode at each length, "
                             "one step of each in turn (--decode-tokens steps), rows kind "
                             "decode-ab with the paired ratio (a drifting machine slows both)")
    parser.add_argument("--prefill-ab", action="store_true",
                        help="instead of the grid: the two --methods' prefills at each length "
                             "taken in turn, --warmup rounds then --repeats timed ones, rows kind "
                             "prefill-ab with the paired ratio (a drifting machine slows both)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ...analyses import bench
    where = run_folder(args, COMMAND)
    if args.decode_ab and args.prefill_ab:
        raise SystemExit("mesa-viz bench: --decode-ab and --prefill-ab are two runs: give one")
    params = checked_grid(args)
    model, _, name = load(args)
    if args.decode_ab:
        return _decode_ab(model, args, where.rows, params)
    if args.prefill_ab:
        return _prefill_ab(model, args, where.rows, params)
    deadline = None if args.time_budget is None else time.monotonic() + args.time_budget
    settings = bench.Settings(repeats=args.repeats, decode_tokens=args.decode_tokens,
                              warmup=args.warmup, seed=args.seed,
                              exact_memory=args.memory == "exact")
    bench.run(model, args.methods, args.lengths, where.rows, model_name=name,
              method_params=params, train_length=args.train_length, settings=settings,
              deadline=deadline, progress=not args.no_progress)
    rows = bench.rows_for(where.rows, model, name)
    _figure(rows, where.figure, name)
    print(bench.summary_table(rows))
    return 0


def _decode_ab(model, args, out, params: dict) -> int:
    from ...analyses import bench
    return _save_ab(out, bench.decode_ab(
        model, args.methods, args.lengths, max(2, args.decode_tokens),
        train_length=args.train_length, seed=args.seed, method_params=params), "ms", "step")


def _prefill_ab(model, args, out, params: dict) -> int:
    from ...analyses import bench
    return _save_ab(out, bench.prefill_ab(
        model, args.methods, args.lengths, args.repeats, warmup=args.warmup,
        train_length=args.train_length, seed=args.seed, progress=not args.no_progress,
        method_params=params), "s", "prefill")


def _save_ab(out, rows, unit: str, what: str) -> int:
    """Append each A/B row to ``out`` as it comes and print its line."""
    from ...runs.jsonl import append_jsonl
    for row in rows:
        append_jsonl(out, row)
        a, b = row["methods"]
        timed = row.get("repeats") or row["steps"] - 1
        print(f"{row['length']} tokens: {a} {row[unit][a]:.2f} {unit}, {b} {row[unit][b]:.2f} "
              f"{unit} a {what} (median of {timed}); {b}/{a} paired {row['ratio_paired']:.3f}, "
              f"of medians {row['ratio_of_medians']:.3f}")
    return 0


def _figure(rows, path, name: str) -> None:
    from ...viz.page import save_html
    from .figures import bench_figure
    pts = [r for r in rows if r.get("kind", "point") == "point" and not r.get("skipped")]
    if not pts:
        return
    first = pts[0]
    save_html(bench_figure(pts, title=f"{name} on {first.get('device')} ({first.get('dtype')})"),
              path, title="mesa_viz bench")
