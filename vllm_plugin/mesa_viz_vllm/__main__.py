"""Two commands:

* ``python -m mesa_viz_vllm overrides MODEL --method mesa [--train-length T]
  [--max-model-len N] [--param name=value ...]``: print the JSON for ``vllm
  serve MODEL --hf-overrides``;
* ``python -m mesa_viz_vllm passkey MODEL --methods origin,mesa --lengths 12288
  [--depths 0.5] [--samples N] [--train-length T] [--engine-arg name=value ...]
  --out DIR``: ``mesa-viz passkey`` with vLLM as the engine, rows in
  ``DIR/passkey.jsonl`` (:mod:`.passkey`);
* ``python -m mesa_viz_vllm ruler MODEL --methods origin,mesa --tasks ruler_offline
  --lengths 16384 [--samples N] [--param METHOD.KEY=VALUE ...] [--engine-arg
  name=value ...] --out DIR``: ``mesa-viz ruler`` with lm-eval's vllm model type
  running each method, rows in ``DIR/ruler.jsonl`` (:mod:`.ruler`)."""

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


def _pairs(parser, flag: str, items: list[str]) -> dict:
    """``NAME=VALUE`` items as a dict (values parsed by :func:`_value`)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"{flag} {item!r}: allowed NAME=VALUE")
        out[name] = _value(value)
    return out


def _passkey_parser(sub) -> None:
    p = sub.add_parser("passkey", help="mesa-viz passkey with vLLM as the engine")
    p.add_argument("model")
    p.add_argument("--methods", required=True, help="comma-separated method names")
    p.add_argument("--lengths", required=True, help="comma-separated prompt lengths")
    p.add_argument("--depths", help="comma-separated needle depths in [0, 1]")
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--train-length", type=int)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--engine-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="a vllm.LLM argument, e.g. max_model_len=16384")
    p.add_argument("--out", required=True, help="the run folder (rows in passkey.jsonl)")


def _passkey(args, parser) -> int:
    """Run :func:`.passkey.evaluate` for the parsed ``args``."""
    from pathlib import Path

    from .passkey import evaluate
    methods = args.methods.split(",")
    params = {m: {"train_length": args.train_length} for m in methods} \
        if args.train_length is not None else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        rows = evaluate(args.model, methods=methods,
                        lengths=[int(x) for x in args.lengths.split(",")],
                        depths=None if args.depths is None else
                        [float(x) for x in args.depths.split(",")],
                        samples=args.samples, out=out / "passkey.jsonl", method_params=params,
                        max_new_tokens=args.max_new_tokens,
                        engine=_pairs(parser, "--engine-arg", args.engine_arg))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(rows)} rows in {out / 'passkey.jsonl'}")
    return 0


def _ruler_parser(sub) -> None:
    p = sub.add_parser("ruler", help="mesa-viz ruler with lm-eval's vllm model type")
    p.add_argument("model")
    p.add_argument("--methods", default="origin,mesa", help="comma-separated method names")
    p.add_argument("--tasks", default="ruler_offline",
                   help="offline RULER tasks, or ruler_offline (all nine; default)")
    p.add_argument("--lengths", required=True, help="comma-separated target lengths in tokens")
    p.add_argument("--samples", type=int, default=5, help="prompts per task and length")
    p.add_argument("--train-length", type=int)
    p.add_argument("--max-gen-toks", type=int,
                   help="override the tasks' generation budget (changes the protocol)")
    p.add_argument("--param", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="a method parameter, repeatable (e.g. mesa.chunk_overlap=64)")
    p.add_argument("--engine-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="a vllm.LLM argument, e.g. max_model_len=16640")
    p.add_argument("--out", required=True, help="the run folder (rows in ruler.jsonl)")


def _ruler(args, parser) -> int:
    """Run :func:`.ruler.evaluate` for the parsed ``args``; print the mean scores."""
    from pathlib import Path

    from mesa_viz.analyses.ruler.rows import summary
    from mesa_viz.cli.common import parse_params
    from mesa_viz.runs.stats import format_table

    from .ruler import evaluate
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen = None if args.max_gen_toks is None else {"max_gen_toks": args.max_gen_toks}
    try:
        rows = list(evaluate(args.model, methods=args.methods.split(","),
                             tasks=args.tasks.split(","),
                             lengths=[int(x) for x in args.lengths.split(",")],
                             samples=args.samples, out=out / "ruler.jsonl",
                             method_params=parse_params(args.param),
                             train_length=args.train_length, gen_kwargs=gen,
                             engine=_pairs(parser, "--engine-arg", args.engine_arg)))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(summary(rows)))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mesa_viz_vllm")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("overrides", help="the --hf-overrides JSON of a method on a model")
    p.add_argument("model")
    p.add_argument("--method", default="mesa")
    p.add_argument("--train-length", type=int)
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    _passkey_parser(sub)
    _ruler_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "passkey":
        return _passkey(args, parser)
    if args.command == "ruler":
        return _ruler(args, parser)
    params = _pairs(parser, "--param", args.param)
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
