"""The report's layouts section: Figure 1, every method's layout, Mesa's chunk plan.
"""

from __future__ import annotations

import json

from ...methods import METHODS
from ...methods.layouts import layout
from ...viz.page import Section, note
from .figures import (chunk_plan_figure, figure1, layout_difference, layout_heatmap,
                      layouts_side_by_side)

__all__ = ["SECTIONS"]


def layouts_section(ctx) -> list:
    """The paper's Figure 1 (Mesa and Stair PE on toy sizes), every method's
    layout at a small size, Mesa's chunk plan and its difference with origin."""
    n, T = ctx.layout_length, ctx.layout_train_length
    fig1 = [note("The paper's Figure 1: Mesa on 13 tokens (T=8; a first chunk of 2, middle "
                 "chunks of 3 that see the first chunk and themselves, a last chunk of 2 that "
                 "sees every key through Stair PE) and Stair PE with N=4, E=2 over the whole "
                 "matrix. Each cell holds the relative position query q uses for key k."),
            figure1()]
    lays = [layout(m, n, train_length=T) for m in METHODS]
    summary = [{"method": l.method, "seq_len": n, "params": l.params,
                "max_relative_position": l.max_relative_position,
                "chunk_plan": l.chunk_plan.to_dict() if l.chunk_plan else None} for l in lays]
    (ctx.data / "layouts.json").write_text(json.dumps(summary, indent=1))
    mesa = next(l for l in lays if l.method == "mesa")
    origin = next(l for l in lays if l.method == "origin")
    beyond = [l.method for l in lays if l.max_relative_position >= T]
    return [*fig1, note(f"n={n}, T={T}. Methods using relative positions >= T somewhere: "
                        f"{', '.join(beyond) or 'none'}."),
            layouts_side_by_side(lays), layout_heatmap(mesa),
            chunk_plan_figure(mesa), layout_difference(mesa, origin)]


#: This analysis's part of the report.
SECTIONS = (Section("Position layouts", layouts_section, "layouts"),)
