"""The report's attention-map section: the whole attention map of the head that
carries the needle, pooled, each method beside origin."""

from __future__ import annotations

import numpy as np

from ...viz.page import NO_MODEL, Section, missing, note
from .compute import attention_map
from .figures import attention_map_figure, attention_maps_figure

__all__ = ["SECTIONS"]


def attention_map_section(ctx) -> list:
    """The whole attention map of one head of the prompt, pooled, per method
    beside origin: the head the drill-down found (``ctx.explanation``), else
    the one whose last query puts most attention on the needle."""
    if ctx.model is None:
        return missing(*NO_MODEL)
    layer, head = _needle_head(ctx)
    maps = [attention_map(ctx.model, ctx.prompt()["input_ids"], m, layer=layer, head=head,
                          grid=min(256, ctx.n), train_length=ctx.T, keep_qk=False)
            for m in dict.fromkeys([*ctx.methods, "origin"])]
    for m in maps:
        m.save(ctx.data / f"attention_map_{m.method}", qk=False)
    items = [note(f"The whole attention map of layer {layer}, head {head} on the prompt "
                  f"({ctx.n} tokens, T={ctx.T}), max-pooled: " + "; ".join(
                      f"{m.method} {sum(m.seconds.values()):.1f} s" for m in maps) + ".")]
    return items + ([attention_maps_figure([m, maps[-1]]) for m in maps[:-1]]
                    or [attention_map_figure(maps[0])])


def _needle_head(ctx) -> tuple[int, int]:
    """The head carrying the needle: the drill-down's first, else the one whose
    last query puts most attention on the prompt's needle under the first
    method traced that is not origin."""
    if getattr(ctx, "explanation", None) is not None:
        best = ctx.explanation.retrieval_heads(1)[0]
        return best["layer"], best["head"]
    method = next((m for m in ctx.methods if m != "origin"), "origin")
    tr = ctx.trace(method)
    share = tr.needle_share(tuple(ctx.prompt()["needle_span"]))            # [layer, head]
    li, hi = np.unravel_index(int(np.argmax(share)), share.shape)
    return tr.layers[li], tr.heads[hi]


#: This analysis's part of the report.
SECTIONS = (Section("The whole attention map of the head that reads the needle",
                    attention_map_section,
                    "attention_map"),)
