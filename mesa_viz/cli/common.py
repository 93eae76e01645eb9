"""What every subcommand shares: the run folder (``--out``, ``--figure``), the
list parser, method parameters (``--param METHOD.KEY=VALUE``) and the model
options and loading."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["comma_list", "int_list", "float_list", "name_list", "add_param_argument",
           "parse_params", "checked_grid", "add_model_arguments", "load", "add_out_arguments",
           "RunFolder", "run_folder"]

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


@dataclass(frozen=True)
class RunFolder:
    """Where a command writes: ``folder`` (``--out``), its rows ``folder /
    <command>.jsonl`` and its figure page (``--figure``, default ``folder /
    <command>.html``); anything else it keeps goes :meth:`beside` them."""

    folder: Path
    rows: Path
    figure: Path

    def beside(self, name: str) -> Path:
        """``folder / name``."""
        return self.folder / name


#: Suffixes that name a file: ``--out`` is a folder.
_FILE_SUFFIXES = (".jsonl", ".json", ".html", ".csv", ".npz", ".npy", ".txt")


def add_out_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """``--out DIR`` (the run folder, the same for every command) and ``--figure``."""
    parser.add_argument("--out", type=Path, default=Path("runs") / command, metavar="DIR",
                        help=f"the run folder (default runs/{command}): rows in "
                             f"DIR/{command}.jsonl, one JSON line a result, kept as they come "
                             "and resumed by a rerun; the figure page DIR/"
                             f"{command}.html; what else the command keeps, beside them")
    parser.add_argument("--figure", type=Path, default=None, metavar="PATH.html",
                        help=f"write the figure page here instead of DIR/{command}.html")


def run_folder(args: argparse.Namespace, command: str) -> RunFolder:
    """The :class:`RunFolder` of ``--out`` and ``--figure``; ValueError for an
    ``--out`` that names a file (a folder is asked for) or a figure that is
    not ``.html``."""
    out = Path(args.out)
    if out.suffix in _FILE_SUFFIXES or out.is_file():
        raise ValueError(f"--out {out}: names a file; --out is the run folder (the rows go "
                         f"to DIR/{command}.jsonl, the figure to DIR/{command}.html): allowed "
                         f"a folder, e.g. --out {out.parent / out.stem}")
    figure = Path(args.figure) if getattr(args, "figure", None) else out / f"{command}.html"
    if figure.suffix != ".html":
        raise ValueError(f"--figure {figure}: allowed an .html path")
    return RunFolder(out, out / f"{command}.jsonl", figure)


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
    from ..runs.validate import check_lengths, check_methods
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
