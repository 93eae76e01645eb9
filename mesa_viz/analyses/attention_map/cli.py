"""``mesa-viz attention-map``: the whole attention map of one layer and head,
pooled to a grid, per method, with its time and peak memory.

    mesa-viz attention-map --methods mesa,origin --length 16384 --layer 14 --head 3 \\
        --out runs/map_16k

The input is a passkey prompt of ``--length`` tokens (``--depth``, ``--seed``)
or ``--input-ids FILE.npy``.  Writes ``DIR/map_<method>.json`` + ``.npz`` per
method (a rerun loads them; the queries and keys are kept unless ``--no-qk``,
so the map zooms without the model) and ``DIR/attention-map.html`` (the first
method beside the last and their difference); prints one line per method.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...cli.common import (add_model_arguments, add_out_arguments, add_param_argument, int_list,
                           load, name_list, parse_params, run_folder)

#: The command's name (its page: ``DIR/attention-map.html``).
COMMAND = "attention-map"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", type=name_list, default=["mesa", "origin"],
                   help="comma-separated; the figure puts the first beside the last")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--head", type=int, required=True)
    p.add_argument("--length", type=int, default=16384, help="passkey prompt length (tokens)")
    p.add_argument("--depth", type=float, default=0.5, help="needle depth of the prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-ids", type=Path, default=None,
                   help=".npy of token ids to map instead of a passkey prompt")
    p.add_argument("--grid", type=int, default=512, help="cells a side at most")
    p.add_argument("--pool", default="max", help="max or mean over each cell")
    p.add_argument("--region", type=int_list, default=None,
                   help="q_start,q_stop,k_start,k_stop: map only these rows and keys")
    p.add_argument("--no-qk", action="store_true",
                   help="do not keep the head's queries and keys (smaller files, no zoom)")
    p.add_argument("--train-length", type=int, default=None,
                   help="T (default the model's max_position_embeddings)")
    add_out_arguments(p, COMMAND)
    add_param_argument(p)
    add_model_arguments(p)


def _input_ids(args, tok) -> list[int]:
    if args.input_ids is not None:
        import numpy as np
        return np.load(args.input_ids).reshape(-1).tolist()
    from ..passkey.samples import make_sample
    return make_sample(tok, args.length, args.depth, args.seed)["input_ids"]


def run(args: argparse.Namespace) -> int:
    from ...viz.page import save_html
    from .compute import attention_map
    from .figures import attention_map_figure, attention_maps_figure
    from .pooling import AttentionMap, check_pool
    where = run_folder(args, COMMAND)
    check_pool(args.pool)
    params = parse_params(args.param)
    loaded, maps = None, []
    for method in args.methods:
        path = where.beside(f"map_{method}")
        if Path(f"{path}.json").exists():
            maps.append(AttentionMap.load(path))
            continue
        if loaded is None:
            loaded = load(args)
        model, tok, _ = loaded
        amap = attention_map(model, _input_ids(args, tok), method, layer=args.layer,
                             head=args.head, grid=args.grid, pool=args.pool, region=args.region,
                             train_length=args.train_length, keep_qk=not args.no_qk,
                             **params.get(method, {}))
        amap.save(path, qk=not args.no_qk)
        maps.append(amap)
    for m in maps:
        took = ", ".join(f"{k} {v:.1f} s" for k, v in m.seconds.items())
        peak = "?" if m.peak_bytes is None else f"{m.peak_bytes / 2 ** 30:.2f} GiB"
        print(f"{m.method}: layer {m.layer}, head {m.head}, {m.seq_len} tokens, "
              f"{'x'.join(map(str, m.values.shape))} cells ({m.pool}): {took}; peak {peak}")
    figure = attention_maps_figure([maps[0], maps[-1]]) if len(maps) > 1 else \
        attention_map_figure(maps[0])
    save_html([figure], where.figure, title=f"attention map: {where.folder.name}")
    print(f"wrote {where.folder}/map_<method>.json/.npz and {where.figure}")
    return 0
