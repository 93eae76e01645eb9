"""The ``mesa-viz`` command: one subcommand per analysis.

Each subcommand is the ``cli.py`` of its analysis (``mesa_viz/analyses/<name>/``),
or of the report (``mesa_viz/report/cli.py``), with ``add_arguments(parser)`` and
``run(args) -> int`` (it writes its rows and figures into the run folder
``--out DIR`` and prints its summary); :data:`SUBCOMMANDS` lists them, and a
module loads only when its subcommand runs.  Adding a subcommand: its module
and one line in :data:`SUBCOMMANDS`.  Shared options and parsers (the run
folder, lists, method parameters, the model) are in :mod:`.common`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

_A = "mesa_viz.analyses"
#: name -> (module, one-line help)
SUBCOMMANDS = {
    "layouts": (f"{_A}.layouts.cli", "every method's position layout and the paper's Figure 1 "
                "(no model)"),
    "attention": (f"{_A}.attention.cli", "the last query's attention past T per method "
                  "(needle share, mass past T)"),
    "attention-map": (f"{_A}.attention_map.cli", "the whole attention map of one layer and "
                      "head, pooled to a grid, per method (time, peak memory)"),
    "thresholds": (f"{_A}.thresholds.cli", "find hidden-state threshold dimensions and "
                   "crossings"),
    "hidden-map": (f"{_A}.thresholds.cli_hidden_map", "heat maps of hidden layers x dims "
                   "around and past T (the paper's Fig. 11-16)"),
    "crossings": (f"{_A}.crossings.cli", "threshold crossings by method and length against "
                  "passkey and perplexity"),
    "passkey": (f"{_A}.passkey.cli", "passkey retrieval accuracy by method, length and depth"),
    "explain": (f"{_A}.explain.cli", "why a result row failed: the answer step's attention "
                "per layer and head under its method and another"),
    "perplexity": (f"{_A}.perplexity.cli", "perplexity of long texts by position bucket, "
                   "method and length"),
    "ruler": (f"{_A}.ruler.cli", "offline RULER tasks through lm-eval by method and length"),
    "bench": (f"{_A}.bench.cli", "prefill/decode time, peak memory and FLOP rate by method "
              "and length"),
    "theory": (f"{_A}.theory.cli", "the constructions of the paper's Appendix E, run "
               "(no model)"),
    "report": ("mesa_viz.report.cli", "headless HTML report of the analyses"),
}
#: Other names of subcommands (kept so earlier command lines still run).
ALIASES = {"ppl": "perplexity"}


def main(argv: list[str] | None = None) -> int:
    """Run ``mesa-viz``; returns the exit status.  A ValueError (bad input)
    exits with its message (``-v``: with the traceback)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="mesa-viz", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = next((ALIASES.get(a, a) for a in argv if ALIASES.get(a, a) in SUBCOMMANDS), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        aliases = [a for a, n in ALIASES.items() if n == name]
        p = sub.add_parser(name, help=help_text, description=help_text, aliases=aliases)
        if name == wanted:
            import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    args.command = ALIASES.get(args.command, args.command)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(import_module(SUBCOMMANDS[args.command][0]).run(args))
    except ValueError as err:
        if args.verbose:
            raise
        raise SystemExit(f"mesa-viz {args.command}: {err}") from err
