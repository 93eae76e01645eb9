"""Colours every figure shares: one colour per method (:func:`method_color`), the
marker colours on light and dark backgrounds, chunk and diverging colour maps.
"""

from __future__ import annotations

from plotly.colors import qualitative

from ..methods import METHODS

__all__ = ["method_color", "PALETTE", "CHUNK_COLORS", "CHUNK_LINE", "MARK_COLOR",
           "MARK_COLOR_ON_DARK", "DIVERGING", "LEGEND_BELOW"]

#: Method colours: enough distinct ones for every method of ``METHODS`` and more.
PALETTE = tuple(qualitative.D3) + tuple(qualitative.Dark2)
#: Chunk kinds of a Mesa chunk plan and their colours.
CHUNK_COLORS = (("first", "#1f77b4"), ("middle", "#2ca02c"), ("last", "#d62728"),
                ("whole", "#7f7f7f"))
#: Chunk boundaries on a layout heatmap: visible on Viridis and on the blank (masked) cells.
CHUNK_LINE = "#e7298a"


def method_color(name: str) -> str:
    """A fixed colour per method name (known methods first, others by name)."""
    names = list(METHODS)
    idx = names.index(name) if name in names else len(names) + sum(map(ord, str(name)))
    return PALETTE[idx % len(PALETTE)]


#: Marker line colour on light backgrounds (line and bar plots).
MARK_COLOR = "#333333"
#: Marker line colour on dark colour maps (Magma attention, Viridis layouts).
MARK_COLOR_ON_DARK = "#00e5ff"
#: Red above 0, blue below, as the paper's Figures 11-16.
DIVERGING = "RdBu_r"
#: A legend under the plot, clear of colour bars.
LEGEND_BELOW = dict(orientation="h", y=-0.12, x=0)
