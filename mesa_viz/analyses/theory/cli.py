"""``mesa-viz theory``: the constructions of the paper's Appendix E, run (no model).

Writes one row per PE to ``DIR/theory.jsonl`` (its statement and whether it
holds, where the value crosses ``H``) and draws ``DIR/theory.html`` (the value
at the threshold dimension against ``t``, and the position layer 1 recovers).
"""

from __future__ import annotations

import argparse

from ...cli.common import add_out_arguments, run_folder

#: The command's name (its rows file: ``DIR/theory.jsonl``).
COMMAND = "theory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--M", type=int, default=16, help="the threshold position M")
    p.add_argument("--H", type=float, default=0.5, help="the threshold value H")
    p.add_argument("--N", type=int, default=3, help="ReRoPE's and Stair PE's N")
    p.add_argument("--E", type=int, default=4, help="Stair PE's E")
    p.add_argument("--length", type=int, default=1024, help="t up to this")
    p.add_argument("--layer2", default="corrected", choices=("corrected", "paper"),
                   help="layer 2 as corrected, or Equ.34 as printed")
    add_out_arguments(p, COMMAND)


def run(args: argparse.Namespace) -> int:
    from ...runs.jsonl import write_jsonl
    from ...viz.page import save_html
    from . import compute as theory
    from .figures import recovered_position_figure, theorem_figure
    where = run_folder(args, COMMAND)
    widths = {"rerope": {"N": args.N}, "stair": {"N": args.N, "E": args.E}}
    runs = {pe: theory.run(pe, args.M, args.H, args.length, layer2=args.layer2,
                           **widths.get(pe, {})) for pe in theory.PES}
    rows = [{"pe": pe, "M": args.M, "H": args.H, "length": args.length, "layer2": args.layer2,
             **widths.get(pe, {}), "statement": r.statement().text, "holds": r.statement().holds,
             "crossing": r.crossing()} for pe, r in runs.items()]
    write_jsonl(where.rows, rows)                          # seconds to recompute
    for row in rows:
        print(f"{row['pe']:<9} {row['statement']}")
    t = runs["nope"].t
    save_html([theorem_figure({pe: r.value for pe, r in runs.items()}, args.M, args.H, t),
               recovered_position_figure({pe: r.position for pe, r in runs.items()
                                          if r.position is not None}, t)],
              where.figure, title="the theory, run")
    return 0
