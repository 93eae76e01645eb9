"""The attention explorer: attention rows of a model on one input under each method,
one head or the max / mean over heads, opening where the needle is read.
"""

from __future__ import annotations

import html
import logging

import ipywidgets as W
import numpy as np

from ...runtime import needle_share, trace as trace_model
from ...viz.explorer import Explorer, Figures, build, computing, info_html
from .figures import attention_by_distance, attention_heatmap

__all__ = ["attention_explorer", "ids_1d", "reduce_heads", "HEAD_REDUCTIONS"]

log = logging.getLogger(__name__)


#: How the attention explorer reduces over heads, besides showing one head.
HEAD_REDUCTIONS = (("max over heads", "max"), ("mean over heads", "mean"))


def ids_1d(input_ids) -> np.ndarray:
    ids = np.asarray(input_ids.detach().cpu() if hasattr(input_ids, "detach") else input_ids)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1:
        raise ValueError(f"input_ids has shape {ids.shape}: allowed [pos] or [1, pos]")
    return ids


def attention_explorer(model, tokenizer, input_ids, methods=("origin", "mesa"), needle=None,
                       layers=None, heads=None, query_rows=None, method_params=None, *,
                       method: str | None = None, layer: int | None = None, head="auto",
                       trace=None, **trace_kwargs) -> Explorer:
    """Attention rows of ``model`` on ``input_ids`` under each method.

    Traces once per method, when it is first shown (cached in
    ``explorer.cache``); meanwhile the status line says so and the figures are
    greyed, and a failed trace is shown in ``outputs["message"]``.
    ``method``: the one shown first (default ``methods[0]``).  ``needle=(start,
    stop)`` marks the passkey tokens and reports their share of attention.
    ``query_rows`` default to the last position.  ``head``: ``"auto"`` (with a
    needle, the (layer, head) whose share of the last query row's attention on
    the needle is largest under ``method``, else the max over heads), ``"max"``
    or ``"mean"`` over heads, or a head; ``layer``: default as ``head`` chooses
    it (the needle's best layer, else the first).  ``method_params``: method ->
    extra parameters; ``trace_kwargs`` (e.g. ``train_length``) go to every
    trace (hidden states are not captured unless ``hidden_layers`` is given).
    ``trace``: ``trace(model, input_ids, method, **kwargs) -> Trace``
    (default ``mesa_viz.trace``), e.g. one that loads saved traces.

    Controls: ``method``, ``layer``, ``head`` (a head or ``"max"``/``"mean"``
    over heads), ``row`` (a query position or ``"all"``), ``reduce`` (over
    key blocks), ``log``, ``zoom`` (key range).  Figures: ``attention``
    (``T`` marked per row at distance ``q - T``), ``distance``; outputs:
    ``needle`` (its share), ``info`` (length and parameters, at the bottom).
    """
    ids = ids_1d(input_ids)
    n = len(ids)
    trace_kwargs.setdefault("hidden_layers", [])        # attention only: no hidden states
    methods = list(methods)
    if not methods:
        raise ValueError("methods is empty: allowed a list of method names")
    method = methods[0] if method is None else method
    if method not in methods:
        raise ValueError(f"method={method!r}: allowed one of methods {methods}")
    rows = [n - 1] if query_rows is None else [int(r) for r in query_rows]
    if needle is not None and not (0 <= needle[0] < needle[1] <= n):
        raise ValueError(f"needle={needle!r}: allowed (start, stop) with 0 <= start < stop <= {n}")
    trace = trace_model if trace is None else trace
    cache: dict = {}

    def get_trace(name):
        if name not in cache:
            params = dict(trace_kwargs, **(method_params or {}).get(name, {}))
            log.info("tracing %s on %d tokens", name, n)
            cache[name] = trace(model, ids, name, layers=layers, heads=heads, query_rows=rows,
                                tokenizer=tokenizer, **params)
        return cache[name]

    first = get_trace(method)
    view = _start_view(first, needle, layer, head)
    controls = _attention_controls(methods, method, first, n, view)
    figures = Figures("attention", "distance")
    outputs = {"needle": W.HTML(), "info": W.HTML()}

    def draw():
        name = controls["method"].value
        if name not in cache:
            with computing(outputs, figures, f"computing {name}: tracing {n} tokens"):
                get_trace(name)
        _draw_attention(cache[name], controls, figures, outputs, needle)

    head_rows = [W.HBox([controls[k] for k in ("method", "layer", "head", "row")]),
                 W.HBox([controls[k] for k in ("reduce", "log", "zoom")])]
    body = [outputs["needle"], figures.views["attention"], figures.views["distance"],
            outputs["info"]]
    return build(head_rows, body, controls, figures, outputs, draw, cache)


def _start_view(tr, needle, layer, head) -> tuple[int, object]:
    """The ``(layer, head)`` shown first (see :func:`attention_explorer`)."""
    reductions = [v for _, v in HEAD_REDUCTIONS]
    if head != "auto" and head not in reductions and head not in tr.heads:
        raise ValueError(f"head={head!r}: allowed 'auto', {reductions} or one of {tr.heads}")
    if layer is not None and layer not in tr.layers:
        raise ValueError(f"layer={layer!r}: allowed one of {tr.layers}")
    if needle is None:
        return (tr.layers[0] if layer is None else layer), ("max" if head == "auto" else head)
    share = tr.needle_share(needle)                        # [layer, head], last query row
    if head == "auto" and layer is None:
        li, hi = np.unravel_index(np.argmax(share), share.shape)
        return tr.layers[li], tr.heads[hi]
    per_layer = reduce_heads(share, "max" if head == "auto" else head, tr.heads, axis=1)
    li = int(np.argmax(per_layer)) if layer is None else tr.layers.index(layer)
    if head == "auto":
        head = tr.heads[int(np.argmax(share[li]))]
    return tr.layers[li], head


def reduce_heads(a: np.ndarray, head, heads, axis: int = 0) -> np.ndarray:
    """``a`` with heads on ``axis``: one ``head``, or the ``"max"``/``"mean"``
    over heads."""
    if head == "max":
        return a.max(axis=axis)
    if head == "mean":
        return a.mean(axis=axis)
    return np.take(a, list(heads).index(head), axis=axis)


def _attention_controls(methods, method, tr, n: int, view) -> dict:
    layer, head = view
    head_options = [*HEAD_REDUCTIONS, *[(f"head {h}", h) for h in tr.heads]]
    return {
        "method": W.Dropdown(options=methods, value=method, description="method"),
        "layer": W.Dropdown(options=list(tr.layers), value=layer, description="layer",
                            layout=W.Layout(width="170px")),
        "head": W.Dropdown(options=head_options, value=head, description="head",
                           layout=W.Layout(width="250px")),
        "row": W.Dropdown(options=[*tr.query_rows, "all"], value=tr.query_rows[-1],
                          description="query row"),
        "reduce": W.Dropdown(options=["max", "mean"], value="max", description="key blocks",
                             layout=W.Layout(width="190px")),
        "log": W.Checkbox(value=True, description="log colour"),
        "zoom": W.IntRangeSlider(value=(0, n), min=0, max=n, description="keys",
                                 continuous_update=False, layout=W.Layout(width="50%")),
    }


def _head_text(head) -> str:
    return f"{head} over heads" if head in ("max", "mean") else f"head {head}"


def _draw_attention(tr, controls: dict, figures: dict, outputs: dict, needle) -> None:
    c = {k: w.value for k, w in controls.items()}
    li = tr.layers.index(c["layer"])
    rows = list(tr.query_rows) if c["row"] == "all" else [c["row"]]
    picked = [tr.query_rows.index(r) for r in rows]
    per_head = tr.attention[li][:, picked]                     # [head, q_row, k_pos]
    attn = reduce_heads(per_head, c["head"], tr.heads)         # [q_row, k_pos]
    k0, k1 = c["zoom"]
    window = None if (k0, k1) == (0, tr.seq_len) or k1 <= k0 else (k0, k1)
    marks = {"needle": tuple(needle)} if needle is not None else None
    title = f"{tr.method}: layer {c['layer']}, {_head_text(c['head'])} (T={tr.train_length})"
    figures.show("attention", attention_heatmap(
        attn, rows, reduce=c["reduce"], log_color=c["log"], window=window, marks=marks,
        train_length=tr.train_length, title=title, query_positions=rows).update_layout(
        height=min(600, 170 + 30 * len(rows)), margin=dict(t=60, b=45)))
    figures.show("distance", attention_by_distance(
        attn, rows, train_length=tr.train_length, title=f"{title}: mass by distance",
        of=_head_text(c["head"]) + " per key" if c["head"] == "max" else None))
    outputs["info"].value = info_html(f"{tr.seq_len} tokens, {tr.method} parameters {tr.params}")
    if needle is not None:
        outputs["needle"].value = _needle_html(per_head, rows, needle, c, tr)


def _needle_html(per_head: np.ndarray, rows, needle, c: dict, tr) -> str:
    """The needle's share of each drawn row (``per_head [head, q_row, k_pos]``):
    of the head shown, the mean over heads, or the largest over heads and
    which head has it."""
    share = needle_share(per_head, needle)                     # [head, q_row]
    head = c["head"]
    if head == "max":
        parts = [f"q={r}: {share[b, k]:.2%} (head {tr.heads[b]})"
                 for k, (r, b) in enumerate(zip(rows, share.argmax(axis=0)))]
    else:
        parts = [f"q={r}: {v:.2%}" for r, v in zip(rows, reduce_heads(share, head, tr.heads))]
    what = f"{tr.method}, layer {c['layer']}, {_head_text(head)}"
    return (f"<b>needle share</b> (tokens [{needle[0]}, {needle[1]})) {html.escape(what)}: "
            + html.escape(", ".join(parts)))
