#!/usr/bin/env python3
"""What the host issues per decode step and per prefill piece: torch operations and device reads.

On a GPU a decode step of a small model, and a prefill piece of a few thousand
tokens, are bound by the host: every torch operation is a launch (several
microseconds of Python and dispatch), and every read of a device value
(``.item()``, ``int(t)``, ``torch.equal``, ``bool(t.any())``) waits for the
GPU's queue to drain, so launches and GPU work stop overlapping.  This script
counts both on CPU, where they are the same calls, for origin and Mesa on a
random Llama with the shape of the GPU benchmark's layer stack (22 layers;
small widths: the counts do not depend on them), with the kernels' CUDA branches
taken (``mesa_viz.kernels.sets.uses_cpu_paths`` forced False, as the kernel tests do).
Mesa's last chunk runs its torch kernels here (the fused Triton launch serves it
on CUDA: one launch a layer), so the prefill count is per *middle* piece; and a
decode step here is the torch kernels' (the decode memo's), where on CUDA the
split-key Triton launch and its fold serve it (two launches a layer, no memo).

    python scripts/host_ops.py                 # 22 layers, 4096-token prompt past T = 512
    python scripts/host_ops.py --layers 2 --json

Prints, per method: operations and device reads of one decode step (after a
prefill and two steps) and of one prefill piece before the last, each per layer.
Reads are those that go through an aten operation (``.item()``, ``torch.equal``,
``nonzero``...); a ``tolist()`` of a CPU tensor does not, so the application's
one read of the positions a forward (``_span``) is not counted for a prefill piece.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: aten operations that read a device value on the host (a sync on CUDA).
READS = ("_local_scalar_dense", "equal", "is_nonzero", "nonzero")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=22)
    p.add_argument("--length", type=int, default=4096, help="prompt tokens (past T)")
    p.add_argument("--train-length", type=int, default=512)
    p.add_argument("--methods", default="origin,mesa")
    p.add_argument("--json", action="store_true", help="one JSON line per method")
    return p.parse_args(argv)


def counter():
    """A dispatch mode counting every aten operation and the device reads."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops, self.reads = 0, collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            name = func.overloadpacket.__name__
            if name in READS:
                self.reads[name] += 1
            return func(*args, **(kwargs or {}))
    return Count()


def model_for(layers: int, T: int):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=2,
                      max_position_embeddings=T)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


def count_method(model, method: str, n: int, T: int) -> dict:
    """Operations and reads of one decode step and of one prefill piece
    before the last (``piece``: None for a prefill in one forward)."""
    import torch

    from mesa_viz.analyses.bench import random_ids
    from mesa_viz.runtime import apply, presized_cache
    ids = random_ids(model.config.vocab_size, n)
    stack = model.get_decoder()
    seen = []
    with torch.no_grad(), apply(model, method, train_length=T):
        mode = counter()

        def start(module, args, kwargs):                 # counts per forward of the stack
            seen.append((mode.ops, sum(mode.reads.values())))
        hook = stack.register_forward_pre_hook(start, with_kwargs=True)
        try:
            with mode:
                out = model(ids, use_cache=True, logits_to_keep=1,
                            cache=presized_cache(model, n))
            seen.append((mode.ops, sum(mode.reads.values())))
            forwards = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(seen, seen[1:])]
            cache, tok = out.cache, out.logits[:, -1:].argmax(-1)
            for _ in range(2):
                step = model(tok, use_cache=True, cache=cache)
                cache, tok = step.cache, step.logits[:, -1:].argmax(-1)
            step_mode = counter()
            with step_mode:
                model(tok, use_cache=True, cache=cache)
        finally:
            hook.remove()
    # forwards[0]: the caller's forward up to its first piece; pieces follow; the last
    # entry holds the last piece (the caller's own forward) and the LM head
    piece = forwards[2] if len(forwards) > 3 else None
    return {"method": method, "length": n, "train_length": T,
            "layers": model.config.num_hidden_layers,
            "decode_ops": step_mode.ops, "decode_reads": dict(step_mode.reads),
            "piece_ops": piece and piece[0], "piece_reads": piece and piece[1],
            "prefill_forwards": len(forwards) - 1 if len(forwards) > 3 else 1}


def main(argv=None) -> int:
    args = parse(argv)
    from mesa_viz.kernels import sets
    sets.uses_cpu_paths = lambda q, backend: backend == "eager"   # the CUDA branches
    model = model_for(args.layers, args.train_length)
    L = args.layers
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        row = count_method(model, method, args.length, args.train_length)
        if args.json:
            print(json.dumps(row))
            continue
        piece = ("one forward" if row["piece_ops"] is None else
                 f"{row['piece_ops']} ops ({row['piece_ops'] / L:.1f} a layer), "
                 f"{row['piece_reads']} device reads, {row['prefill_forwards']} forwards")
        print(f"{method:<8} decode step: {row['decode_ops']} ops ({row['decode_ops'] / L:.1f} a "
              f"layer), {sum(row['decode_reads'].values())} device reads "
              f"{row['decode_reads'] or ''}; prefill piece: {piece}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
