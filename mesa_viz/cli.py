"""The ``mesa-viz`` command: one subcommand per analysis.

Each subcommand lives in its own module, which provides
``add_arguments(parser)`` and ``run(args)`` returning an exit status or the
summary text this command prints; modules load only when their subcommand runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

SUBCOMMANDS = {
    "passkey": ("mesa_viz.passkey", "passkey retrieval accuracy by method, length and depth"),
    "thresholds": ("mesa_viz.thresholds", "find hidden-state threshold dimensions and crossings"),
    "bench": ("mesa_viz.bench", "prefill/decode time, peak memory and FLOP rate by method and length"),
    "report": ("mesa_viz.report", "headless HTML report of the analyses"),
}


def main(argv: list[str] | None = None) -> int:
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
    result = import_module(SUBCOMMANDS[args.command][0]).run(args)
    if isinstance(result, str):          # a subcommand's summary table
        print(result)
        return 0
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
