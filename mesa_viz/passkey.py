"""Passkey retrieval: prompts of an exact token length, the evaluation loop,
streamed results, and the ``mesa-viz passkey`` subcommand.

A sample hides the needle "The pass key is 71432. Remember it. 71432 is the
pass key." at a fractional ``depth`` of a haystack of the classic filler and
ends with the plain completion prompt "What is the pass key? The pass key is"
(not the chat template: small instruct models chatter under it).  Prompts are
assembled token by token, so ``input_ids`` has exactly ``length`` tokens.

Results go to ``out_dir/passkey.jsonl``, one line per sample as it finishes; a
rerun skips the rows already there (keyed by method, length, depth, seed).
"""

from __future__ import annotations

import argparse
import json
import logging
import numbers
import random
import re
import time
from collections import defaultdict
from pathlib import Path

from .methods import get_method
from .results import append_jsonl, read_jsonl

__all__ = ["make_sample", "parse_answer", "evaluate", "summary", "default_tokenizer",
           "read_samples", "parse_params", "add_arguments", "run", "RESULTS_FILE"]

log = logging.getLogger(__name__)

RESULTS_FILE = "passkey.jsonl"
INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
         "memorize it. I will quiz you about the important information there.\n")
FILLER = (" The grass is green. The sky is blue. The sun is yellow. Here we go. "
          "There and back again.")
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "\nWhat is the pass key? The pass key is"
_KEY_RE = re.compile(r"(?<!\d)\d{5}(?!\d)")
_ROW_KEY = ("method", "length", "depth", "seed")


# -- samples -----------------------------------------------------------------------

def default_tokenizer(name_or_path: str | None = None):
    """The tokenizer alone (fast): the default model's, or any HF id/path."""
    from transformers import AutoTokenizer

    if name_or_path is None:
        from .models import _default_checkpoint
        name_or_path = _default_checkpoint()
    return AutoTokenizer.from_pretrained(str(name_or_path))


def passkey_of(seed: int) -> int:
    """The 5-digit pass key of ``seed``."""
    return random.Random(int(seed)).randint(10000, 99999)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _leading_special(tokenizer) -> list[int]:
    """The BOS token the tokenizer puts first by default, if it does."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if bos is not None and ids[:1] == [bos] else []


def _filler(tokenizer, n: int) -> list[int]:
    """``n`` tokens of repeated filler (cut at a token boundary)."""
    unit = _encode(tokenizer, FILLER)
    return (unit * (n // len(unit) + 1))[:n]


def make_sample(tokenizer, length: int, depth: float, seed: int) -> dict:
    """A passkey prompt of exactly ``length`` tokens with the needle at
    fractional ``depth`` (0: first, 1: last) of the haystack.

    Returns ``prompt, input_ids, passkey, needle_span (start, stop), length,
    depth, seed``.
    """
    _check_depth(depth)
    key = passkey_of(seed)
    head = _leading_special(tokenizer) + _encode(tokenizer, INTRO)
    needle = _encode(tokenizer, NEEDLE.format(key=key))
    tail = _encode(tokenizer, QUESTION)
    room = int(length) - len(head) - len(needle) - len(tail)
    if room < 0:
        raise ValueError(f"length={length} is too short for a passkey prompt: allowed "
                         f">= {length - room} tokens with this tokenizer")
    before = round(depth * room)
    # the haystack after the needle restarts at a sentence, so no token merges
    # across the seams and the prompt re-encodes to the same ids
    ids = (head + _filler(tokenizer, before) + needle + _filler(tokenizer, room - before)
           + tail)
    start = len(head) + before
    return dict(prompt=tokenizer.decode(ids, skip_special_tokens=True), input_ids=ids,
                passkey=key, needle_span=[start, start + len(needle)], length=int(length),
                depth=float(depth), seed=int(seed))


def _check_depth(depth) -> None:
    if not isinstance(depth, (int, float)) or not 0 <= depth <= 1:
        raise ValueError(f"depth={depth!r} is out of range: allowed a number in [0, 1]")


def parse_answer(text: str) -> int | None:
    """The first 5-digit number in ``text`` (``None`` if there is none)."""
    match = _KEY_RE.search(text or "")
    return int(match.group()) if match else None


def read_samples(path) -> list[dict]:
    """Samples written by ``datas/make_passkey_data.py`` (JSON lines)."""
    samples = read_jsonl(path)
    if not samples:
        raise ValueError(f"no samples in {path}")
    for k, s in enumerate(samples):
        missing = [f for f in ("input_ids", "passkey", "length", "depth", "seed") if f not in s]
        if missing:
            raise ValueError(f"{path}: sample {k} lacks {missing}")
    return samples


# -- evaluation --------------------------------------------------------------------

def _check_grid(methods, lengths, depths, method_params) -> None:
    if not methods:
        raise ValueError("methods is empty: allowed a non-empty list of method names")
    for m in methods:
        get_method(m, **method_params.get(m, {}))   # unknown method/parameter: clear error
    unknown = sorted(set(method_params) - set(methods))
    if unknown:
        raise ValueError(f"parameters given for {unknown}, which are not among methods {methods}")
    if lengths is not None and not lengths:
        raise ValueError("lengths is empty: allowed a non-empty list of token counts")
    for L in lengths or ():
        if isinstance(L, bool) or not isinstance(L, numbers.Integral) or L < 1:
            raise ValueError(f"length={L!r} must be a positive integer")
    if depths is not None and not depths:
        raise ValueError("depths is empty: allowed a non-empty list of numbers in [0, 1]")
    for d in depths or ():
        _check_depth(d)


def _samples_for(tokenizer, samples, lengths, depths) -> list[dict]:
    """Samples to run: generated (``samples`` an int: seeds 0..samples-1 per
    length x depth) or given (a list of sample dicts, filtered to the grid)."""
    if isinstance(samples, int):
        if samples < 1 or lengths is None or depths is None:
            raise ValueError("samples must be >= 1 with lengths and depths given")
        return [make_sample(tokenizer, L, d, s)
                for L in lengths for d in depths for s in range(samples)]
    out = [s for s in samples if (lengths is None or s["length"] in lengths)
           and (depths is None or s["depth"] in depths)]
    if not out:
        raise ValueError(f"no given samples match lengths={lengths} depths={depths}")
    return out


def _key(row, method: str | None = None) -> tuple:
    """The resume key of a result row (or of a sample under ``method``)."""
    return (method or row["method"], int(row["length"]), float(row["depth"]), int(row["seed"]))


def _fits(model, method: str, params: dict, length: int, max_new_tokens: int) -> bool:
    """False (with a warning) when ``mesa_viz.memory`` predicts the point
    cannot fit; the refusal names the estimate."""
    from .memory import LengthTooLong, check_fits
    try:
        check_fits(model, method, length, params=params, decode_tokens=max_new_tokens)
    except LengthTooLong as err:
        log.warning("skipping %s at length %d: %s", method, length, err)
        return False
    return True


def _generate(model, tokenizer, sample, method, params, max_new_tokens) -> tuple[str, dict, float]:
    """Greedy answer under ``method``: (text, resolved params, seconds)."""
    import torch

    from .application import apply

    ids = torch.tensor([sample["input_ids"]], device=model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    t0 = time.perf_counter()
    with torch.inference_mode(), apply(model, method, **params) as state:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad)
    seconds = time.perf_counter() - t0
    resolved = state.resolved or state.method.resolve(ids.shape[1], state.train_length)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return text, resolved.params(), seconds


def _model_name(model) -> str:
    return str(getattr(model.config, "_name_or_path", "") or type(model).__name__)


def evaluate(model, tokenizer, methods, lengths, depths, samples, out_dir,
             method_params: dict | None = None, max_new_tokens: int = 8) -> list[dict]:
    """Passkey accuracy for every method x length x depth x sample.

    ``samples``: an int (seeds ``0..samples-1``, prompts made here) or a list
    of sample dicts (``read_samples``; ``lengths``/``depths`` may be ``None``
    to take them all).  ``method_params``: ``{method: {param: value}}``.
    Appends to ``out_dir/passkey.jsonl`` as it goes and resumes from it.
    Returns the rows of this grid (old and new).
    """
    from tqdm.auto import tqdm

    method_params = dict(method_params or {})
    methods = list(methods)
    _check_grid(methods, lengths, depths, method_params)
    todo = _samples_for(tokenizer, samples, lengths, depths)
    path = Path(out_dir) / RESULTS_FILE
    done = {_key(r): r for r in read_jsonl(path)}
    rows, name = [], _model_name(model)
    others = {str(r.get("model")) for r in done.values()} - {name}
    if others:
        log.warning("%s holds rows of other models %s: they count as done too", path,
                    sorted(others))
    bar = tqdm(total=len(methods) * len(todo), desc="passkey", unit="sample")
    for length in sorted({s["length"] for s in todo}):
        here = [s for s in todo if s["length"] == length]
        for method in methods:
            params = method_params.get(method, {})
            fresh = [s for s in here if _key(s, method) not in done]
            if fresh and not _fits(model, method, params, length, max_new_tokens):
                bar.update(len(here))
                continue
            for s in here:
                key = _key(s, method)
                if key not in done:
                    done[key] = _run_one(model, tokenizer, s, method, params,
                                         max_new_tokens, name, path)
                rows.append(done[key])
                bar.update(1)
    bar.close()
    return rows


def _run_one(model, tokenizer, sample, method, params, max_new_tokens, name, path) -> dict:
    text, resolved, seconds = _generate(model, tokenizer, sample, method, params, max_new_tokens)
    got = parse_answer(text)
    row = dict(method=method, length=int(sample["length"]), depth=float(sample["depth"]),
               seed=int(sample["seed"]), expected=int(sample["passkey"]), answer=got,
               correct=got == int(sample["passkey"]), text=text, seconds=round(seconds, 4),
               params=resolved, model=name)
    append_jsonl(path, row)
    log.debug("%s L=%d depth=%g seed=%d: %r (%s)", method, row["length"], row["depth"],
              row["seed"], text, "ok" if row["correct"] else "wrong")
    return row


def summary(rows, by_depth: bool = False) -> list[dict]:
    """Accuracy per method x length (x depth with ``by_depth``), in first-seen
    method order, then by length and depth: ``method, length, [depth,] n,
    correct, accuracy``."""
    groups = defaultdict(list)
    order = list(dict.fromkeys(r["method"] for r in rows))
    for r in rows:
        key = (r["method"], r["length"]) + ((r["depth"],) if by_depth else ())
        groups[key].append(bool(r["correct"]))
    out = []
    for key in sorted(groups, key=lambda k: (order.index(k[0]), *k[1:])):
        hits = groups[key]
        out.append(dict(zip(("method", "length", "depth"), key), n=len(hits),
                        correct=sum(hits), accuracy=sum(hits) / len(hits)))
    return out


def format_table(table: list[dict]) -> str:
    """A plain-text table of ``summary`` rows."""
    if not table:
        return "(no rows)"
    cols = list(table[0])
    cells = [[f"{r[c]:.0%}" if c == "accuracy" else f"{r[c]:g}" if isinstance(r[c], float)
              else str(r[c]) for c in cols] for r in table]
    width = [max(len(c), *(len(row[k]) for row in cells)) for k, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, width))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, width)) for row in cells]
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------

def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_params(items) -> dict:
    """``["mesa.stair=anchored", "rerope.window=2048"]`` ->
    ``{"mesa": {"stair": "anchored"}, "rerope": {"window": 2048}}`` (values
    parsed as JSON where they can be: numbers, true/false, null)."""
    out: dict = defaultdict(dict)
    for item in items or ():
        head, sep, value = item.partition("=")
        method, dot, key = head.partition(".")
        if not (sep and dot and method and key):
            raise ValueError(f"--param {item!r}: allowed METHOD.KEY=VALUE, "
                             "e.g. mesa.stair=anchored")
        try:
            out[method.strip()][key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[method.strip()][key.strip()] = value
    return dict(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mesa-viz passkey``."""
    parser.add_argument("--methods", type=_str_list, default=["origin", "mesa"],
                        help="comma-separated method names (default origin,mesa)")
    parser.add_argument("--lengths", type=_int_list, default=None,
                        help="comma-separated prompt lengths in tokens, e.g. 12288,16384")
    parser.add_argument("--depths", type=_float_list, default=None,
                        help="comma-separated needle depths in [0, 1] (default 0.1,0.5,0.9)")
    parser.add_argument("--samples", type=int, default=1, help="samples per length x depth")
    parser.add_argument("--out", required=True, help="output folder (passkey.jsonl, passkey.html)")
    parser.add_argument("--model", default=None,
                        help="HF id or local path (default SmolLM2-135M-Instruct, offline)")
    parser.add_argument("--data", default=None,
                        help="JSONL samples from datas/make_passkey_data.py (else made here)")
    parser.add_argument("--param", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="a method parameter, repeatable (e.g. mesa.stair=anchored)")
    parser.add_argument("--max-new-tokens", type=int, default=8)


def run(args) -> int:
    """``mesa-viz passkey``: evaluate, write JSONL and HTML, print the table."""
    from .models import load_model

    try:
        params = parse_params(args.param)
        if args.data is None:
            if not args.lengths:
                raise ValueError("--lengths is empty: allowed comma-separated token counts "
                                 "(or --data FILE.jsonl)")
            samples, depths = args.samples, args.depths or [0.1, 0.5, 0.9]
        else:
            samples, depths = read_samples(args.data), args.depths
        _check_grid(args.methods, args.lengths, depths, params)
    except ValueError as err:
        raise SystemExit(f"mesa-viz passkey: {err}") from err
    model, tok = load_model(args.model)
    rows = evaluate(model, tok, args.methods, args.lengths, depths, samples, args.out,
                    method_params=params, max_new_tokens=args.max_new_tokens)
    if not rows:
        log.warning("no rows: every length was refused")
        return 1
    _draw(rows, Path(args.out) / "passkey.html", model)
    return format_table(summary(rows))


def _draw(rows, path: Path, model) -> None:
    from . import plots
    from .application import train_length_of

    figs = [plots.passkey_heatmap(rows),
            plots.passkey_accuracy_lines(rows, train_length=train_length_of(model))]
    plots.save_html(figs, path, title="passkey retrieval")
