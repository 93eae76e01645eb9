"""What every subcommand shares: the list parser, method parameters
(``--param METHOD.KEY=VALUE``) and the model options and loading."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable

__all__ = ["comma_list", "int_list", "float_list", "name_list", "add_param_argument",
           "parse_params", "checked_grid", "add_model_arguments", "load"]

_KINDS = {int: "an integer", float: "a number", str: "a name"}


def comma_list(cast: Callable = str) -> Callable[[str], list]:
    """An argparse ``type``: ``"a,b,c"`` -> ``[cast(a), cast(b), cast(c)]``
    (empty items dropped; for integers ``"2-5"`` is ``2,3,4,5``)."""
    kind = _KINDS.get(cast, cast.__name__)

    def parse(text: str) -> list:
        out: list = []
        for item in (t.strip() for t in text.split(",")):
            try:
                out += _items(item, cast)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{item!r} is not {kind}: allowed comma-separated values, each {kind}"
                    + (" (or a range a-b)" if cast is int else "")) from None
        return out

    parse.__name__ = f"comma-separated list ({kind})"
    return parse


int_list, float_list, name_list = comma_list(int), comma_list(float), comma_list(str)


def _items(item: str, cast: Callable) -> list:
    """The values of one list item: none if empty, a range for ``a-b`` integers."""
    if not item:
        return []
    head, sep, tail = item[1:].partition("-")          # a leading "-" is a sign
    if cast is int and sep:
        return list(range(int(item[0] + head), int(tail) + 1))
    return [cast(item)]


def add_param_argument(parser: argparse.ArgumentParser) -> None:
    """``--param METHOD.KEY=VALUE``, repeatable (see :func:`parse_params`)."""
    parser.add_argument("--param", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="a method parameter, repeatable (e.g. mesa.stair=anchored, "
                             "rerope.window=2048); values are JSON where they parse")


def parse_params(items) -> dict:
    """``["mesa.stair=anchored", "rerope.window=2048"]`` ->
    ``{"mesa": {"stair": "anchored"}, "rerope": {"window": 2048}}`` (values
    parsed as JSON where they can be: numbers, true/false, null)."""
    out: dict = defaultdict(dict)
    for item in items or ():
        head, sep, value = item.partition("=")
        method, dot, key = head.partition(".")
        if not (sep and dot and method.strip() and key.strip()):
            raise ValueError(f"--param {item!r}: allowed METHOD.KEY=VALUE, "
                             "e.g. mesa.stair=anchored")
        try:
            out[method.strip()][key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[method.strip()][key.strip()] = value
    return dict(out)


def checked_grid(args: argparse.Namespace) -> dict:
    """The ``--param`` method parameters, with ``--methods`` and ``--lengths``
    checked before any model loads (ValueError naming the bad value)."""
    from ..checks import check_lengths, check_methods
    params = parse_params(args.param)
    check_methods(args.methods, params)
    check_lengths(args.lengths)
    return params


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` or ``--tiny``, ``--device``, ``--dtype``, ``--backend``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", default=None,
                       help="HF id or local path (default SmolLM2-135M-Instruct, offline)")
    group.add_argument("--tiny", action="store_true",
                       help="a random-weight tiny Llama with a tokenizer built in-process, "
                            "T = --train-length or 64 (plumbing runs and tests)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="default float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--backend", default="sdpa", choices=("sdpa", "eager"),
                        help="attention implementation the model is loaded with")


def load(args: argparse.Namespace):
    """``(model, tokenizer, name)`` from the model options."""
    from ..models import DEFAULT_MODEL, TINY_TRAIN_LENGTH, load_model, tiny_model
    if not args.tiny:
        model, tok = load_model(args.model, device=args.device, dtype=args.dtype,
                                attn_implementation=args.backend)
        return model, tok, args.model or DEFAULT_MODEL
    import torch
    T = getattr(args, "train_length", None) or TINY_TRAIN_LENGTH
    model, tok = tiny_model("llama", seed=getattr(args, "seed", 0),
                            attn_implementation=args.backend, max_position_embeddings=T)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("float32" if device == "cpu" else "bfloat16")
    return model.to(device=device, dtype=getattr(torch, dtype)), tok, "tiny-llama"
