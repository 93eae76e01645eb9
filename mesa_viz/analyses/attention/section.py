"""The report's attention section: the last query's attention past ``T`` per method.
"""

from __future__ import annotations

import numpy as np

from ...viz.page import NO_MODEL, Section, missing, note
from .figures import attention_by_distance, attention_heatmap

__all__ = ["SECTIONS"]


def attention_section(ctx) -> list:
    """Attention of the last query past ``T`` per method (max over heads, the
    needle marked), its needle share and its mass by distance."""
    if ctx.model is None:
        return missing(*NO_MODEL)
    needle, n, T = tuple(ctx.prompt()["needle_span"]), ctx.n, ctx.T
    items = [note(f"{n} tokens, T={T}; passkey prompt, needle at half depth "
                  f"(tokens [{needle[0]}, {needle[1]}))")]
    for method in ctx.methods:
        tr = ctx.trace(method)
        items.append(attention_heatmap(
            tr.attention[:, :, 0].max(axis=1), [f"layer {l}" for l in tr.layers],
            marks={"needle": needle}, train_length=T, row_title="layer (max over heads)",
            query_positions=[n - 1] * len(tr.layers),
            title=f"{method}: attention of the last query (q={n - 1}), max over heads"))
        share = tr.needle_share(needle).mean(axis=1)                       # [layer]
        items.append(note(f"{method}: needle share of the last query's attention, mean over "
                          "heads, by layer: " + ", ".join(
                              f"{l}: {s:.2%}" for l, s in zip(tr.layers, share))))
    rows = np.stack([ctx.trace(m).attention[:, :, 0].mean(axis=(0, 1)) for m in ctx.methods])
    items.append(attention_by_distance(
        rows, [n - 1] * len(rows), names=list(ctx.methods), train_length=T,
        title="attention mass of the last query by distance (mean over layers and heads)"))
    return items


SECTIONS = (Section("Attention past the training length", attention_section, "attention"),)
