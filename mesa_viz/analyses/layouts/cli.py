"""``mesa-viz layouts``: every method's position layout, no model.

Writes one row per method to ``DIR/layouts.jsonl`` (its resolved parameters,
largest relative position, chunk plan) and draws ``DIR/layouts.html``: the
paper's Figure 1, every layout side by side, Mesa's layout, chunk plan and its
difference with origin.
"""

from __future__ import annotations

import argparse

from ...cli.common import add_out_arguments, add_param_argument, name_list, parse_params, run_folder
from ...methods import METHODS

#: The command's name (its rows file: ``DIR/layouts.jsonl``).
COMMAND = "layouts"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", type=name_list, default=list(METHODS),
                   help=f"comma-separated, of {','.join(METHODS)} (default all)")
    p.add_argument("--seq-len", type=int, default=48, help="tokens of each layout")
    p.add_argument("--train-length", type=int, default=16, help="T of each layout")
    add_out_arguments(p, COMMAND)
    add_param_argument(p)


def run(args: argparse.Namespace) -> int:
    from ...methods.layouts import layout
    from ...runs.jsonl import write_jsonl
    from ...runs.validate import check_methods
    from ...viz.page import save_html
    from .figures import (chunk_plan_figure, figure1, layout_difference, layout_heatmap,
                          layouts_side_by_side)
    where = run_folder(args, COMMAND)
    params = parse_params(args.param)
    check_methods(args.methods, params)
    lays = [layout(m, args.seq_len, train_length=args.train_length, **params.get(m, {}))
            for m in args.methods]
    write_jsonl(where.rows, [                              # a layout is recomputed in no time
        {"method": lay.method, "seq_len": lay.seq_len, "params": lay.params,
         "max_relative_position": lay.max_relative_position,
         "chunk_plan": lay.chunk_plan.to_dict() if lay.chunk_plan else None,
         "rope_rule": lay.rope_rule} for lay in lays])
    items = [figure1(), layouts_side_by_side(lays)]
    by_name = {lay.method: lay for lay in lays}
    if "mesa" in by_name:
        mesa = by_name["mesa"]
        items += [layout_heatmap(mesa), chunk_plan_figure(mesa)]
        if "origin" in by_name:
            items.append(layout_difference(mesa, by_name["origin"]))
    save_html(items, where.figure, title="position layouts")
    for lay in lays:
        print(f"{lay.method:<14} largest relative position {lay.max_relative_position:g} "
              f"(T={args.train_length}) {lay.params}")
    return 0
