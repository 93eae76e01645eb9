"""``mesa-viz hidden-map``: the paper's Figures 11-16 on any model.

Traces one input (default the paper's: a word repeated, "hello") under origin
and each method, keeping hidden layers x the first dims; draws heat maps of
dims x positions per layer, methods side by side, over the windows around
``T`` and at the end (values, and values minus origin's at ``T - 1``) to
``DIR/hidden-map.html``, the traces to ``DIR/hidden-map_traces/`` (reused by a
rerun), and prints each method's mean ``|change|`` across ``T`` per layer.
"""

from __future__ import annotations

import argparse

from ...cli.common import add_out_arguments, int_list, load, name_list, parse_params, run_folder
from .cli import add_input_arguments, add_run_arguments

#: The command's name (its page: ``DIR/hidden-map.html``).
COMMAND = "hidden-map"


def _windows(text: str):
    """``paper``, ``all`` or ``START:STOP,...`` (positions)."""
    if text in ("paper", "all"):
        return None if text == "paper" else "all"
    try:
        return [tuple(int(v) for v in item.split(":")) for item in text.split(",") if item]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: allowed paper, all or START:STOP,START:STOP (positions)") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length", type=int, default=None, help="tokens (default 2 x T)")
    p.add_argument("--methods", type=name_list, default=["origin", "rerope", "mesa"],
                   help="comma-separated (origin is always traced)")
    add_out_arguments(p, COMMAND)
    add_input_arguments(p, "word")
    p.add_argument("--hidden-layers", type=int_list, default=None,
                   help="e.g. 0-8 (default 0..8: embeddings and the first 8 layers)")
    p.add_argument("--dims", type=int_list, default=list(range(16)), help="default 0-15")
    p.add_argument("--windows", type=_windows, default=None,
                   help="paper (around T and the end, default), all, or START:STOP,...")
    p.add_argument("--width", type=int, default=None,
                   help="the paper windows' width (default T/4)")
    p.add_argument("--columns", type=int, default=1000, help="most columns over all windows")
    add_run_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ...models.parts import train_length_of
    from ...viz.page import save_html
    from .compute import trace_methods
    from .figures import hidden_heatmap
    from .hidden import format_changes, hidden_view, paper_windows
    where = run_folder(args, COMMAND)
    params = parse_params(args.param)
    model, tok, _ = load(args)
    T = int(args.train_length or train_length_of(model))
    n = args.length or 2 * T
    if n <= T:
        raise ValueError(f"--length {n}: allowed more than T={T} tokens")
    traces = trace_methods(model, tok, length=n, methods=["origin", *args.methods],
                           text=args.text, word=args.word, hidden_layers=args.hidden_layers,
                           dims=args.dims, method_params=params, train_length=T,
                           folder=where.beside(f"{COMMAND}_traces"))
    windows = paper_windows(n, T, args.width) if args.windows is None else args.windows
    views = [hidden_view(t, windows=windows, columns=args.columns) for t in traces.values()]
    relative = [hidden_view(t, windows=windows, columns=args.columns, relative_to=T - 1,
                            reference=traces["origin"]) for t in traces.values()]
    change = format_changes(traces, min(args.width or T // 4, n - T, T))
    save_html([f"<p class='note'>{n} tokens of {args.text!r}, T={T}.</p>",
               hidden_heatmap(views),
               hidden_heatmap(relative, title="minus origin's value at T - 1"),
               "<pre>" + change + "</pre>"], where.figure, title="Hidden states around and past T")
    print(change)
    return 0
