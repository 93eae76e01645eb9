"""Write passkey retrieval samples as JSON lines, for ``mesa-viz passkey --data``.

Each line is one sample from ``mesa_viz.passkey.make_sample``: ``prompt,
input_ids`` (exactly ``length`` tokens), ``passkey, needle_span,
filler_offset, length, depth, seed`` (key and offset drawn from the seed and
depth, the same for every length), plus the tokenizer it was made with.

    python datas/make_passkey_data.py --lengths 2048,12288,16384 \
        --depths 0.1,0.5,0.9 --samples 3 --out datas/passkey.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mesa_viz.cli.common import float_list, int_list
from mesa_viz.models import default_tokenizer
from mesa_viz.analyses.passkey import DEPTHS, make_sample

log = logging.getLogger("make_passkey_data")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int_list, required=True, help="comma-separated token counts")
    p.add_argument("--depths", type=float_list, default=list(DEPTHS),
                   help="comma-separated needle depths in [0, 1] (default 0.1,0.5,0.9)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int_list, default=None, help="comma-separated seeds")
    seeds.add_argument("--samples", type=int, default=1,
                       help="seeds 0..SAMPLES-1 per length x depth (default 1)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer id or path (default: the default model's, SmolLM2-135M-Instruct)")
    p.add_argument("--out", required=True, help="output .jsonl file (overwritten)")
    args = p.parse_args(argv)
    if not args.lengths or not args.depths:
        p.error("--lengths and --depths need at least one value each")
    if args.seeds is None:
        if args.samples < 1:
            p.error(f"--samples={args.samples} must be >= 1")
        args.seeds = list(range(args.samples))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tok = default_tokenizer(args.tokenizer)
    name = args.tokenizer or getattr(tok, "name_or_path", "")
    try:
        samples = [make_sample(tok, length, depth, seed) for length in args.lengths
                   for depth in args.depths for seed in args.seeds]
    except ValueError as err:
        raise SystemExit(f"make_passkey_data: {err}") from err
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for sample in samples:
            f.write(json.dumps({**sample, "tokenizer": str(name)}) + "\n")
    n = len(samples)
    log.info("wrote %d samples to %s", n, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
