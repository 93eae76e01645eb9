"""``mesa-viz attention``: the last query's attention past ``T`` under each method.

Traces a passkey prompt of ``--length`` tokens (needle at ``--depth``) under each
method, keeping the last query's attention rows at ``--layers`` (every head);
saves each trace to ``DIR/trace_<method>`` (reloaded by a rerun), writes one
row per method and layer to ``DIR/attention.jsonl`` (the needle's share of the
attention, the mass at distance ``>= T``, both max and mean over heads) and
draws ``DIR/attention.html``.
"""

from __future__ import annotations

import argparse

from ...cli.common import (add_model_arguments, add_out_arguments, add_param_argument, int_list,
                           load, name_list, parse_params, run_folder)

#: The command's name (its rows file: ``DIR/attention.jsonl``).
COMMAND = "attention"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", type=name_list, default=["origin", "mesa"],
                   help="comma-separated method names (default origin,mesa)")
    p.add_argument("--length", type=int, default=None, help="prompt tokens (default 1.25 x T)")
    p.add_argument("--depth", type=float, default=0.5, help="needle depth in [0, 1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int_list, default=None,
                   help="decoder layers kept (default every layer)")
    p.add_argument("--train-length", type=int, default=None,
                   help="T (default the model's max_position_embeddings)")
    add_out_arguments(p, COMMAND)
    add_param_argument(p)
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ...models.parts import train_length_of
    from ...runs.jsonl import write_jsonl
    from ...runs.validate import check_methods
    from ...runtime import saved_trace, trace
    from ...viz.page import save_html
    from ..passkey.samples import make_sample
    from .figures import attention_by_distance, attention_heatmap
    where = run_folder(args, COMMAND)
    params = parse_params(args.param)
    check_methods(args.methods, params)
    model, tok, _ = load(args)
    T = int(args.train_length or train_length_of(model))
    n = args.length or int(1.25 * T)
    sample = make_sample(tok, n, args.depth, args.seed)
    needle = tuple(sample["needle_span"])
    layers = args.layers or list(range(model.config.num_hidden_layers))
    items, means, out_rows = [], [], []
    for method in args.methods:
        path = where.beside(f"trace_{method}")
        tr = saved_trace(path, model, sample["input_ids"], train_length=T,
                         params=params.get(method, {}), layers=layers, hidden_layers=[])
        if tr is None:                                   # absent, or run with other settings
            tr = trace(model, sample["input_ids"], method, layers=layers, hidden_layers=[],
                       tokenizer=tok, train_length=T, **params.get(method, {}))
            tr.save(path)
        rows = tr.attention[:, :, 0]                       # [layer, head, k_pos]
        share = tr.needle_share(needle)                    # [layer, head]
        far = rows[:, :, :max(0, n - T)].sum(axis=-1)      # keys at distance >= T
        for li, layer in enumerate(tr.layers):
            out_rows.append({
                "method": method, "length": n, "train_length": T, "layer": int(layer),
                "needle_span": list(needle), "needle_share_max": float(share[li].max()),
                "needle_share_mean": float(share[li].mean()),
                "mass_past_t_max": float(far[li].max()), "mass_past_t_mean": float(far[li].mean()),
                "params": tr.params})
        items.append(attention_heatmap(
            rows.max(axis=1), [f"layer {l}" for l in tr.layers], marks={"needle": needle},
            train_length=T, row_title="layer (max over heads)", query_positions=[n - 1] * len(rows),
            title=f"{method}: attention of the last query (q={n - 1}), max over heads"))
        means.append(rows.mean(axis=(0, 1)))
        print(f"{method}: needle share of the last query, best head of each layer: "
              + ", ".join(f"{l}: {s:.1%}" for l, s in zip(tr.layers, share.max(axis=1))))
    write_jsonl(where.rows, out_rows)                    # the rows of the traces kept
    items.append(attention_by_distance(np.stack(means), [n - 1] * len(means),
                                       names=list(args.methods), train_length=T,
                                       title="the last query's attention by distance (mean "
                                             "over layers and heads)"))
    save_html(items, where.figure, title="attention past the training length")
    return 0
