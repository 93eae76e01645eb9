"""Position layouts: every method's ``[q, k]`` relative positions and mask
(computed by ``mesa_viz.methods.layouts``), drawn (``figures``: Figure 1, layouts
side by side, differences, Mesa's chunk plan) and explored (``explorer``)."""

from ...methods.layouts import MAX_DENSE_LAYOUT, Layout, layout, layout_rows

__all__ = ["Layout", "layout", "layout_rows", "MAX_DENSE_LAYOUT"]
