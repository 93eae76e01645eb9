"""``python -m mesa_viz_vllm overrides MODEL --method mesa [--train-length T]
[--max-model-len N] [--param name=value ...]``: print the JSON for ``vllm
serve MODEL --hf-overrides``."""

from __future__ import annotations

import argparse
import json
import sys

from .engine import hf_overrides


def _value(text: str):
    """A parameter's value: JSON where it parses (numbers, true, null), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mesa_viz_vllm")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("overrides", help="the --hf-overrides JSON of a method on a model")
    p.add_argument("model")
    p.add_argument("--method", default="mesa")
    p.add_argument("--train-length", type=int)
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    params = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--param {item!r}: allowed NAME=VALUE")
        params[name] = _value(value)
    try:
        out = hf_overrides(args.model, args.method, args.train_length, args.max_model_len,
                           **params)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
