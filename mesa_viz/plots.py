"""Every figure of mesa_viz in one namespace (a facade: no figure code here).

Each figure lives with its analysis (``mesa_viz/analyses/<name>/figures.py``)
on the shared scaffolding of ``mesa_viz.viz`` (colours, marks, reduction, subplot
grids, the HTML page); this module re-exports them, so ``from mesa_viz import
plots; plots.figure1()`` works as it always has.  Every function returns a
``plotly.graph_objects.Figure`` and never displays it; inputs are plain values
(numpy arrays, layouts, lists of row dicts); bad input raises ``ValueError``
naming the bad value and what is allowed.
"""

from .analyses.attention.figures import attention_by_distance, attention_heatmap
from .analyses.attention_map.figures import attention_map_figure, attention_maps_figure
from .analyses.bench.figures import bench_figure
from .analyses.crossings.figures import crossing_scatter
from .analyses.explain.figures import (distance_profile_figure, explanation_figures,
                                       needle_mass_figure, retrieval_heads_figure)
from .analyses.layouts.figures import (FIGURE_1, chunk_plan_figure, figure1, figure1_layouts,
                                       layout_difference, layout_heatmap, layouts_side_by_side)
from .analyses.passkey.figures import passkey_accuracy_lines, passkey_heatmap
from .analyses.perplexity.figures import ppl_by_position
from .analyses.ruler.figures import task_scores
from .analyses.theory.figures import recovered_position_figure, theorem_figure
from .analyses.thresholds.figures import (hidden_heatmap, hidden_state_figure, smooth_values,
                                          trend_range)
from .runs.jsonl import load_rows
from .runs.stats import wilson_interval
from .viz.marks import (AxisInfo, add_marker_items, axis_info, category_boundary, mark,
                        marker_items)
from .viz.page import save_html
from .viz.reduce import MAX_COLUMNS, MAX_LAYOUT_SIDE, MAX_POINTS, MAX_ROWS, downsample
from .viz.style import MARK_COLOR, MARK_COLOR_ON_DARK, method_color

__all__ = [
    "MAX_COLUMNS", "MAX_ROWS", "MAX_LAYOUT_SIDE", "MAX_POINTS", "method_color", "downsample",
    "MARK_COLOR", "MARK_COLOR_ON_DARK", "AxisInfo", "axis_info", "mark", "marker_items",
    "add_marker_items", "category_boundary",
    "layout_heatmap", "layouts_side_by_side", "layout_difference", "chunk_plan_figure",
    "FIGURE_1", "figure1_layouts", "figure1",
    "attention_heatmap", "attention_by_distance", "hidden_state_figure", "trend_range",
    "smooth_values", "hidden_heatmap", "passkey_heatmap", "passkey_accuracy_lines",
    "wilson_interval", "bench_figure", "save_html", "load_rows", "theorem_figure",
    "recovered_position_figure", "crossing_scatter", "needle_mass_figure",
    "retrieval_heads_figure", "distance_profile_figure", "explanation_figures",
    "attention_map_figure", "attention_maps_figure", "ppl_by_position", "task_scores",
]
