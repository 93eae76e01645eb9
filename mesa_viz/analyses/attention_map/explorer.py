"""The attention map explorer: the whole attention map of one layer and head per
method, pooled, beside a comparison method and their difference; zooms re-pool
at full resolution, from the model or from saved maps.
"""

from __future__ import annotations

import ipywidgets as W

from ...runtime import capture_qk
from ...viz.explorer import Explorer, Figures, build, computing, info_html
from ..attention.explorer import ids_1d
from .figures import attention_map_figure, attention_maps_figure
from .pooling import AttentionMap, head_map

__all__ = ["attention_map_explorer"]


def _saved_maps(maps) -> dict:
    """``(method, layer, head) -> AttentionMap`` from maps or their saved paths."""
    out = {}
    for m in maps or ():
        m = m if isinstance(m, AttentionMap) else AttentionMap.load(m)
        out[m.method, m.layer, m.head] = m
    return out


def attention_map_explorer(model=None, input_ids=None, *, methods=("mesa", "origin"), maps=None,
                           layer: int = 0, head: int = 0, grid: int | None = None,
                           train_length: int | None = None,
                           method_params: dict | None = None) -> Explorer:
    """The whole attention map of one layer and head per method, pooled to at
    most ``grid x grid`` cells (default 256; a saved map's own grid), beside a
    comparison method and their difference.

    With ``model`` and ``input_ids``: each (method, layer) runs one forward
    (all heads kept, ``cache``), each head is pooled when shown.  Without:
    ``maps`` (AttentionMaps or saved paths) are what can be shown.  Controls:
    ``method``, ``compare`` (``"none"`` or a method), ``layer``, ``head``,
    ``pool``, ``log``, and ``queries`` / ``keys`` (ranges: a zoom re-pools
    that region at full resolution, from the kept queries and keys, so saved
    maps zoom without the model).  Figure: ``map``.
    """
    saved = _saved_maps(maps)
    if model is None and not saved:
        raise ValueError("no model and no maps: allowed model= with input_ids=, or maps= "
                         "(AttentionMaps or saved paths)")
    if model is not None:
        ids = ids_1d(input_ids)
        n, L, H = len(ids), model.config.num_hidden_layers, model.config.num_attention_heads
        names = list(methods)
        layers, heads = list(range(L)), list(range(H))
    else:
        n = next(iter(saved.values())).seq_len
        names = list(dict.fromkeys(k[0] for k in saved))
        layers, heads = sorted({k[1] for k in saved}), sorted({k[2] for k in saved})
        layer, head = next(iter(saved))[1:]
    controls = {
        "method": W.Dropdown(options=names, value=names[0], description="method"),
        "compare": W.Dropdown(options=["none", *names], value=names[1] if len(names) > 1
                              else "none", description="beside"),
        "layer": W.Dropdown(options=layers, value=layer, description="layer"),
        "head": W.Dropdown(options=heads, value=head, description="head"),
        "pool": W.ToggleButtons(options=["max", "mean"], value="max", description="pool"),
        "log": W.Checkbox(value=True, description="log colour"),
        "queries": W.IntRangeSlider(value=(0, n), min=0, max=n, description="queries",
                                    continuous_update=False, layout=W.Layout(width="48%")),
        "keys": W.IntRangeSlider(value=(0, n), min=0, max=n, description="keys",
                                 continuous_update=False, layout=W.Layout(width="48%")),
    }
    figures = Figures("map")
    outputs: dict = {}
    cache: dict = {}

    def get_map(method, lay, hd, pool, region):
        key = (method, lay, hd, pool, region)
        if key in cache:
            return cache[key]
        if model is not None:
            if (method, lay) not in cache:
                params = (method_params or {}).get(method, {})
                with computing(outputs, figures, f"running {method} to layer {lay} on {n} "
                               "tokens"):
                    cache[method, lay] = capture_qk(model, ids, method, layer=lay,
                                                    train_length=train_length, **params)
            amap = head_map(cache[method, lay], hd, grid=min(grid or 256, n), pool=pool,
                            region=region, progress=False)
        elif (method, lay, hd) not in saved:
            raise ValueError(f"no saved map of {method}, layer {lay}, head {hd}: allowed "
                             f"{sorted(saved)}")
        else:
            base = saved[method, lay, hd]
            same = region is None and pool == base.pool and base.region == [0, n, 0, n]
            amap = base if same else base.zoom(region, grid=grid or base.grid, pool=pool)
        cache[key] = amap
        return amap

    def draw():
        v = {k: c.value for k, c in controls.items()}
        region = (*v["queries"], *v["keys"])
        region = None if region == (0, n, 0, n) else region
        shown = [v["method"]] + ([v["compare"]] if v["compare"] not in ("none", v["method"])
                                 else [])
        amaps = [get_map(m, v["layer"], v["head"], v["pool"], region) for m in shown]
        fig = attention_maps_figure(amaps, log_color=v["log"]) if len(amaps) > 1 else \
            attention_map_figure(amaps[0], log_color=v["log"])
        figures.show("map", fig)
        took = ", ".join(f"{a.method} {sum(a.seconds.values()):.1f} s" for a in amaps)
        outputs["message"].value = info_html(f"{n} tokens; {took}")

    head_rows = [W.HBox([controls[k] for k in ("method", "compare", "layer", "head")]),
                 W.HBox([controls[k] for k in ("pool", "log")]),
                 W.HBox([controls["queries"], controls["keys"]])]
    return build(head_rows, [figures.views["map"]], controls, figures, outputs, draw, cache)
