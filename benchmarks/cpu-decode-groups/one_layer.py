"""One layer's decode attention on SmolLM2-135M's shape (9 query heads, 3 KV
heads, head size 64, float32): one SDPA call with GQA, as transformers makes
it for Origin, against ``mesa_viz.kernels.flash_decoding.flash_decode`` over
the same keys (Origin's layout through the kernel).  Appends the machine's
row (``kind: machine``) and a JSON line per length to ``--out``::

    python benchmarks/cpu-decode-groups/one_layer.py --out DIR/one_layer.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

from mesa_viz.analyses.bench.machine import machine_row
from mesa_viz.kernels.flash_decoding import decode_chunks, flash_decode


def _median_us(fn, calls: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="8193,16385,32769")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    h, kvh, d = 9, 3, 64
    with open(args.out, "a") as f:
        f.write(json.dumps(machine_row("cpu", "float32")) + "\n")
    for n in (int(x) for x in args.lengths.split(",")):
        q = torch.randn(1, h, 1, d, generator=g)
        k, v = (torch.randn(1, kvh, n + 512, d, generator=g)[:, :, :n] for _ in range(2))
        scale = 1 / math.sqrt(d)
        sdpa = lambda: F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)
        flash = lambda: flash_decode([(q, k, v, None)], scale)
        err = float((sdpa() - flash()).abs().max())
        row = {"keys": n, "threads": torch.get_num_threads(),
               "chunks": decode_chunks(1, kvh, n), "sdpa_us": _median_us(sdpa, args.calls),
               "flash_decoding_us": _median_us(flash, args.calls), "max_abs_diff": err,
               "calls": args.calls, "torch": torch.__version__,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        row["ratio"] = row["flash_decoding_us"] / row["sdpa_us"]
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{n} keys: SDPA {row['sdpa_us']:.0f} us, flash-decoding "
              f"{row['flash_decoding_us']:.0f} us ({row['ratio']:.2f}x, {row['chunks']} chunks)")


if __name__ == "__main__":
    main()
