"""The ``mesa-viz`` command: one subcommand per analysis.

Each subcommand is a module of this package with ``add_arguments(parser)``
and ``run(args) -> int`` (it prints its summary and writes its figures);
:data:`SUBCOMMANDS` lists them, and a module loads only when its subcommand
runs.  Adding a subcommand: one module here and one line in
:data:`SUBCOMMANDS`.  Shared options and parsers are in :mod:`.common`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

#: name -> (module, one-line help)
SUBCOMMANDS = {
    "passkey": ("mesa_viz.cli.passkey", "passkey retrieval accuracy by method, length and depth"),
    "thresholds": ("mesa_viz.cli.thresholds",
                   "find hidden-state threshold dimensions and crossings"),
    "bench": ("mesa_viz.cli.bench",
              "prefill/decode time, peak memory and FLOP rate by method and length"),
    "report": ("mesa_viz.cli.report", "headless HTML report of the analyses"),
    "crossings": ("mesa_viz.cli.crossings",
                  "threshold crossings by method and length against passkey and perplexity"),
    "hidden-map": ("mesa_viz.cli.hidden_map",
                   "heat maps of hidden layers x dims around and past T (the paper's Fig. 11-16)"),
    "explain": ("mesa_viz.cli.explain", "why a result row failed: the answer step's attention "
                "per layer and head under its method and another"),
    "attention-map": ("mesa_viz.cli.attention_map", "the whole attention map of one layer and "
                      "head, pooled to a grid, per method (time, peak memory)"),
    "ppl": ("mesa_viz.cli.ppl", "perplexity of long texts by position bucket, method and length"),
    "ruler": ("mesa_viz.cli.ruler", "offline RULER tasks through lm-eval by method and length"),
}


def main(argv: list[str] | None = None) -> int:
    """Run ``mesa-viz``; returns the exit status.  A ValueError (bad input)
    exits with its message (``-v``: with the traceback)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="mesa-viz", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = next((a for a in argv if a in SUBCOMMANDS), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(import_module(SUBCOMMANDS[args.command][0]).run(args))
    except ValueError as err:
        if args.verbose:
            raise
        raise SystemExit(f"mesa-viz {args.command}: {err}") from err
