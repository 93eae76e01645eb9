"""Plotly figures from layouts and results.  Every function returns a
``plotly.graph_objects.Figure`` and never displays it.

Inputs are plain values: numpy arrays, :class:`~mesa_viz.layouts.Layout`,
:class:`~mesa_viz.methods.ChunkPlan`, and lists of row dicts (passkey and
bench results).  No torch, no transformers.  Bad input raises ``ValueError``
naming the bad value and what is allowed.

Long inputs are reduced before drawing so that figures render in a browser:
attention rows 16k+ keys wide are block-downsampled to at most
``MAX_COLUMNS`` columns (``window=`` zooms in on exact values), dense layouts
are sampled with a stride, and long hidden-state curves keep each block's
minimum and maximum.

Every figure marks ``T``, chunk boundaries, thresholds and needles through
one helper, :func:`mark` (linear, log and category axes, x or y, any
subplot): the mark carries a ``name``, its label sits in a light box beside
it, and a mark outside the data is not drawn (a span is clipped), so no
marker stretches an axis.
"""

from __future__ import annotations

import bisect
import csv
import html
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .layouts import Layout
from .methods import METHODS, ChunkPlan
from .lm_eval_tasks import needle_cut
from .passkey import needle_cuts
from .results import wilson_interval
from .thresholds import smooth

__all__ = [
    "MAX_COLUMNS", "MAX_ROWS", "method_color", "downsample",
    "MARK_COLOR", "MARK_COLOR_ON_DARK", "AxisInfo", "axis_info", "mark", "marker_items",
    "add_marker_items", "category_boundary",
    "layout_heatmap", "layouts_side_by_side", "layout_difference", "chunk_plan_figure",
    "FIGURE_1", "figure1_layouts", "figure1",
    "attention_heatmap", "attention_by_distance", "hidden_state_figure", "trend_range",
    "passkey_heatmap", "passkey_accuracy_lines", "wilson_interval", "bench_figure",
    "save_html", "load_rows", "smooth_values",
]

log = logging.getLogger(__name__)

#: Most key columns an attention heatmap draws before block-downsampling.
MAX_COLUMNS = 1000
#: Most query rows an attention heatmap draws before block-downsampling.
MAX_ROWS = 400
#: Largest side of a layout heatmap before stride sampling.
MAX_LAYOUT_SIDE = 512
#: Most points per hidden-state curve before min/max envelope reduction.
MAX_POINTS = 4000

_PALETTE = tuple(qualitative.D3) + tuple(qualitative.Dark2)      # issue 10: 14+ methods
_CHUNK_COLORS = (("first", "#1f77b4"), ("middle", "#2ca02c"), ("last", "#d62728"),
                 ("whole", "#7f7f7f"))
_REDUCERS = ("max", "mean")
#: Chunk boundaries on a layout heatmap: visible on Viridis and on the blank (masked) cells.
_CHUNK_LINE = "#e7298a"


def method_color(name: str) -> str:
    """A fixed colour per method name (known methods first, others by name)."""
    names = list(METHODS)
    idx = names.index(name) if name in names else len(names) + sum(map(ord, str(name)))
    return _PALETTE[idx % len(_PALETTE)]


# -- helpers -------------------------------------------------------------------

def _check_layout(obj, name="layout") -> Layout:
    if not isinstance(obj, Layout):
        raise ValueError(f"{name} must be a mesa_viz.Layout, got {type(obj).__name__}")
    return obj


def _masked_z(lay: Layout) -> np.ndarray:
    """``[q, k]`` float relative positions, NaN where masked."""
    return np.where(lay.mask, lay.relative_positions, np.nan).astype(float)


def _stride(n: int, limit: int) -> int:
    return max(1, math.ceil(n / limit))


def downsample(a: np.ndarray, block: int, axis: int = -1, reduce: str = "max") -> np.ndarray:
    """Reduce ``a`` along ``axis`` in blocks of ``block`` by ``max`` or ``mean``.

    The last block may be shorter (NaN-padded, ignored by the reduction).
    ``[q, k]`` with ``block=b`` on axis -1 gives ``[q, ceil(k / b)]``.
    """
    if reduce not in _REDUCERS:
        raise ValueError(f"reduce={reduce!r}: allowed {list(_REDUCERS)}")
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block={block!r} must be an integer >= 1")
    a = np.moveaxis(np.asarray(a, dtype=float), axis, -1)
    if block > 1:
        n = a.shape[-1]
        pad = (-n) % block
        a = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)], constant_values=np.nan)
        a = a.reshape(*a.shape[:-1], -1, block)
        a = np.nanmax(a, axis=-1) if reduce == "max" else np.nanmean(a, axis=-1)
    return np.moveaxis(a, -1, axis)


def _layout_trace(lay: Layout, coloraxis: str | None = None) -> go.Heatmap:
    """Heatmap trace of ``lay.relative_positions [q, k]``, stride-sampled if large."""
    s = _stride(lay.seq_len, MAX_LAYOUT_SIDE)
    idx = np.arange(0, lay.seq_len, s)
    z = _masked_z(lay)[::s, ::s]
    return go.Heatmap(
        z=z, x=idx, y=idx, name=lay.method, coloraxis=coloraxis,
        colorscale=None if coloraxis else "Viridis",
        colorbar=None if coloraxis else dict(title="relative<br>position"),
        hovertemplate="q=%{y}<br>k=%{x}<br>relative position=%{z}<extra>"
                      + html.escape(lay.method) + "</extra>")


def _reverse_y(fig: go.Figure, **kwargs) -> None:
    """Query 0 at the top, square cells (q and k share a scale)."""
    fig.update_yaxes(autorange="reversed", title_text="query position q", scaleanchor="x",
                     constrain="domain", **kwargs)
    fig.update_xaxes(title_text="key position k", constrain="domain", **kwargs)


def _layout_title(lay: Layout) -> str:
    T = lay.params.get("train_length")
    return f"{lay.method}: n={lay.seq_len}, T={T}"


# -- markers: T, chunk boundaries, thresholds, spans ---------------------------------

#: Marker line colour on light backgrounds (line and bar plots).
MARK_COLOR = "#333333"
#: Marker line colour on dark colour maps (Magma attention, Viridis layouts).
MARK_COLOR_ON_DARK = "#00e5ff"


def _label_style(name: str, text: str, border: str) -> dict:
    """A marker label: dark text in a light box, readable on any colour map."""
    return dict(name=name, text=text, bordercolor=border, font=dict(size=11, color="#111111"),
                bgcolor="rgba(255,255,255,0.85)", borderwidth=1, borderpad=2, showarrow=False)


_AXIS_TYPES = ("linear", "log", "category")


@dataclass(frozen=True)
class AxisInfo:
    """What :func:`mark` needs to know about one axis of a figure.

    ``ref``: plotly's axis id (``"x"``, ``"y2"``...); ``type``: ``"linear"``,
    ``"log"`` or ``"category"``; ``lo <= hi``: the data extent in data units
    (the explicit ``range`` when one is set; on a category axis, category
    indices ``-0.5 .. n - 0.5``); ``reversed``: drawn high to low;
    ``categories``: category names in axis order (category axes only).
    """
    letter: str
    ref: str
    type: str
    lo: float
    hi: float
    reversed: bool = False
    categories: tuple = ()

    def position(self, value, what: str = "at") -> float:
        """``value`` in the units shapes take: data values on linear and log
        axes, the category index on a category axis (names are looked up)."""
        if self.type == "category":
            if isinstance(value, str):
                if value not in self.categories:
                    raise ValueError(f"{what}={value!r} is not a category of axis {self.ref}: "
                                     f"allowed {list(self.categories)[:8]} or an index")
                return float(self.categories.index(value))
            return float(value)
        v = float(value)
        if self.type == "log" and not v > 0:
            raise ValueError(f"{what}={value!r}: a log axis ({self.ref}) allows only values > 0")
        return v

    def annotation_coordinate(self, position: float) -> float:
        """Where an annotation goes for a shape at ``position``: plotly.js reads
        annotation coordinates on a log axis as log10 of the value (shapes take
        the value itself; checked in headless Chromium, plotly.js 4.1)."""
        return math.log10(position) if self.type == "log" else position

    def fraction(self, position: float) -> float:
        """0 at the visual start (left, bottom) of the extent, 1 at its end."""
        f = math.log10 if self.type == "log" else float
        lo, hi = f(self.lo), f(self.hi)
        frac = 0.5 if hi == lo else (f(position) - lo) / (hi - lo)
        return 1.0 - frac if self.reversed else frac


def axis_info(fig: go.Figure, letter: str = "x", row: int | None = None,
              col: int | None = None) -> AxisInfo:
    """The ``letter`` (``"x"``/``"y"``) axis of ``fig`` (of subplot ``row, col``):
    its id, type (set, or inferred as plotly does for numbers and text) and the
    extent of the data drawn on it so far (or its explicit ``range``)."""
    if letter not in ("x", "y"):
        raise ValueError(f"axis={letter!r}: allowed 'x' or 'y'")
    name = _axis_name(fig, letter, row, col)
    ref = letter + name[5:]
    lay = fig.layout[name]
    traces = [t for t in fig.data if f"{letter}axis" in t and (t[f"{letter}axis"] or letter) == ref]
    given = [_trace_values(t, letter, numeric=False) for t in traces]
    typ = lay.type if lay.type not in (None, "-") else _infer_type(given)
    if typ not in _AXIS_TYPES:
        raise ValueError(f"{name}.type={typ!r}: allowed {list(_AXIS_TYPES)}")
    rev = str(lay.autorange).endswith("reversed")
    cats = _categories(lay, given, name) if typ == "category" else ()
    if lay.range is not None and lay.autorange in (None, False):
        r0, r1 = (float(v) for v in lay.range)
        rev = r0 > r1
        lo, hi = sorted((r0, r1))
        lo, hi = (10.0 ** lo, 10.0 ** hi) if typ == "log" else (lo, hi)
    elif typ == "category":
        lo, hi = -0.5, len(cats) - 0.5
    else:
        lo, hi = _numeric_extent(traces, letter, typ == "log", name)
    return AxisInfo(letter, ref, typ, lo, hi, rev, tuple(cats))


def _axis_name(fig: go.Figure, letter: str, row, col) -> str:
    if row is None and col is None:
        return f"{letter}axis"
    if row is None or col is None or not fig._has_subplots():
        raise ValueError(f"row={row}, col={col}: allowed both None, or both set on a figure "
                         "made with make_subplots")
    try:
        sub = fig.get_subplot(row, col)
    except Exception as err:
        raise ValueError(f"row={row}, col={col}: no such subplot ({err})") from err
    if sub is None or not hasattr(sub, f"{letter}axis"):
        raise ValueError(f"row={row}, col={col}: not an x/y subplot")
    return getattr(sub, f"{letter}axis").plotly_name


def _trace_values(t, letter: str, numeric: bool = True) -> list:
    """The coordinates a trace puts on its ``letter`` axis; ``numeric``: as
    drawn (heatmaps: cell edges; bars along their value axis: base and
    base + value), else as given (category names)."""
    v = t[letter] if letter in t else None
    if t.type == "heatmap" and (numeric or v is None):
        return _heatmap_edges(t, letter, v) if numeric else list(range(_heatmap_size(t, letter)))
    if numeric and t.type == "bar" and (t.orientation or "v") == ("v" if letter == "y" else "h"):
        base = 0.0 if t.base is None else np.asarray(t.base, dtype=float)
        y = np.asarray(v if v is not None else [], dtype=float)
        return list(np.ravel(base + np.nan_to_num(y))) + list(np.ravel(base))
    return [] if v is None else list(np.ravel(np.asarray(v, dtype=object)))


def _heatmap_size(t, letter: str) -> int:
    return np.shape(t.z)[1 if letter == "x" else 0] if t.z is not None else 0


def _heatmap_edges(t, letter: str, v) -> list:
    n = _heatmap_size(t, letter)
    if v is not None and any(isinstance(c, str) and not _is_number(c) for c in v):
        return list(v)                                   # category names
    if v is None:
        start, step = (t[letter + "0"] or 0), (t["d" + letter] or 1)
        v = start + step * np.arange(n)
    c = np.asarray(v, dtype=float)
    if len(c) == n + 1 or len(c) == 0:
        return list(c)
    if len(c) == 1:
        return [c[0] - 0.5, c[0] + 0.5]
    return [c[0] - (c[1] - c[0]) / 2, *c, c[-1] + (c[-1] - c[-2]) / 2]


def _is_number(v) -> bool:
    if isinstance(v, bool):
        return False
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _infer_type(values: list) -> str:
    text = any(isinstance(v, str) and not _is_number(v) for vals in values for v in vals)
    return "category" if text else "linear"


def _categories(lay, values: list, name: str) -> list[str]:
    order = lay.categoryorder
    if order not in (None, "trace", "array"):
        raise ValueError(f"{name}.categoryorder={order!r}: mark() allows 'trace' or 'array'")
    seen = list(lay.categoryarray or ()) if order == "array" else []
    for vals in values:
        seen += [v for v in vals if v is not None]
    return list(dict.fromkeys(str(v) for v in seen))


def _numeric_extent(traces, letter: str, log: bool, name: str) -> tuple[float, float]:
    vals = np.array([float(v) for t in traces for v in _trace_values(t, letter)
                     if v is not None and _is_number(v)], dtype=float)
    vals = vals[np.isfinite(vals) & ((vals > 0) if log else True)]
    if vals.size == 0:
        raise ValueError(f"nothing is drawn on {name} yet: add the traces (and set the "
                         "axis type) before marking it")
    return float(vals.min()), float(vals.max())


def mark(fig: go.Figure, at, *, name: str, label: str | None = None, axis: str = "x",
         to=None, row: int | None = None, col: int | None = None, across=None,
         color: str = MARK_COLOR, dash: str = "dash", width: float = 1.5,
         fill_opacity: float = 0.15, label_at: float = 1.0) -> bool:
    """Mark a position (a line) or a range (a shaded span) on one axis of ``fig``.

    The one way figures mark ``T``, chunk boundaries, thresholds and needles;
    it works on linear, log and category axes, x or y, in subplot
    ``row, col``.  Add the traces and set the axis type first.

    ``at`` (and ``to`` for a span ``[at, to]``): data values; on a category
    axis a category name or index (``2.5``: between categories 2 and 3).
    ``across``: ``(lo, hi)`` on the other axis the mark covers (default: all
    of it), e.g. one heatmap row ``(i - 0.5, i + 0.5)``.  ``label``: text in a
    light box (readable on dark colour maps) beside a line, or inside a span
    from its outer end, running toward the middle of the plot; ``label_at``:
    where along the other axis (0..1 of its domain).  The shape and the label
    carry ``name``.

    Never stretches the autorange: a line outside the extent of the data on
    that axis (or its explicit ``range``) is **not drawn** and a span is
    **clipped** to it; an undrawn mark with a ``label`` leaves a note at that
    edge of the plot (``"◀ T=8192"``, in axis-domain units).  Returns whether
    the mark was drawn.

    plotly itself places shapes at data values but annotations on a log axis
    at log10 of the value, and reads numeric-looking category names as
    indices; :func:`mark` takes care of both (see :class:`AxisInfo`).  One
    plotly.js quirk remains: on a *reversed autoranged* axis a label's padding
    is applied to the wrong side, so a label on such an axis (a ``y`` mark on
    a reversed y axis) can widen the range by its height; x marks there are fine.
    """
    ax = axis_info(fig, axis, row, col)
    other = _other(fig, ax, across, row, col)
    shape, note = marker_items(ax, other, at, name=name, label=label, to=to, across=across,
                               color=color, dash=dash, width=width,
                               fill_opacity=fill_opacity, label_at=label_at)
    if shape is not None:
        fig.add_shape(shape)
    if note is not None:
        fig.add_annotation(note)
    return shape is not None


def _other(fig, ax: AxisInfo, across, row, col):
    """The other axis: its full info when ``across`` needs it, else its id."""
    letter = "y" if ax.letter == "x" else "x"
    if across is not None:
        return axis_info(fig, letter, row, col)
    return letter + _axis_name(fig, letter, row, col)[5:]


def marker_items(ax: AxisInfo, other, at, *, name: str, label: str | None = None, to=None,
                 across=None, color: str = MARK_COLOR, dash: str = "dash",
                 width: float = 1.5, fill_opacity: float = 0.15, label_at: float = 1.0):
    """The ``(shape, annotation)`` dicts :func:`mark` adds (either may be None),
    for adding many marks at once; ``other``: the other axis's AxisInfo (needed
    with ``across``) or its id."""
    if not name:
        raise ValueError("name is empty: allowed a non-empty name tests and widgets can find")
    if not 0 <= label_at <= 1:
        raise ValueError(f"label_at={label_at}: allowed 0..1 (fraction of the other axis)")
    p0 = ax.position(at, "at")
    lo, hi = sorted((p0, p0 if to is None else ax.position(to, "to")))
    oref = other if isinstance(other, str) else other.ref
    if hi < ax.lo or lo > ax.hi:
        return None, (None if label is None else _edge_note(ax, oref, lo < ax.lo, label,
                                                            name, label_at))
    lo, hi = max(lo, ax.lo), min(hi, ax.hi)
    if across is None:
        o0, o1, oref_used = 0, 1, oref + " domain"
    else:
        o0, o1 = (other.position(v, "across") for v in across)
        oref_used = oref
    shape = dict(name=name, layer="above", **_span_coords(ax, lo, hi, oref_used, o0, o1))
    if to is None:
        shape.update(type="line", line=dict(color=color, dash=dash, width=width))
    else:
        shape.update(type="rect", fillcolor=color, opacity=fill_opacity, line=dict(width=0))
    note = None
    if label is not None:
        note = _label(ax, oref, lo, hi, label, name, label_at, color, to is None)
    return shape, note


def add_marker_items(fig: go.Figure, items) -> None:
    """Add many :func:`marker_items` results at once (one layout update, not
    one per mark: plotly copies the shape list on every ``add_shape``)."""
    items = list(items)
    fig.update_layout(shapes=[*fig.layout.shapes, *(s for s, _ in items if s is not None)],
                      annotations=[*fig.layout.annotations,
                                   *(a for _, a in items if a is not None)])


def _span_coords(ax: AxisInfo, lo, hi, oref, o0, o1) -> dict:
    if ax.letter == "x":
        return dict(x0=lo, x1=hi, xref=ax.ref, y0=o0, y1=o1, yref=oref)
    return dict(y0=lo, y1=hi, yref=ax.ref, x0=o0, x1=o1, xref=oref)


def _label(ax: AxisInfo, oref: str, lo, hi, text, name, label_at, color, line) -> dict:
    """The label box beside a line (or inside a span, from its outer end) with
    the text running toward the plot's middle, so it never pushes the
    autorange out; ``label_at`` along the other axis's domain."""
    inward = ax.fraction(math.sqrt(lo * hi) if ax.type == "log" else (lo + hi) / 2) < 0.5
    pos = lo if line or inward != ax.reversed else hi       # the span's outer end
    gap = (4 if inward else -4) if line else 0
    a = _label_style(name, text, color)
    if ax.letter == "x":
        a.update(x=ax.annotation_coordinate(pos), xref=ax.ref, xanchor="left" if inward else "right",
                 xshift=gap, y=label_at, yref=oref + " domain",
                 yanchor="top" if label_at >= 0.5 else "bottom")
    else:
        a.update(y=ax.annotation_coordinate(pos), yref=ax.ref, yanchor="bottom" if inward else "top",
                 yshift=gap, x=label_at, xref=oref + " domain",
                 xanchor="right" if label_at >= 0.5 else "left")
    return a


def _edge_note(ax: AxisInfo, oref: str, below: bool, text: str, name: str,
               label_at: float) -> dict:
    """A note at the plot's edge for a mark outside the data (drawn nowhere else)."""
    start = below != ax.reversed                   # the visual left / bottom edge
    oref += " domain"
    if ax.letter == "x":
        a = _label_style(name, f"◀ {text}" if start else f"{text} ▶", "#999999")
        a.update(xref=ax.ref + " domain",
                 x=0 if start else 1, xanchor="left" if start else "right", yref=oref,
                 y=label_at, yanchor="top" if label_at >= 0.5 else "bottom")
    else:
        a = _label_style(name, f"▼ {text}" if start else f"▲ {text}", "#999999")
        a.update(yref=ax.ref + " domain",
                 y=0 if start else 1, yanchor="bottom" if start else "top", xref=oref,
                 x=label_at, xanchor="right" if label_at >= 0.5 else "left")
    return a


def category_boundary(categories, value: float) -> float:
    """The category index between the numeric ``categories`` (sorted) ``<= value``
    and those ``> value``, e.g. where ``T`` falls on a length axis of categories
    ``[4096, 8192, 16384]``: ``1.5`` for ``T = 8192``."""
    cats = [float(c) for c in categories]
    if any(b < a for a, b in zip(cats, cats[1:])):
        raise ValueError(f"categories={list(categories)[:8]}: allowed sorted numbers")
    return bisect.bisect_right(cats, float(value)) - 0.5


# -- layouts -------------------------------------------------------------------

def layout_heatmap(layout: Layout, title: str | None = None) -> go.Figure:
    """Heatmap of ``layout.relative_positions [q, k]``; masked cells are blank.

    Hover shows q, k and the relative position.  Mesa's chunk boundaries
    (``layout.chunk_plan``) are drawn as dashed lines with labels.
    """
    lay = _check_layout(layout)
    fig = go.Figure(_layout_trace(lay))
    _reverse_y(fig)
    if lay.chunk_plan is not None and len(lay.chunk_plan.chunks) > 1:
        _annotate_chunks(fig, lay.chunk_plan)
    fig.update_layout(title=title or _layout_title(lay), height=520)
    return fig


def _chunk_kinds(plan: ChunkPlan) -> list[str]:
    n = len(plan.chunks)
    if n == 1:
        return ["whole"]
    return ["first"] + ["middle"] * (n - 2) + ["last"]


def _annotate_chunks(fig: go.Figure, plan: ChunkPlan, max_labels: int = 8,
                     row: int | None = None, col: int | None = None) -> None:
    """Dashed lines at each chunk start (keys and queries) and a label per
    chunk over its keys, at the top (the masked triangle); past
    ``max_labels`` chunks only the first, the central middle chunk
    (``middle ×n``) and the last are labelled.  ``row, col``: the subplot."""
    kinds = _chunk_kinds(plan)
    n_mid = kinds.count("middle")
    x, y = axis_info(fig, "x", row, col), axis_info(fig, "y", row, col)
    items = []
    for k, ((start, stop), kind) in enumerate(zip(plan.chunks, kinds)):
        if start > 0:
            items += [marker_items(x, y.ref, start - 0.5, name=f"chunk boundary {start}",
                                   color=_CHUNK_LINE),
                      marker_items(y, x.ref, start - 0.5, name=f"chunk boundary {start}",
                                   color=_CHUNK_LINE)]
        if len(kinds) <= max_labels or kind != "middle" or k == len(kinds) // 2:
            text = kind if len(kinds) <= max_labels or kind != "middle" else f"middle ×{n_mid}"
            items.append(marker_items(x, y.ref, start - 0.5, to=stop - 0.5, label=text,
                                      name=f"chunk {kind} {start}", fill_opacity=0.0,
                                      color=dict(_CHUNK_COLORS)[kind]))
    add_marker_items(fig, items)


def layouts_side_by_side(layouts, cols: int | None = None,
                         title: str | None = None) -> go.Figure:
    """One heatmap subplot per Layout, sharing one colour scale."""
    layouts = list(layouts)
    if not layouts:
        raise ValueError("layouts is empty: allowed a non-empty list of Layout")
    for k, lay in enumerate(layouts):
        _check_layout(lay, f"layouts[{k}]")
    cols = cols or min(4, len(layouts))
    rows = math.ceil(len(layouts) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[_layout_title(l) for l in layouts],
                        horizontal_spacing=0.04, vertical_spacing=0.08)
    vmax = max(float(np.nanmax(_masked_z(l))) for l in layouts)
    for k, lay in enumerate(layouts):
        fig.add_trace(_layout_trace(lay, coloraxis="coloraxis"), row=k // cols + 1, col=k % cols + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(coloraxis=dict(colorscale="Viridis", cmin=0, cmax=vmax,
                                     colorbar=dict(title="relative<br>position")),
                      height=300 * rows + 80, title=title or "position layouts")
    return fig


#: The paper's Figure 1: Mesa on 13 tokens (first chunk 2, middle chunks of 3,
#: last chunk 2, Stair PE from 2 in steps of 2) and Stair PE with ``N = 4, E = 2``
#: on 10 tokens, both with ``T = 8``: ``(method, seq_len, parameters)``.
FIGURE_1 = (
    ("mesa", 13, (("train_length", 8), ("first_chunk", 2), ("chunk_size", 3),
                  ("last_chunk", 2), ("stair_start", 2), ("stair_width", 2))),
    ("stair", 10, (("train_length", 8), ("stair_start", 4), ("stair_width", 2))),
)


def figure1_layouts() -> list[Layout]:
    """The two layouts of the paper's Figure 1 (:data:`FIGURE_1`)."""
    from .layouts import layout
    return [layout(method, n, **dict(params)) for method, n, params in FIGURE_1]


def figure1(layouts=None, title: str | None = None) -> go.Figure:
    """The paper's Figure 1: layouts side by side (default
    :func:`figure1_layouts`: Mesa left, Stair PE right) with square cells, each
    cell's relative position written in it and Mesa's chunk boundaries."""
    layouts = figure1_layouts() if layouts is None else list(layouts)
    fig = layouts_side_by_side(layouts, cols=len(layouts), title=title or (
        "Figure 1: Mesa (chunks: first, middle, last with Stair PE) and Stair PE "
        "(P(t) = t below N, then one position per E tokens)"))
    for k, lay in enumerate(layouts):
        sub = dict(row=1, col=k + 1)
        if lay.chunk_plan is not None and len(lay.chunk_plan.chunks) > 1:
            _annotate_chunks(fig, lay.chunk_plan, **sub)
        fig.update_yaxes(scaleanchor=axis_info(fig, "x", **sub).ref, constrain="domain",
                         title_text="query q" if k == 0 else None, **sub)
        fig.update_xaxes(constrain="domain", title_text="key k", **sub)
    fig.update_traces(texttemplate="%{z:.1~f}", textfont_size=11)
    fig.update_layout(height=420, title_font_size=13, margin=dict(t=80, b=50))
    return fig


def layout_difference(a: Layout, b: Layout, title: str | None = None) -> go.Figure:
    """Heatmap of ``a - b`` (relative positions) where both see the key, and a
    second trace marking where the masks differ (seen by only one of them)."""
    a, b = _check_layout(a, "a"), _check_layout(b, "b")
    if a.seq_len != b.seq_len:
        raise ValueError(f"seq_len differs: a has {a.seq_len}, b has {b.seq_len}; "
                         "allowed: layouts of the same length")
    s = _stride(a.seq_len, MAX_LAYOUT_SIDE)
    idx = np.arange(0, a.seq_len, s)
    za, zb = _masked_z(a)[::s, ::s], _masked_z(b)[::s, ::s]
    diff = za - zb
    only = np.where(a.mask[::s, ::s] & ~b.mask[::s, ::s], 1.0,
                    np.where(b.mask[::s, ::s] & ~a.mask[::s, ::s], -1.0, np.nan))
    lim = max(1.0, float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 1.0)
    fig = go.Figure([
        go.Heatmap(z=diff, x=idx, y=idx, name="difference", colorscale="RdBu", zmid=0,
                   zmin=-lim, zmax=lim, colorbar=dict(title=f"{a.method}<br>- {b.method}"),
                   hovertemplate="q=%{y}<br>k=%{x}<br>difference=%{z}<extra></extra>"),
        go.Heatmap(z=only, x=idx, y=idx, name="mask differs", showscale=False, zmin=-1, zmax=1,
                   colorscale=[[0, "#7b3294"], [1, "#fdb863"]],
                   hovertemplate="q=%{y}<br>k=%{x}<br>%{text}<extra></extra>",
                   text=np.where(only == 1, f"only {a.method} sees it",
                                 np.where(only == -1, f"only {b.method} sees it", ""))),
    ])
    _reverse_y(fig)
    fig.update_layout(title=title or f"{a.method} - {b.method} (n={a.seq_len}); "
                      "orange: only first sees the key, purple: only second",
                      height=520)
    return fig


def _as_plan(layout_or_plan, seq_len) -> tuple[ChunkPlan, str]:
    if isinstance(layout_or_plan, Layout):
        if layout_or_plan.chunk_plan is None:
            raise ValueError(f"method {layout_or_plan.method!r} has no chunk plan: "
                             "allowed a Mesa layout, a ChunkPlan or (start, stop) pairs")
        return layout_or_plan.chunk_plan, f"{layout_or_plan.method}, n={layout_or_plan.seq_len}"
    if isinstance(layout_or_plan, ChunkPlan):
        plan = layout_or_plan
    else:
        try:
            plan = ChunkPlan(tuple((int(a), int(b)) for a, b in layout_or_plan))
        except (TypeError, ValueError) as err:
            raise ValueError(f"layout_or_plan={layout_or_plan!r}: allowed a Layout, a "
                             "ChunkPlan or a list of (start, stop) pairs") from err
    _check_plan(plan, seq_len)
    return plan, f"n={plan.chunks[-1][1]}" if plan.chunks else ""


def _check_plan(plan: ChunkPlan, seq_len) -> None:
    if not plan.chunks:
        raise ValueError("chunk plan is empty: allowed at least one (start, stop) pair")
    expected = 0
    for start, stop in plan.chunks:
        if start != expected or stop <= start:
            raise ValueError(f"chunk ({start}, {stop}) is invalid: chunks must be non-empty, "
                             f"contiguous and start at 0 (expected start {expected})")
        expected = stop
    if seq_len is not None and expected != seq_len:
        raise ValueError(f"chunk plan ends at {expected} but seq_len={seq_len}")


def chunk_plan_figure(layout_or_plan, seq_len: int | None = None,
                      title: str | None = None) -> go.Figure:
    """Mesa's chunk plan as horizontal bars (first / middle / last chunks).

    ``layout_or_plan``: a Mesa Layout, a ChunkPlan or ``(start, stop)`` pairs;
    ``seq_len`` (optional) is checked against the plan's end.
    """
    plan, what = _as_plan(layout_or_plan, seq_len)
    kinds = _chunk_kinds(plan)
    fig = go.Figure()
    for kind, color in _CHUNK_COLORS:
        sel = [(k, c) for k, (c, kk) in enumerate(zip(plan.chunks, kinds)) if kk == kind]
        if not sel:
            continue
        fig.add_trace(go.Bar(
            orientation="h", name=kind, marker_color=color,
            y=[f"chunk {k}" for k, _ in sel], base=[c[0] for _, c in sel],
            x=[c[1] - c[0] for _, c in sel],
            customdata=[[c[0], c[1], c[1] - c[0]] for _, c in sel],
            hovertemplate="%{y} (" + kind + ")<br>tokens [%{customdata[0]}, "
                          "%{customdata[1]})<br>%{customdata[2]} tokens<extra></extra>"))
    fig.update_yaxes(autorange="reversed", categoryorder="array",
                     categoryarray=[f"chunk {k}" for k in range(len(plan.chunks))])
    fig.update_xaxes(title_text="token position")
    fig.update_layout(title=title or f"Mesa chunk plan ({what})", barmode="overlay",
                      height=140 + 22 * len(plan.chunks))
    return fig


# -- attention -----------------------------------------------------------------

def _check_attn(attn) -> np.ndarray:
    a = np.asarray(attn, dtype=float)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"attn has shape {np.shape(attn)}: allowed a non-empty "
                         "[q_row, k_pos] (or [k_pos]) array")
    return a


def _check_rows(query_rows, n_rows: int, name="query_rows") -> np.ndarray:
    if query_rows is None:
        return np.arange(n_rows)
    rows = np.asarray(query_rows).reshape(-1)
    if rows.size != n_rows:
        raise ValueError(f"{name} has {rows.size} entries but attn has {n_rows} rows: "
                         "allowed one query position per row")
    return rows


def _check_window(window, width: int) -> tuple[int, int]:
    try:
        k0, k1 = (int(v) for v in window)
    except (TypeError, ValueError) as err:
        raise ValueError(f"window={window!r}: allowed (k_start, k_stop)") from err
    if not 0 <= k0 < k1 <= width:
        raise ValueError(f"window={window!r} is out of range: allowed "
                         f"0 <= k_start < k_stop <= {width}")
    return k0, k1


def attention_heatmap(attn, query_rows=None, block: int | None = None, reduce: str = "max",
                      log_color: bool = True, window=None, title: str | None = None,
                      marks: dict | None = None, train_length: int | None = None,
                      floor: float = 1e-6, max_columns: int = MAX_COLUMNS,
                      max_rows: int = MAX_ROWS, row_title: str = "query position q",
                      query_positions=None) -> go.Figure:
    """Attention rows ``attn [q_row, k_pos]`` as a heatmap that renders at any width.

    The key axis is block-downsampled (``reduce`` = ``"max"`` or ``"mean"``)
    to at most ``max_columns`` columns (``block`` forces a block size), the
    query axis likewise to ``max_rows``.  ``window=(k_start, k_stop)`` draws
    exact values of those keys (no downsampling up to ``max_columns`` keys).
    ``log_color`` colours by ``log10(max(p, floor))``.  ``marks``: name ->
    ``(k_start, k_stop)`` drawn as shaded spans (e.g. the passkey needle).
    Rows are labelled by ``query_rows`` (any labels; ``row_title`` names them).

    ``train_length`` marks, per row, where keys leave the trained range: for
    query ``q`` the keys ``k <= q - T`` are at distance ``>= T``, so a line
    at ``k = q - T + 0.5`` (one line when all rows share ``q``, else a segment
    per row; rows with ``q < T`` have no such keys and no mark).  The query
    position of each row is ``query_positions``, else ``query_rows`` when they
    are integers, else the last key (a causal row cut at its query); the
    label says which ``q`` it used.  A downsampled row block uses its first
    row's ``q``.  The block sizes used are in ``fig.layout.meta``.
    """
    a = _check_attn(attn)
    rows = _check_rows(query_rows, a.shape[0])
    q = _query_positions(query_positions, query_rows, a.shape)
    k0, k1 = (0, a.shape[1]) if window is None else _check_window(window, a.shape[1])
    a = a[:, k0:k1]
    kb = block if block is not None else _stride(a.shape[1], max_columns)
    a = downsample(a, kb, axis=1, reduce=reduce)
    qb = _stride(a.shape[0], max_rows)
    a = downsample(a, qb, axis=0, reduce=reduce)
    z = np.log10(np.maximum(a, floor)) if log_color else a
    x = np.arange(k0, k1, kb) + (kb - 1) / 2                 # block centres
    y = rows[::qb]
    fig = go.Figure(go.Heatmap(
        z=z, x=x, y=[str(r) for r in y], customdata=a, name="attention",
        colorscale="Magma", reversescale=False,
        colorbar=dict(title="log10 p" if log_color else "p"),
        hovertemplate=("%{y}<br>" + (f"k≈%{{x:.1f}} (block of {kb}, {reduce})" if kb > 1
                                     else "k=%{x}") + "<br>p=%{customdata:.3g}<extra></extra>")))
    fig.update_yaxes(autorange="reversed", title_text=row_title, type="category")
    fig.update_xaxes(title_text="key position k", range=[k0 - 0.5, k1 - 0.5])
    _mark_spans(fig, marks or {})
    if train_length is not None:
        _mark_distance_boundary(fig, q[::qb], _positive(train_length, "train_length"))
    fig.update_layout(title=title or _attn_title(kb, reduce, window),
                      meta=dict(key_block=kb, query_block=qb, reduce=reduce,
                                window=[k0, k1]),
                      height=max(300, min(700, 140 + 18 * len(y))))
    return fig


def _positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}: allowed a positive integer")
    return int(value)


def _query_positions(query_positions, query_rows, shape) -> np.ndarray:
    """``[q_row]`` query positions: given, the integer row labels, or the last key."""
    if query_positions is not None:
        q = np.asarray(query_positions).reshape(-1)
        if q.size != shape[0] or not np.issubdtype(q.dtype, np.integer):
            raise ValueError(f"query_positions={query_positions!r}: allowed {shape[0]} "
                             "integer positions, one per row")
        return q
    labels = None if query_rows is None else np.asarray(query_rows).reshape(-1)
    if labels is not None and np.issubdtype(labels.dtype, np.integer):
        return labels
    return np.full(shape[0], shape[1] - 1)


def _mark_distance_boundary(fig: go.Figure, q: np.ndarray, T: int) -> None:
    """Where keys reach distance ``>= T`` for each drawn row (query ``q``)."""
    rows = [i for i, qi in enumerate(q) if qi >= T]
    if not rows:
        return
    if len(set(q[rows])) == 1 and len(rows) == len(q):
        mark(fig, q[0] - T + 0.5, name="train_length", color=MARK_COLOR_ON_DARK,
             label=f"◀ distance ≥ T={T} (q={q[0]})", label_at=0.02)
        return
    x, y = axis_info(fig, "x"), axis_info(fig, "y")
    add_marker_items(fig, [marker_items(           # labelled once, at the bottom row
        x, y, q[i] - T + 0.5, name="train_length", across=(i - 0.5, i + 0.5),
        color=MARK_COLOR_ON_DARK, label=f"◀ distance ≥ T={T}" if i == rows[-1] else None,
        label_at=0.02, dash="solid", width=2.5) for i in rows])


def _attn_title(kb: int, reduce: str, window) -> str:
    what = "attention" if window is None else f"attention, keys [{window[0]}, {window[1]})"
    return what + (f" ({reduce} over blocks of {kb} keys)" if kb > 1 else "")


def _mark_spans(fig: go.Figure, marks: dict) -> None:
    """Shaded key spans ``name -> (k_start, k_stop)`` (clipped to the keys drawn)."""
    for k, (name, span) in enumerate(marks.items()):
        s0, s1 = _check_window(span, 10 ** 12)
        mark(fig, s0 - 0.5, to=s1 - 0.5, name=str(name), label=str(name),
             color=_PALETTE[(k + 2) % len(_PALETTE)], fill_opacity=0.3, label_at=0.98)


def _distance_edges(bins, max_d: int, train_length: int | None = None) -> np.ndarray:
    """Bin edges over distances ``0..max_d``; ``train_length`` is always an edge
    (when inside), with log-spaced bins below it and separate ones from it on."""
    T = train_length if train_length is not None and 0 < train_length <= max_d else None
    if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
        if bins < 1:
            raise ValueError(f"bins={bins}: allowed an integer >= 1 or bin edges")
        if T is None or T == 1:
            inner = np.geomspace(1, max_d + 1, bins)
        else:
            far = max(1, round(bins * math.log((max_d + 1) / T) / math.log(max_d + 1)))
            near = max(1, bins - 1 - far)
            inner = np.r_[np.geomspace(1, T, near + 1), np.geomspace(T, max_d + 1, far + 1)]
        edges = np.unique(np.concatenate([[0], np.round(inner).astype(int), [max_d + 1]]))
    else:
        edges = np.asarray(bins, dtype=float).reshape(-1)
        if edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise ValueError(f"bins={bins!r}: allowed an integer or increasing edges (>= 2)")
    if T is not None and edges[0] < T < edges[-1]:
        edges = np.union1d(edges, [T])
    return edges


def _bin_centres(edges: np.ndarray, log: bool) -> np.ndarray:
    """Where each bin ``[a, b)`` of integer distances is drawn: the middle of the
    distances it holds (geometric on a log axis, distance 0 at 0.5)."""
    a = np.ceil(edges[:-1])
    b = np.maximum(np.ceil(edges[1:]) - 1, a)
    if log:
        return np.sqrt(np.maximum(a, 0.5) * np.maximum(b, 0.5))
    return (a + b) / 2


def _distance_mass(a: np.ndarray, rows: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``[q_row, bin]`` attention mass of ``a [q_row, k_pos]`` by distance bin."""
    d = rows[:, None] - np.arange(a.shape[1])[None, :]
    which = np.searchsorted(edges, d, side="right") - 1
    ok = (d >= 0) & (which >= 0) & (which < len(edges) - 1)
    mass = np.zeros((a.shape[0], len(edges) - 1))
    for r in range(a.shape[0]):
        np.add.at(mass[r], which[r, ok[r]], a[r, ok[r]])
    return mass


def attention_by_distance(attn, query_rows, bins=24, mean: bool = False,
                          train_length: int | None = None, title: str | None = None,
                          names=None, log_x: bool = True) -> go.Figure:
    """Attention mass against relative distance ``d = q - k`` in log-spaced bins.

    ``attn [q_row, k_pos]``; ``query_rows [q_row]`` the query positions.
    One line per query row (``names`` labels them; default ``q=<row>``), or
    their mean (``mean=True``).  ``bins``: a number of log-spaced bins or
    explicit increasing edges (``[lo, hi)``).  Points sit at the middle of
    their bin's distances; ``log_x``: log distance axis.

    ``train_length`` (``T``) is made a bin edge, so the bins at distance
    ``>= T`` hold exactly the mass past the trained range: they are shaded,
    ``T`` is marked, and each curve's total there is in the subtitle and in
    ``fig.layout.meta["mass_beyond_train_length"]``.
    """
    a = _check_attn(attn)
    rows = _check_rows(query_rows, a.shape[0])
    if rows.min() < 0 or rows.max() >= a.shape[1]:
        raise ValueError(f"query_rows must lie in [0, {a.shape[1] - 1}] (key positions), "
                         f"got [{rows.min()}, {rows.max()}]")
    T = None if train_length is None else _positive(train_length, "train_length")
    edges = _distance_edges(bins, int(rows.max()), T)
    mass = _distance_mass(a, rows, edges)
    if names is not None and len(names) != len(rows):
        raise ValueError(f"names has {len(names)} entries: allowed one per row ({len(rows)})")
    names = [f"q={q}" for q in rows] if names is None else [str(n) for n in names]
    curves = {"mean": mass.mean(axis=0)} if mean else dict(zip(names, mass))
    x = _bin_centres(edges, log_x)
    fig = go.Figure([go.Scatter(x=x, y=m, name=name, mode="lines+markers",
                                customdata=np.stack([edges[:-1], edges[1:]], axis=1),
                                hovertemplate="d in [%{customdata[0]}, %{customdata[1]})"
                                              "<br>mass=%{y:.3g}<extra>%{fullData.name}</extra>")
                     for name, m in curves.items()])
    fig.update_xaxes(type="log" if log_x else "linear",
                     title_text="relative distance q - k (middle of bin)")
    fig.update_yaxes(title_text="attention mass in bin")
    fig.update_layout(title=title or "attention mass by distance", height=400)
    if T is not None:
        _mark_beyond(fig, curves, edges, x, T)
    return fig


def _mark_beyond(fig: go.Figure, curves: dict, edges: np.ndarray, x: np.ndarray, T: int) -> None:
    """Shade the bins at distance >= T, mark T, and report the mass there."""
    far = edges[:-1] >= T
    beyond = {name: float(m[far].sum()) for name, m in curves.items()}
    mark(fig, T, name="train_length", label=f"T={T}")
    if far.any():
        mark(fig, T, to=float(x[far].max()), name="distance >= T", color="#d62728",
             fill_opacity=0.08)
        shown = ", ".join(f"{n} {v:.2%}" for n, v in list(beyond.items())[:4])
        more = f" (+{len(beyond) - 4} more in meta)" if len(beyond) > 4 else ""
        note = f"attention mass at distance ≥ T={T} (shaded): {shown}{more}"
    else:
        note = f"no bin reaches distance T={T}"
    fig.update_layout(title_subtitle_text=note, margin_t=90,
                      meta=dict(mass_beyond_train_length=beyond))


# -- hidden states ---------------------------------------------------------------

def _envelope(x: np.ndarray, y: np.ndarray, max_points: int):
    """Keep each block's min and max (in position order) so spikes survive."""
    if len(y) <= max_points:
        return x, y
    b = _stride(len(y), max_points // 2)
    n = len(y) // b * b
    xb, yb = x[:n].reshape(-1, b), y[:n].reshape(-1, b)
    lo, hi = np.nanargmin(yb, axis=1), np.nanargmax(yb, axis=1)
    first, second = np.minimum(lo, hi), np.maximum(lo, hi)
    r = np.arange(len(yb))
    xs = np.stack([xb[r, first], xb[r, second]], axis=1).reshape(-1)
    ys = np.stack([yb[r, first], yb[r, second]], axis=1).reshape(-1)
    return np.concatenate([xs, x[n:]]), np.concatenate([ys, y[n:]])


def smooth_values(y: np.ndarray, window) -> np.ndarray:
    """Trailing moving average (``None`` or 1: the values themselves), the
    threshold finder's own :func:`mesa_viz.thresholds.smooth`."""
    if window is None or window == 1:
        return np.asarray(y, dtype=float)
    return smooth(y, window)


def hidden_state_figure(values_by_method: dict, train_length: int, threshold: float | None = None,
                        positions=None, smooth: int | None = None, title: str | None = None,
                        max_points: int = MAX_POINTS, *, zoom: bool = True,
                        relative: bool = False, correlation: float | None = None,
                        log_x: bool = False) -> go.Figure:
    """Hidden-state value against position for one (layer, dim), methods overlaid
    (the paper's Figure 2).

    ``values_by_method``: name -> ``[pos]`` array; ``positions`` (``[pos]``)
    default to ``0..len-1``.  ``train_length`` and ``threshold`` (the value
    reached at ``train_length``) are marked.  ``smooth``: trailing
    moving-average window.  Curves longer than ``max_points`` keep each
    block's min and max.

    ``zoom`` (default): the y axis spans the trend, not the start transient:
    the 0.5..99.5 percentiles of each curve after its first ``smooth``
    positions (first position if unsmoothed), widened to the threshold, plus
    a 5 % margin; how many points it clips is said in the subtitle (the
    modebar's autoscale shows them).  ``relative``: plot
    ``(value - threshold) * sign(correlation)`` so that "past the threshold"
    is always up (> 0), with 0 marked; ``correlation`` (the pair's r with
    log position) gives the sign (+1 when None).  ``log_x``: log position axis.
    """
    curves = _hidden_curves(values_by_method, positions, smooth)
    if relative:
        if threshold is None:
            raise ValueError("relative=True needs a threshold: allowed relative=False or a "
                             "threshold value")
        sign = -1.0 if correlation is not None and correlation < 0 else 1.0
        curves = {n: (x, (y - float(threshold)) * sign) for n, (x, y) in curves.items()}
    level = None if threshold is None else (0.0 if relative else float(threshold))
    fig = go.Figure()
    for name, (x, y) in curves.items():
        xe, ye = _envelope(x, y, max_points)
        fig.add_trace(go.Scatter(x=xe, y=ye, name=str(name), mode="lines",
                                 line=dict(color=method_color(name), width=1.2),
                                 hovertemplate="pos=%{x}<br>value=%{y:.4g}<extra>%{fullData.name}"
                                               "</extra>"))
    fig.update_xaxes(title_text="position", type="log" if log_x else "linear")
    fig.update_yaxes(title_text=_hidden_y_title(relative, correlation))
    fig.update_layout(title=title or "hidden state against position", height=440)
    if zoom:
        _zoom_to_trend(fig, [y for _, y in curves.values()], max(1, smooth or 1), level)
    mark(fig, _positive(train_length, "train_length"), name="train_length",
         label=f"T={train_length}")
    if level is not None:
        mark(fig, level, axis="y", name="threshold", color="#d62728", dash="dot",
             label="threshold (0)" if relative else f"threshold {level:.3g}", label_at=0.01)
    return fig


def _hidden_curves(values_by_method: dict, positions, smooth) -> dict:
    """name -> ``(positions [pos], smoothed values [pos])``, checked."""
    if not values_by_method:
        raise ValueError("values_by_method is empty: allowed a dict name -> [pos] array")
    curves = {}
    for name, values in values_by_method.items():
        y = np.asarray(values, dtype=float)
        if y.ndim != 1:
            raise ValueError(f"values_by_method[{name!r}] has shape {y.shape}: allowed [pos]")
        x = np.arange(len(y)) if positions is None else np.asarray(positions)
        if len(x) != len(y):
            raise ValueError(f"positions has {len(x)} entries but values_by_method[{name!r}] "
                             f"has {len(y)}: allowed equal lengths")
        curves[name] = (x, smooth_values(y, smooth))
    return curves


def _hidden_y_title(relative: bool, correlation) -> str:
    if not relative:
        return "hidden-state value"
    if correlation is None:
        return "value - threshold"
    return "(value - threshold) × sign(r): > 0 is past it"


def trend_range(curves, skip: int, include: float | None = None) -> tuple[float, float, int]:
    """``(lo, hi, clipped)``: a y range for ``curves`` (``[pos]`` arrays) that
    ignores their first ``skip`` values (the start transient) and isolated
    spikes: the 0.5..99.5 percentiles of the rest of each curve, widened to
    ``include``, plus a 5 % margin; ``clipped`` counts the values outside it."""
    tails = [y[skip:][np.isfinite(y[skip:])] for y in map(np.asarray, curves)]
    tails = [t for t in tails if t.size]
    if not tails:
        raise ValueError(f"no finite values after the first {skip} positions: allowed "
                         "curves longer than the smoothing window")
    lo = min(float(np.percentile(t, 0.5)) for t in tails)
    hi = max(float(np.percentile(t, 99.5)) for t in tails)
    if include is not None:
        lo, hi = min(lo, include), max(hi, include)
    pad = 0.05 * (hi - lo) or 0.05 * max(abs(hi), 1e-12)
    lo, hi = lo - pad, hi + pad
    clipped = sum(int(np.sum((y < lo) | (y > hi))) for y in map(np.asarray, curves))
    return lo, hi, clipped


def _zoom_to_trend(fig: go.Figure, curves: list, skip: int, level) -> None:
    """Set the trend range when it clips something; curves no longer than the
    smoothing window keep the full range."""
    if all(len(y) <= skip for y in curves):
        return
    lo, hi, clipped = trend_range(curves, skip, level)
    if not clipped:
        return
    total = sum(len(y) for y in curves)
    fig.update_yaxes(range=[lo, hi])
    fig.update_layout(title_subtitle_text=(
        f"y zoomed to the trend after the first {skip} positions: {clipped} of {total} values "
        "outside "
        "(e.g. the start transient) are clipped; autoscale shows all"), margin_t=90)


# -- passkey and bench sweeps ----------------------------------------------------

def _check_row_keys(rows, keys, what: str) -> list[dict]:
    rows = list(rows)
    if not rows:
        raise ValueError(f"{what} rows are empty: allowed a non-empty list of dicts")
    for k, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{what} row {k} is {type(row).__name__}: allowed dict")
        missing = [key for key in keys if key not in row]
        if missing:
            raise ValueError(f"{what} row {k} lacks {missing}: allowed rows with {list(keys)}")
    return rows


def _methods_in(rows) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


def _accuracy_grid(rows, lengths, depths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[depth, length]`` accuracy, sample count and samples whose layout
    cut the needle (:func:`mesa_viz.passkey.needle_cuts`: the row's field, or
    worked out from its params for older rows)."""
    hits, counts, cut = defaultdict(float), defaultdict(int), defaultdict(int)
    for r in rows:
        hits[r["length"], r["depth"]] += bool(r["correct"])
        counts[r["length"], r["depth"]] += 1
        cut[r["length"], r["depth"]] += bool(needle_cuts(r))
    acc = np.full((len(depths), len(lengths)), np.nan)
    n = np.zeros_like(acc, dtype=int)
    k = np.zeros_like(n)
    for i, d in enumerate(depths):
        for j, L in enumerate(lengths):
            if counts[L, d]:
                acc[i, j], n[i, j] = hits[L, d] / counts[L, d], counts[L, d]
                k[i, j] = cut[L, d]
    return acc, n, k


def _accuracy_text(acc: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """Cell labels: the accuracy, with a pair of scissors where a needle was cut."""
    text = [["" if np.isnan(a) else f"{a:.0%}" + (" ✂" if c else "") for a, c in zip(ra, rc)]
            for ra, rc in zip(acc, cut)]
    return np.array(text, dtype=object)


def passkey_heatmap(rows, title: str | None = None, cols: int | None = None,
                    train_length: int | None = None) -> go.Figure:
    """Passkey accuracy, depth x length, one subplot per method.

    ``rows``: dicts with at least ``method, length, depth, correct``.  Cells
    show the accuracy, hover adds the sample count; a cell where rows say the
    layout cut the needle (``needle_cuts``, or worked out from ``params`` and
    ``needle_span``: a Mesa chunk boundary inside it) carries ✂ and hover
    says in how many samples.  ``train_length`` marks, in every subplot, the
    boundary between lengths ``<= T`` and ``> T``.
    """
    rows = _check_row_keys(rows, ("method", "length", "depth", "correct"), "passkey")
    methods = _methods_in(rows)
    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    cols = cols or min(3, len(methods))
    nrows = math.ceil(len(methods) / cols)
    grid = _subplot_grid(nrows, row_px=250)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=[str(m) for m in methods],
                        horizontal_spacing=0.05, vertical_spacing=grid["vertical_spacing"])
    for k, m in enumerate(methods):
        acc, n, cut = _accuracy_grid([r for r in rows if r["method"] == m], lengths, depths)
        fig.add_trace(go.Heatmap(
            z=acc, x=[str(L) for L in lengths], y=[f"{d:g}" for d in depths], name=str(m),
            coloraxis="coloraxis", customdata=np.stack([n, cut], axis=-1),
            text=_accuracy_text(acc, cut), texttemplate="%{text}",
            hovertemplate=f"{m}<br>length=%{{x}}<br>depth=%{{y}}<br>accuracy=%{{z:.0%}} "
                          "(n=%{customdata[0]})<br>needle cut by a chunk boundary: "
                          "%{customdata[1]} of %{customdata[0]}<extra></extra>"),
            row=k // cols + 1, col=k % cols + 1)
    fig.update_xaxes(type="category", tickangle=0)
    fig.update_yaxes(type="category")
    _outer_axis_titles(fig, len(methods), cols, "length (tokens)", "depth")
    if train_length is not None:
        T = _positive(train_length, "train_length")
        for k in range(len(methods)):
            mark(fig, category_boundary(lengths, T), name="train_length", label=f"T={T}",
                 row=k // cols + 1, col=k % cols + 1, label_at=0.98)
    fig.update_layout(coloraxis=dict(colorscale="RdYlGn", cmin=0, cmax=1,
                                     colorbar=dict(title="accuracy")),
                      title=title or "passkey retrieval accuracy", height=grid["height"],
                      margin=grid["margin"])
    return fig


def _subplot_grid(nrows: int, row_px: int, gap_px: int = 95) -> dict:
    """Pixel-based spacing for ``nrows`` subplot rows: a gap between rows that
    holds the upper row's tick labels and axis title plus the lower row's
    subplot title, so none overlap at the default height."""
    margin = dict(t=90, b=70)
    plot_px = nrows * row_px + (nrows - 1) * gap_px
    spacing = gap_px / plot_px if nrows > 1 else 0.0
    return dict(height=plot_px + margin["t"] + margin["b"], vertical_spacing=spacing,
                margin=margin)


def _outer_axis_titles(fig: go.Figure, n: int, cols: int, x_title: str, y_title: str) -> None:
    """Axis titles only on the bottom subplot of each column and the first column."""
    for k in range(n):
        row, col = k // cols + 1, k % cols + 1
        if k + cols >= n:
            fig.update_xaxes(title_text=x_title, row=row, col=col)
        if col == 1:
            fig.update_yaxes(title_text=y_title, row=row, col=col)


def _length_ticks(lengths, most: int = 12) -> dict:
    """Ticks at the measured lengths (when there are few), not at 2, 3, 5 x 10^k."""
    lengths = sorted(set(lengths))
    if not 1 < len(lengths) <= most:
        return {}
    return dict(tickvals=lengths, ticktext=[str(L) for L in lengths])


def passkey_accuracy_lines(rows, train_length: int | None = None, title: str | None = None,
                           log_x: bool = True) -> go.Figure:
    """Passkey accuracy against length, one line per method (all depths pooled),
    with 95 % Wilson intervals as error bars and the sample count in the hover.

    ``log_x``: log length axis.  ``train_length`` is marked where it lies
    inside the lengths measured (else noted at the plot's edge).
    """
    rows = _check_row_keys(rows, ("method", "length", "correct"), "passkey")
    fig = go.Figure()
    for m in _methods_in(rows):
        by_len = defaultdict(list)
        for r in rows:
            if r["method"] == m:
                by_len[r["length"]].append(bool(r["correct"]))
        lengths = sorted(by_len)
        hits = [sum(by_len[L]) for L in lengths]
        n = [len(by_len[L]) for L in lengths]
        acc = np.array(hits) / np.array(n)
        ci = np.array([wilson_interval(h, k) for h, k in zip(hits, n)])
        fig.add_trace(go.Scatter(
            x=lengths, y=acc, name=str(m), mode="lines+markers", line=dict(color=method_color(m)),
            error_y=dict(type="data", symmetric=False, array=ci[:, 1] - acc,
                         arrayminus=acc - ci[:, 0], thickness=1, width=3),
            customdata=np.stack([hits, n, ci[:, 0], ci[:, 1]], axis=1),
            hovertemplate=f"{m}<br>length=%{{x}}<br>accuracy=%{{y:.0%}} "
                          "(%{customdata[0]}/%{customdata[1]})<br>95% CI "
                          "[%{customdata[2]:.0%}, %{customdata[3]:.0%}]<extra></extra>"))
    fig.update_xaxes(title_text="length (tokens)", type="log" if log_x else "linear",
                     **_length_ticks(r["length"] for r in rows))
    fig.update_yaxes(title_text="accuracy (95% Wilson interval)", range=[-0.05, 1.05],
                     tickformat=".0%")
    fig.update_layout(title=title or "passkey accuracy against length", height=400)
    if train_length is not None:
        mark(fig, _positive(train_length, "train_length"), name="train_length",
             label=f"T={train_length}", label_at=0.02)
    return fig


def _num(v):
    return None if v is None else float(v)


def bench_figure(rows, title: str | None = None) -> go.Figure:
    """Peak memory (bars grouped by length, one colour per method), prefill time
    and decode time per token (lines), like the paper's memory/latency figure.

    ``rows``: dicts with ``method, length, prefill_s, peak_mem_bytes,
    decode_ms_per_token`` and optionally ``oom: true`` (measurements null) with
    ``predicted_mem_bytes``; OOM rows are drawn as labelled "OOM" markers (at
    the predicted memory, else at 0) in every panel.  Rows without a method
    (the machine line), of another ``kind`` than ``"point"`` and ``skipped``
    rows are left out.
    """
    rows = [r for r in rows if not isinstance(r, dict)
            or (r.get("kind", "point") == "point" and r.get("method") is not None)]
    rows = _check_row_keys(rows, ("method", "length"), "bench")
    rows = [r for r in rows if not r.get("skipped")]
    if not rows:
        raise ValueError("every bench row is skipped: allowed at least one measured or OOM row")
    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        "peak memory (GiB)", "prefill time (s)", "decode time (ms/token)"),
        horizontal_spacing=0.08)
    lengths = sorted({r["length"] for r in rows})
    for m in _methods_in(rows):
        mine = sorted((r for r in rows if r["method"] == m), key=lambda r: r["length"])
        _bench_method(fig, str(m), mine)
    fig.update_xaxes(title_text="length (tokens)")
    fig.update_xaxes(type="category", categoryorder="array",
                     categoryarray=[str(L) for L in lengths], row=1, col=1)
    for col in (2, 3):
        fig.update_xaxes(type="log", row=1, col=col, **_length_ticks(lengths))
    fig.update_layout(barmode="group", title=title or "memory and latency against length",
                      height=470, margin=dict(t=90, b=130),
                      legend=dict(orientation="h", y=-0.3, yanchor="top", x=0))
    return fig


def _bench_method(fig: go.Figure, m: str, rows: list[dict]) -> None:
    color = method_color(m)
    ok = [r for r in rows if not r.get("oom")]
    oom = [r for r in rows if r.get("oom")]
    gib = 2.0 ** 30
    mem = [None if r.get("peak_mem_bytes") is None else r["peak_mem_bytes"] / gib for r in ok]
    fig.add_trace(go.Bar(x=[str(r["length"]) for r in ok], y=mem, name=m, legendgroup=m,
                         marker_color=color,
                         hovertemplate=m + "<br>length=%{x}<br>%{y:.3f} GiB<extra></extra>"),
                  row=1, col=1)
    for col, key in ((2, "prefill_s"), (3, "decode_ms_per_token")):
        fig.add_trace(go.Scatter(x=[r["length"] for r in ok], y=[_num(r.get(key)) for r in ok],
                                 name=m, legendgroup=m, showlegend=False, mode="lines+markers",
                                 line=dict(color=color),
                                 hovertemplate=m + "<br>length=%{x}<br>%{y:.4g}<extra></extra>"),
                      row=1, col=col)
    if oom:
        pred = [r.get("predicted_mem_bytes") for r in oom]
        fig.add_trace(go.Scatter(
            x=[str(r["length"]) for r in oom],
            y=[0 if p is None else p / gib for p in pred], name=f"{m} OOM", legendgroup=m,
            mode="markers+text", text=["OOM"] * len(oom), textposition="top center",
            textfont=dict(color=color, size=13, family="sans-serif"), cliponaxis=False,
            marker=dict(symbol="x-thin", size=12, color=color, line=dict(width=2, color=color)),
            showlegend=False,
            hovertemplate=m + "<br>length=%{x}<br>out of memory<br>predicted %{y:.2f} GiB"
                              "<extra></extra>"), row=1, col=1)


# -- output ----------------------------------------------------------------------

def load_rows(rows_or_path) -> list[dict]:
    """Result rows from a list of dicts or a ``.jsonl`` / ``.json`` / ``.csv`` file
    (CSV cells parsed as None, bool, int, float or text)."""
    if not isinstance(rows_or_path, (str, Path)):
        return list(rows_or_path)
    path = Path(rows_or_path)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".json":
        return list(json.loads(path.read_text()))
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [{k: _csv_value(v) for k, v in row.items()} for row in csv.DictReader(f)]
    raise ValueError(f"{path}: allowed a .jsonl, .json or .csv file")


def _csv_value(text: str):
    if text in ("", "None", "null"):
        return None
    if text in ("True", "true", "False", "false"):
        return text in ("True", "true")
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def save_html(fig_or_figs, path, title: str = "mesa_viz report") -> Path:
    """Write one self-contained offline HTML page (plotly.js inlined once).

    ``fig_or_figs``: a Figure, or a list of Figures and HTML strings (section
    headings, paragraphs) in page order.  Returns the path written.
    """
    items = [fig_or_figs] if isinstance(fig_or_figs, go.Figure) else list(fig_or_figs)
    if not items:
        raise ValueError("fig_or_figs is empty: allowed a Figure or a list of Figures/HTML strings")
    parts, first = [], True
    for k, item in enumerate(items):
        if isinstance(item, go.Figure):
            parts.append(item.to_html(full_html=False, include_plotlyjs=first,
                                      div_id=f"fig{k}", config={"displaylogo": False}))
            first = False
        elif isinstance(item, str):
            parts.append(item)
        else:
            raise ValueError(f"fig_or_figs[{k}] is {type(item).__name__}: allowed "
                             "plotly Figure or str (HTML)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_PAGE.format(title=html.escape(title), body="\n".join(parts)),
                    encoding="utf-8")
    log.info("wrote %s (%d items)", path, len(items))
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}}
h1,h2{{font-weight:500}} .note{{color:#555}}</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""


# == theory: the paper's constructions run (mesa_viz.theory; issue 14) =============

__all__ += ["theorem_figure", "recovered_position_figure"]

#: NoPE and the plain relative PE have no method entry; the weave PEs keep theirs.
_THEORY_COLORS = {"nope": "#7f7f7f", "relative": method_color("origin")}

def _check_curves(curves: dict, t, what: str) -> np.ndarray:
    """The shared x-axis ``t [n]`` (default ``1..n``), checked against every ``[n]`` curve."""
    if not curves:
        raise ValueError(f"{what} is empty: allowed a dict name -> [t] array")
    n = len(np.asarray(next(iter(curves.values()))))
    x = np.arange(1, n + 1) if t is None else np.asarray(t)
    for name, y in curves.items():
        if np.asarray(y).shape != x.shape:
            raise ValueError(f"{what}[{name!r}] has shape {np.asarray(y).shape} but t has "
                             f"{x.shape}: allowed equal 1-d lengths")
    return x


def _theory_traces(fig: go.Figure, curves: dict, x: np.ndarray, closed: bool = False) -> None:
    for name, y in curves.items():
        y = np.asarray(y, dtype=float)
        ok = np.isfinite(y)                     # closed forms hold on a prefix of t only
        xs, ys = _envelope(x[ok], y[ok], MAX_POINTS)
        fig.add_trace(go.Scatter(
            x=xs, y=ys, name=f"{name} (closed form)" if closed else str(name), mode="lines",
            legendgroup=str(name), showlegend=not closed, opacity=0.6 if closed else 1.0,
            line=dict(color=_THEORY_COLORS.get(name, method_color(name)),
                      width=3 if closed or name == "nope" else 1.6,   # NoPE under the relative PE
                      dash="dot" if closed else None),
            hovertemplate="t=%{x}<br>%{y:.6g}<extra>%{fullData.name}</extra>"))


def theorem_figure(values_by_pe: dict, M: int, H: float, t=None, closed_forms: dict | None = None,
                   log_x: bool = True, title: str | None = None) -> go.Figure:
    """The construction's value at the threshold dimension against ``t`` (keys
    seen = position + 1), one line per PE, with ``H`` (horizontal) and ``M``
    (vertical) marked: Theorems 3.1-3.3 and Corollary 4.1 as curves.

    ``values_by_pe``: name -> ``[t]``; ``closed_forms``: name -> ``[t]`` drawn
    dotted (NaN where no closed form is derived).  The y-axis spans
    ``[H - 1, H + min(M - 1, 2.5)]`` (every value lies in ``[H - 1, H - 1 + M]``).
    ``H`` and ``M`` are marked with :func:`mark` (``M`` beyond the inputs' ``t``
    is noted at the plot's edge).
    """
    x = _check_curves(values_by_pe, t, "values_by_pe")
    if not (isinstance(M, (int, np.integer)) and M >= 1):
        raise ValueError(f"M={M!r}: allowed an integer >= 1")
    if not np.isfinite(H):
        raise ValueError(f"H={H!r}: allowed a finite number")
    fig = go.Figure()
    _theory_traces(fig, values_by_pe, x)
    if closed_forms:
        _check_curves(closed_forms, x, "closed_forms")
        _theory_traces(fig, closed_forms, x, closed=True)
    fig.update_xaxes(title_text="t (keys seen = position + 1)", type="log" if log_x else "linear")
    fig.update_yaxes(title_text="o_t at the threshold dimension",
                     range=[H - 1.05, H + min(M - 1, 2.5) + 0.05])
    mark(fig, float(H), axis="y", name="H", label=f"H = {float(H):.3g}", color="red", dash="dot",
         label_at=0.99)
    mark(fig, int(M), name="M", label=f"M = {int(M)}")
    fig.update_layout(title=dict(text=title or "the constructions of Appendix E against t",
                                 font=dict(size=14)), height=370, margin=dict(t=45, b=45),
                      legend_title_text="dotted: closed form" if closed_forms else None)
    return fig


def recovered_position_figure(positions_by_pe: dict, t=None, log_x: bool = True,
                              title: str | None = None) -> go.Figure:
    """The position layer 1 hands to layer 2 (``H^(1)`` dim 3, Equ.33/46) against
    ``t``, one line per PE, beside the true ``t`` (dashed)."""
    x = _check_curves(positions_by_pe, t, "positions_by_pe")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=x, name="t (exact recovery)", mode="lines",
                             line=dict(color="#bbbbbb", dash="dash")))
    _theory_traces(fig, positions_by_pe, x)
    axis = "log" if log_x else "linear"
    fig.update_xaxes(title_text="t (keys seen = position + 1)", type=axis)
    fig.update_yaxes(title_text="recovered position p_t", type=axis)
    fig.update_layout(title=title or "layer 1: the position recovered from o_t (Equ.32/45)",
                      height=360, legend=dict(orientation="h", y=-0.25))
    return fig


# == real-model views: hidden heat maps, crossing vs failure (issue 14) ============

__all__ += ["hidden_heatmap", "crossing_scatter"]

#: Red above 0, blue below, as the paper's Figures 11-16.
_DIVERGING = "RdBu_r"


def _check_views(views) -> list:
    """The views (``thresholds.HiddenView``), checked to share layers, dims,
    windows, pooling and ``T``."""
    views = list(views.values()) if isinstance(views, dict) else list(views)
    if not views:
        raise ValueError("views is empty: allowed thresholds.hidden_view results")
    first = views[0]
    for v in views[1:]:
        keys = ("layers", "dims", "windows", "pool", "train_length", "relative_to")
        differ = [k for k in keys if getattr(v, k) != getattr(first, k)]
        if differ:
            raise ValueError(f"views of {first.method!r} and {v.method!r} differ in {differ}: "
                             "allowed views made alike from traces of one input")
    return views


def _color_limit(views, li: int, percentile: float) -> float:
    """The ``percentile`` of ``|value|`` of layer row ``li`` over every view
    and window (colours saturate beyond it, so one outlier dim does not wash
    the rest out)."""
    a = np.concatenate([np.abs(w[li]).ravel() for v in views for w in v.values])
    a = a[np.isfinite(a)]
    return float(np.percentile(a, percentile)) if a.size and a.max() > 0 else 1.0


def hidden_heatmap(views, title: str | None = None, percentile: float = 99.0,
                   row_px: int | None = None) -> go.Figure:
    """The paper's Figures 11-16: hidden-state values, dims x positions, one
    row of heat maps per hidden layer, one column per (method, window), methods
    side by side (origin beside a weave method).

    ``views``: ``thresholds.hidden_view`` results (list, or dict method ->
    view) made alike.  Colour: red > 0 > blue (the paper's), one scale per
    layer shared by every method and window, saturating at the
    ``percentile`` of ``|value|`` (hover gives exact values).  ``T`` is marked
    in every panel whose window holds it.  With ``relative_to`` views the
    values are minus that position's (pooled) value.
    """
    views = _check_views(views)
    v0 = views[0]
    nl, nw = len(v0.layers), len(v0.windows)
    widths = [b - a for a, b in v0.windows] * len(views)
    row_px = row_px or max(70, 7 * len(v0.dims) + 20)
    grid = _subplot_grid(nl, row_px=row_px, gap_px=14)
    fig = make_subplots(rows=nl, cols=nw * len(views), shared_yaxes=True, shared_xaxes=True,
                        column_widths=[w / sum(widths) for w in widths],
                        horizontal_spacing=min(0.02, 0.3 / max(1, nw * len(views))),
                        vertical_spacing=grid["vertical_spacing"],
                        subplot_titles=[f"{v.method}: {a}-{b - 1}" for v in views
                                        for a, b in v.windows])
    dims = [str(d) for d in v0.dims]
    for li, layer in enumerate(v0.layers):
        limit, axis = _color_limit(views, li, percentile), f"coloraxis{li + 1}"
        for k, v in enumerate(views):
            for w, edges in enumerate(v.edges):
                fig.add_trace(go.Heatmap(
                    z=v.values[w][li], x=edges, y=dims, coloraxis=axis, name=v.method,
                    hovertemplate=f"{html.escape(v.method)}, layer {layer}<br>dim %{{y}}<br>"
                                  f"position %{{x:.0f}} (mean of {v.pool})<br>"
                                  "value %{z:.4g}<extra></extra>"),
                    row=li + 1, col=k * nw + w + 1)
        _layer_colorbar(fig, li, layer, limit, axis)
    fig.update_yaxes(type="category", showticklabels=True)
    for li, layer in enumerate(v0.layers):
        fig.update_yaxes(title_text=f"layer {layer}<br>dim", row=li + 1, col=1)
    fig.update_xaxes(title_text=f"position ({v0.pool} a column)" if v0.pool > 1 else "position",
                     row=nl)
    _mark_train_length(fig, v0, nl, nw * len(views))
    what = _relative_note(views)
    fig.update_layout(
        title=title or f"hidden states around and past T={v0.train_length}",
        title_subtitle_text=f"colour: {what}, red > 0 > blue, per layer saturating at the "
                            f"{percentile:g}th percentile of |value|",
        height=grid["height"] + 20, margin=dict(grid["margin"], t=110, r=90))
    return fig


def _relative_note(views) -> str:
    """What the colour shows: the value, or minus whose value at which position."""
    at = views[0].relative_to
    if at is None:
        return "value"
    refs = {v.reference for v in views}
    whose = f"{refs.pop()}'s" if len(refs) == 1 else "each method's own"
    return f"value minus {whose} value at {at}"


def _layer_colorbar(fig: go.Figure, li: int, layer: int, limit: float, axis: str) -> None:
    """Layer row ``li``'s colour axis, its bar beside the row."""
    lo, hi = fig.get_subplot(li + 1, 1).yaxis.domain
    fig.update_layout({axis: dict(
        colorscale=_DIVERGING, cmin=-limit, cmax=limit, cmid=0,
        colorbar=dict(y=(lo + hi) / 2, len=(hi - lo) * 1.05, thickness=10, x=1.01,
                      title=dict(text=f"L{layer}", side="right"), tickfont=dict(size=9)))})


def _mark_train_length(fig: go.Figure, view, rows: int, cols: int) -> None:
    """``T`` in every panel whose window holds it (labelled in the top row)."""
    T = view.train_length
    for c in range(cols):
        a, b = view.windows[c % len(view.windows)]
        if a <= T <= b:
            for r in range(rows):
                mark(fig, T, name="train_length", label=f"T={T}" if r == 0 else None,
                     row=r + 1, col=c + 1, label_at=0.98)


_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star", "pentagon", "hexagon")


def crossing_scatter(rows, x: str = "crossed_fraction", title: str | None = None,
                     subtitle: str | None = None, jitter: float = 0.012) -> go.Figure:
    """Does crossing predict failure?  One point per (method, length): x the
    crossing measure ``x`` (``failure.X_MEASURES``), y passkey accuracy (95 %
    Wilson bars) and, in a second panel, perplexity past ``T`` when rows have
    it.  Colour by method, symbol by length; hover gives every measure.

    ``rows``: ``failure.join`` rows.  ``jitter``: points are offset on x by up
    to ``±jitter`` per method so equal values stay visible (hover: exact).
    """
    from .failure import X_MEASURES
    if x not in X_MEASURES:
        raise ValueError(f"x={x!r}: allowed one of {list(X_MEASURES)}")
    rows = _check_row_keys(rows, ("method", "length", x, "crossed", "pairs"), "crossing")
    panels = [(k, t) for k, t in (("accuracy", "passkey accuracy"), ("ppl_past_t", "ppl past T"))
              if any(r.get(k) is not None for r in rows)]
    if not panels:
        raise ValueError("no row has accuracy or ppl_past_t: allowed rows joined with passkey "
                         "or perplexity results (failure.join)")
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for _, t in panels],
                        horizontal_spacing=0.1)
    methods, lengths = _methods_in(rows), sorted({int(r["length"]) for r in rows})
    for k, m in enumerate(methods):
        shift = jitter * (2 * k / max(1, len(methods) - 1) - 1) if len(methods) > 1 else 0.0
        mine = [r for r in rows if r["method"] == m]
        for col, (key, _) in enumerate(panels, start=1):
            pts = [r for r in mine if r.get(key) is not None]
            if pts:
                fig.add_trace(_crossing_points(m, pts, x, key, shift, lengths, col == 1),
                              row=1, col=col)
    label = x.replace("_", " ")
    fig.update_xaxes(title_text=f"{label} (threshold pairs past T)")
    if panels[0][0] == "accuracy":
        fig.update_yaxes(title_text="accuracy (95% Wilson interval)", range=[-0.05, 1.05],
                         tickformat=".0%", row=1, col=1)
    if panels[-1][0] == "ppl_past_t":
        fig.update_yaxes(title_text="perplexity past T", type="log", row=1, col=len(panels))
    symbols = ", ".join(f"{_SYMBOLS[i % len(_SYMBOLS)]} {L}" for i, L in enumerate(lengths))
    fig.update_layout(title=title or "does crossing predict failure?", height=460,
                      title_subtitle_text=(subtitle + "<br>" if subtitle else "")
                      + f"symbol = length: {symbols}; x offset ±{jitter:g} per method",
                      margin=dict(t=135 if subtitle else 115))
    return fig


def _crossing_points(m: str, pts: list, x: str, key: str, shift: float, lengths: list,
                     legend: bool) -> go.Scatter:
    xs = [float(r[x]) + shift for r in pts]
    ys = [float(r[key]) for r in pts]
    error = None
    if key == "accuracy":
        ci = np.array([wilson_interval(r["passkey_correct"], r["passkey_n"]) for r in pts])
        error = dict(type="data", symmetric=False, array=ci[:, 1] - ys, arrayminus=ys - ci[:, 0],
                     thickness=1, width=3)
    hover = [_crossing_hover(r, x) for r in pts]
    return go.Scatter(
        x=xs, y=ys, mode="markers", name=str(m), legendgroup=str(m), showlegend=legend,
        marker=dict(color=method_color(m), size=11, line=dict(width=1, color="#333"),
                    symbol=[_SYMBOLS[lengths.index(int(r["length"])) % len(_SYMBOLS)]
                            for r in pts]),
        error_y=error, text=hover, hovertemplate="%{text}<extra></extra>")


def _crossing_hover(r: dict, x: str) -> str:
    first = "none" if r.get("first_crossing") is None else r["first_crossing"]
    lines = [f"<b>{html.escape(str(r['method']))}</b>, {r['length']} tokens",
             f"{x.replace('_', ' ')}: {float(r[x]):.3f}",
             f"pairs crossed past T: {r['crossed']} / {r['pairs']} (first at {first})",
             f"still crossed at the end: {r.get('crossed_at_end', '?')}, turned back: "
             f"{r.get('turned_back', '?')}",
             f"sum of past fractions: {float(r.get('past_fraction_sum', math.nan)):.3f}"]
    if r.get("accuracy") is not None:
        lines.append(f"passkey: {r['accuracy']:.0%} ({r['passkey_correct']}/{r['passkey_n']})")
    if r.get("ppl_past_t") is not None:
        lines.append(f"ppl past T: {r['ppl_past_t']:.3f} ({r['ppl_tokens']} tokens)")
    return "<br>".join(lines)
# == why it fails: drill-down and the whole attention map (mesa_viz.explain; issue 12) ======

__all__ += ["needle_mass_figure", "retrieval_heads_figure", "distance_profile_figure",
            "explanation_figures", "attention_map_figure", "attention_maps_figure"]

_DIVERGING = "RdBu_r"
#: A legend under the plot, clear of colour bars.
_BELOW = dict(orientation="h", y=-0.12, x=0)


def needle_mass_figure(mass, names, title: str | None = None) -> go.Figure:
    """Attention on the needle per layer and head, ``mass [method, layer, head]``,
    one heatmap per method (``names``) and the first minus the second."""
    mass = np.asarray(mass, dtype=float)
    if mass.ndim != 3 or len(names) != mass.shape[0] or mass.shape[0] < 1:
        raise ValueError(f"mass has shape {mass.shape} for names {list(names)}: allowed "
                         "[method, layer, head] with one name per method")
    diff = mass.shape[0] >= 2
    titles = [str(n) for n in names] + ([f"{names[0]} − {names[1]}"] if diff else [])
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.06)
    layers, heads = np.arange(mass.shape[1]), np.arange(mass.shape[2])
    hover = "layer %{y}, head %{x}<br>needle mass %{z:.3f}<extra>%{fullData.name}</extra>"
    for k, name in enumerate(names):
        fig.add_trace(go.Heatmap(z=mass[k], x=heads, y=layers, name=str(name),
                                 coloraxis="coloraxis", hovertemplate=hover), row=1, col=k + 1)
    if diff:
        d = mass[0] - mass[1]
        fig.add_trace(go.Heatmap(z=d, x=heads, y=layers, name="difference", coloraxis="coloraxis2",
                                 hovertemplate=hover), row=1, col=len(titles))
    top = float(np.abs(mass[0] - mass[1]).max()) if diff else 1.0
    fig.update_layout(
        coloraxis=dict(colorscale="Viridis", cmin=0, cmax=max(1e-9, float(mass.max())),
                       colorbar=dict(title="needle<br>mass", x=1.0)),
        coloraxis2=dict(colorscale=_DIVERGING, cmin=-max(top, 1e-9), cmax=max(top, 1e-9),
                        colorbar=dict(title="difference", x=1.08)),
        title=title or "attention of the answer step on the needle, per layer and head",
        height=max(320, 140 + 14 * mass.shape[1]))
    fig.update_xaxes(title_text="head", dtick=1)
    fig.update_yaxes(autorange="reversed", dtick=1 if mass.shape[1] <= 16 else None)
    fig.update_yaxes(title_text="layer", col=1)
    return fig


def retrieval_heads_figure(heads: list, names, title: str | None = None) -> go.Figure:
    """What the heads that carry the needle do under each method (``names``):
    bars of their mass on the needle, on the first tokens (sinks) and at
    distance ``>= T``.  ``heads``: ``Explanation.retrieval_heads()`` dicts
    (``layer, head, needle, sinks, far``: method -> mass)."""
    heads = _check_row_keys(heads, ("layer", "head", "needle", "sinks", "far"), "heads")
    labels = [f"L{h['layer']}H{h['head']}" for h in heads]
    parts = (("needle", "on the needle"), ("sinks", "on the first tokens (sinks)"),
             ("far", "at distance ≥ T"))
    fig = make_subplots(rows=len(parts), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[p[1] for p in parts])
    for r, (key, _) in enumerate(parts):
        for name in names:
            fig.add_trace(go.Bar(x=labels, y=[h[key][name] for h in heads], name=str(name),
                                 marker_color=method_color(name), legendgroup=str(name),
                                 showlegend=r == 0,
                                 hovertemplate=f"%{{x}}: %{{y:.3f}} {key}<extra>{name}</extra>"),
                          row=r + 1, col=1)
        fig.update_yaxes(title_text="mass", range=[0, 1], row=r + 1, col=1)
    fig.update_xaxes(type="category", title_text="layer, head (most needle mass first)",
                     row=len(parts), col=1)
    fig.update_layout(barmode="group", height=560, title=title or
                      f"the heads that carry the needle under {names[0]}, under each method")
    return fig


def _distance_max(a: np.ndarray, rows: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``[q_row, bin]`` largest value of ``a [q_row, k_pos]`` by distance bin (NaN if none)."""
    d = rows[:, None] - np.arange(a.shape[1])[None, :]
    which = np.searchsorted(edges, d, side="right") - 1
    ok = (d >= 0) & (which >= 0) & (which < len(edges) - 1) & np.isfinite(a)
    out = np.full((a.shape[0], len(edges) - 1), -np.inf)
    for r in range(a.shape[0]):
        np.maximum.at(out[r], which[r, ok[r]], a[r, ok[r]])
    return np.where(np.isfinite(out), out, np.nan)


def distance_profile_figure(rows: dict, query_row: int, stat: str = "max", bins=24,
                            train_length: int | None = None, y_title: str | None = None,
                            title: str | None = None, log_x: bool = True) -> go.Figure:
    """One line per name of ``rows`` (name -> ``[k_pos]`` values of the query at
    ``query_row``) against distance ``q - k`` in log-spaced bins: the bin's
    largest value (``stat="max"``, e.g. attention logits: LM-Infinite's
    logit explosion) or its sum (``"sum"``, e.g. entropy terms ``-p log p``).
    ``train_length`` is a bin edge, marked, with the bins past it shaded."""
    if stat not in ("max", "sum"):
        raise ValueError(f"stat={stat!r}: allowed 'max' or 'sum'")
    if not rows:
        raise ValueError("rows is empty: allowed a dict name -> [k_pos] values")
    a = np.stack([_check_attn(v)[0] for v in rows.values()])
    q = np.full(a.shape[0], int(query_row))
    if not 0 <= query_row < a.shape[1]:
        raise ValueError(f"query_row={query_row}: allowed 0..{a.shape[1] - 1}")
    T = None if train_length is None else _positive(train_length, "train_length")
    edges = _distance_edges(bins, int(query_row), T)
    values = _distance_max(a, q, edges) if stat == "max" else _distance_mass(
        np.nan_to_num(a, neginf=0.0), q, edges)
    x = _bin_centres(edges, log_x)
    fig = go.Figure([go.Scatter(x=x, y=v, name=str(name), mode="lines+markers",
                                line_color=method_color(name),
                                customdata=np.stack([edges[:-1], edges[1:]], axis=1),
                                hovertemplate="d in [%{customdata[0]}, %{customdata[1]})<br>"
                                              "%{y:.3g}<extra>%{fullData.name}</extra>")
                     for name, v in zip(rows, values)])
    fig.update_xaxes(type="log" if log_x else "linear",
                     title_text="relative distance q - k (middle of bin)")
    fig.update_yaxes(title_text=y_title or ("largest value in bin" if stat == "max"
                                            else "sum in bin"))
    fig.update_layout(title=title or f"{stat} by distance", height=380)
    if T is not None:
        mark(fig, T, name="train_length", label=f"T={T}")
        far = edges[:-1] >= T
        if far.any():
            mark(fig, T, to=float(x[far].max()), name="distance >= T", color="#d62728",
                 fill_opacity=0.08)
    return fig


def explanation_figures(exp, top: int = 8) -> dict:
    """The drill-down of an ``Explanation`` (``mesa_viz.explain``) as figures:
    ``needle`` (mass per layer and head, both methods and their difference),
    ``heads`` (the heads that carry the needle under the method that answers,
    under each method), ``rows`` (those heads' attention rows, the needle
    shaded), ``distance`` (mass by distance), ``logits`` (largest logit by
    distance) and ``entropy`` (entropy terms by distance)."""
    names, q, T = list(exp.methods), int(exp.query_row), int(exp.train_length)
    a, _ = exp.order()
    heads = exp.retrieval_heads(top)
    tag = f"{exp.seq_len} tokens, T={T}, answer step q={q}"
    needle = {f"needle {k}" if len(exp.needle) > 1 else "needle": tuple(s)
              for k, s in enumerate(exp.needle)}
    best = heads[0]
    rows = [exp.attention[k, best["layer"], best["head"]] for k in range(len(names))]
    p = exp.attention.astype(float)
    ent = -(p * np.log(np.where(p > 0, p, 1.0)))
    return {
        "needle": needle_mass_figure(exp.needle_mass(), names, title=f"attention on the needle "
                                     f"per layer and head ({tag})"),
        "heads": retrieval_heads_figure(heads, [names[a]] + [m for m in names if m != names[a]]),
        "rows": attention_heatmap(np.stack(rows), query_rows=names, marks=needle, train_length=T,
                                  query_positions=np.full(len(names), q), row_title="method",
                                  title=f"L{best['layer']}H{best['head']} (carries the needle "
                                        f"under {names[a]}): attention of the answer step"),
        "distance": attention_by_distance(
            exp.attention.mean(axis=(1, 2)), [q] * len(names), names=names, train_length=T,
            title=f"attention mass by distance, mean over layers and heads ({tag})"),
        "logits": distance_profile_figure(
            {m: exp.logits[k].max(axis=(0, 1)) for k, m in enumerate(names)}, q, "max",
            train_length=T, y_title="largest attention logit", title="largest attention logit "
            f"by distance, over layers and heads ({tag})"),
        "entropy": distance_profile_figure(
            {m: ent[k].mean(axis=(0, 1)) for k, m in enumerate(names)}, q, "sum",
            train_length=T, y_title="entropy terms −p log p (nats)",
            title="where the attention entropy comes from, by distance (mean over layers and "
                  "heads; entropy " + ", ".join(f"{m} {e:.2f}" for m, e in
                                                zip(names, exp.entropy().mean(axis=(1, 2))))
                  + " nats)"),
    }


# -- the whole attention map ---------------------------------------------------------------

def _map_z(amap, log_color: bool, floor: float | None) -> tuple[np.ndarray, float]:
    v = np.asarray(amap.values, dtype=float)
    if not log_color:
        return v, 0.0
    lo = floor if floor is not None else max(1e-12, float(v[v > 0].min()) if (v > 0).any() else 1)
    return np.log10(np.maximum(v, lo)), lo


def _map_trace(amap, z: np.ndarray, coloraxis: str, name: str) -> go.Heatmap:
    qe, ke = np.asarray(amap.q_edges), np.asarray(amap.k_edges)
    return go.Heatmap(
        z=z, x=ke - 0.5, y=qe - 0.5, name=name, coloraxis=coloraxis,
        customdata=np.asarray(amap.values, dtype=float),
        hovertemplate="q≈%{y:.0f}, k≈%{x:.0f}<br>" + f"{amap.pool} p=" + "%{customdata:.3g}"
                      "<extra>%{fullData.name}</extra>")


def _mark_map(fig: go.Figure, amap, row: int | None = None, col: int | None = None) -> None:
    """``T`` (queries past it; keys at distance ``T``) and the chunk boundaries."""
    q0, q1, k0, k1 = (int(v) for v in amap.region)
    T = int(amap.train_length)
    if T < q1:
        d0, d1 = max(q0, k0 + T), min(q1 - 1, k1 - 1 + T)
        if d0 <= d1:
            fig.add_trace(go.Scatter(x=[d0 - T, d1 - T], y=[d0, d1], mode="lines",
                                     name="distance = T", showlegend=col in (None, 1),
                                     line=dict(color=MARK_COLOR_ON_DARK, dash="dot", width=1.5),
                                     hoverinfo="skip"), row=row, col=col)
        mark(fig, T - 0.5, axis="y", name="train_length", label=f"q ≥ T={T}", row=row, col=col,
             color=MARK_COLOR_ON_DARK, label_at=0.02)
    starts = [c[0] for c in (amap.chunk_plan or [])[1:]]
    if starts:
        x, y = axis_info(fig, "x", row, col), axis_info(fig, "y", row, col)
        add_marker_items(fig, [marker_items(ax, other, s - 0.5, name="chunk boundary",
                                            color=_CHUNK_LINE, width=1, dash="dot")
                               for s in starts for ax, other in ((x, y.ref), (y, x.ref))])


def _map_axes(fig: go.Figure, amap, row: int | None = None, col: int | None = None) -> None:
    q0, q1, k0, k1 = (int(v) for v in amap.region)
    fig.update_xaxes(range=[k0 - 0.5, k1 - 0.5], title_text="key position k", row=row, col=col)
    fig.update_yaxes(range=[q1 - 0.5, q0 - 0.5], title_text="query position q", row=row, col=col)


def _map_title(amap) -> str:
    q0, q1, k0, k1 = (int(v) for v in amap.region)
    full = [q0, q1, k0, k1] == [0, amap.seq_len, 0, amap.seq_len]
    where = "" if full else f", q [{q0}, {q1}) × k [{k0}, {k1})"
    cells = "x".join(str(s) for s in np.shape(amap.values))
    return f"{amap.method}: layer {amap.layer}, head {amap.head}, {amap.seq_len} tokens{where} " \
           f"({amap.pool} over {cells} cells)"


def attention_map_figure(amap, log_color: bool = True, floor: float | None = None,
                         title: str | None = None) -> go.Figure:
    """One pooled attention map (an ``AttentionMap`` of ``mesa_viz.attention_map``,
    or anything with its fields) as a heatmap: query rows down, keys across,
    each cell over the positions it covers; ``log_color``: ``log10 p`` (from
    ``floor``, default the smallest positive cell).  Marked: queries past
    ``T``, the keys at distance ``T`` (dotted diagonal) and chunk boundaries."""
    z, lo = _map_z(amap, log_color, floor)
    fig = go.Figure(_map_trace(amap, z, "coloraxis", amap.method))
    _map_axes(fig, amap)
    _mark_map(fig, amap)
    fig.update_layout(coloraxis=dict(colorscale="Magma",
                                     colorbar=dict(title="log10 p" if log_color else "p")),
                      title=title or _map_title(amap), height=660, width=680,
                      legend=_BELOW, meta=dict(floor=lo, log_color=log_color))
    return fig


def attention_maps_figure(maps, log_color: bool = True, difference: bool = True,
                          floor: float | None = None, title: str | None = None) -> go.Figure:
    """Pooled maps side by side (the same window and grid; e.g. mesa beside
    origin) on one colour scale, and, with ``difference``, the first minus the
    second (``log10`` ratio with ``log_color``)."""
    maps = list(maps)
    if not maps:
        raise ValueError("maps is empty: allowed one or more AttentionMaps")
    shapes = {(tuple(np.asarray(m.q_edges)), tuple(np.asarray(m.k_edges))) for m in maps}
    if len(shapes) > 1:
        raise ValueError("maps cover different cells: allowed maps of the same seq_len, "
                         "window and grid (zoom them alike)")
    difference = difference and len(maps) >= 2
    lo = floor if floor is not None else min(_map_z(m, log_color, None)[1] for m in maps)
    zs = [_map_z(m, log_color, lo)[0] for m in maps]
    titles = [f"{m.method}, L{m.layer}H{m.head}" for m in maps]
    titles += [f"{maps[0].method} − {maps[1].method}" + (" (log10 ratio)" if log_color else "")] \
        if difference else []
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.07)
    for c, (m, z) in enumerate(zip(maps, zs), start=1):
        fig.add_trace(_map_trace(m, z, "coloraxis", m.method), row=1, col=c)
    if difference:
        d = zs[0] - zs[1]
        fig.add_trace(_map_trace(maps[0], d, "coloraxis2", "difference"), row=1, col=len(titles))
        top = max(1e-9, float(np.abs(d).max()))
    for c in range(1, len(titles) + 1):
        _map_axes(fig, maps[0], row=1, col=c)
        _mark_map(fig, maps[min(c, len(maps)) - 1], row=1, col=c)
    fig.update_yaxes(title_text="", col=2)
    fig.update_layout(
        coloraxis=dict(colorscale="Magma", colorbar=dict(
            title=dict(text="log10 p" if log_color else "p", side="right"), x=1.0, thickness=14)),
        title=title or _map_title(maps[0]).split(":")[0] + " vs " + ", ".join(
            m.method for m in maps[1:]) + ": " + _map_title(maps[0]).split(": ", 1)[1],
        height=560, width=min(920, 440 * len(titles)), legend=_BELOW,   # fits a notebook
        meta=dict(floor=lo, log_color=log_color))
    if difference:
        fig.update_layout(coloraxis2=dict(colorscale=_DIVERGING, cmin=-top, cmax=top,
                                          colorbar=dict(title=dict(text="difference",
                                                                   side="right"),
                                                        x=1.12, thickness=14)))
    return fig
# == long-context evaluation: perplexity by position, task scores (issue 11) ==========

__all__ += ["ppl_by_position", "task_scores"]


def _at_length(rows: list[dict], length, what: str) -> tuple[list[dict], int]:
    """The rows at ``length`` (default the longest there is)."""
    lengths = sorted({r["length"] for r in rows})
    length = lengths[-1] if length is None else length
    if length not in lengths:
        raise ValueError(f"length={length!r}: {what} rows have lengths {lengths}")
    return [r for r in rows if r["length"] == length], int(length)


def _mark_T(fig: go.Figure, T, n: int, cols: int) -> None:
    """``T`` marked on the x axis of the first ``n`` subplots."""
    if T is None:
        return
    T = _positive(T, "train_length")
    for k in range(n):
        mark(fig, T, name="train_length", label=f"T={T}", row=k // cols + 1,
             col=k % cols + 1, label_at=0.98)


def ppl_by_position(rows, train_length: int | None = None, length: int | None = None,
                    title: str | None = None) -> go.Figure:
    """Mean NLL (nats per token) of each position bucket against position, a
    step line per method (flat over its bucket), one subplot per text, ``T``
    marked.

    ``rows``: ``mesa_viz.perplexity`` rows (``method, length, text,
    bucket_start, bucket_end, tokens, nll``); ``length``: which run to draw
    (default the longest); ``train_length``: default the rows' own.
    """
    rows = _check_row_keys(rows, ("method", "length", "text", "bucket_start", "bucket_end",
                                  "tokens", "nll"), "perplexity")
    rows, length = _at_length(rows, length, "perplexity")
    texts = list(dict.fromkeys(r["text"] for r in rows))
    cols = min(2, len(texts))
    fig = make_subplots(rows=math.ceil(len(texts) / cols), cols=cols,
                        subplot_titles=[str(t) for t in texts], horizontal_spacing=0.08)
    for k, text in enumerate(texts):
        for m in _methods_in(rows):
            mine = sorted((r for r in rows if r["text"] == text and r["method"] == m),
                          key=lambda r: r["bucket_start"])
            if mine:
                fig.add_trace(_nll_steps(m, mine, show=k == 0), row=k // cols + 1,
                              col=k % cols + 1)
    fig.update_xaxes(title_text="position (tokens)")
    fig.update_yaxes(title_text="NLL (nats / token)", col=1)
    T = train_length if train_length is not None else rows[0].get("train_length")
    _mark_T(fig, T, len(texts), cols)
    fig.update_layout(title=title or f"negative log-likelihood by position ({length} tokens)",
                      height=420 * math.ceil(len(texts) / cols))
    return fig


def _nll_steps(method: str, rows: list[dict], show: bool) -> go.Scatter:
    """One method's buckets as a step line: flat from each bucket's start to its end."""
    x = [r["bucket_start"] for r in rows] + [rows[-1]["bucket_end"]]
    y = [r["nll"] for r in rows] + [rows[-1]["nll"]]
    info = [[r["bucket_start"], r["bucket_end"], r["tokens"], math.exp(r["nll"])] for r in rows]
    return go.Scatter(
        x=x, y=y, name=str(method), legendgroup=str(method), showlegend=show,
        mode="lines+markers", line=dict(shape="hv", color=method_color(method)),
        customdata=info + [info[-1]],
        hovertemplate=f"{method}<br>positions [%{{customdata[0]}}, %{{customdata[1]}}) "
                      "(%{customdata[2]} tokens)<br>NLL %{y:.4f}, perplexity "
                      "%{customdata[3]:.3g}<extra></extra>")


def task_scores(rows, train_length: int | None = None, title: str | None = None) -> go.Figure:
    """Mean task score against length, one line per method, one subplot per
    task (and one for the mean over tasks), ``T`` marked; the hover gives the
    sample count and, for 0/1 scores, the 95 % Wilson interval.

    ``rows``: one per sample, with ``method, task, length, score`` (0..1).
    """
    rows = _check_row_keys(rows, ("method", "task", "length", "score"), "task")
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    panels = tasks + (["mean over tasks"] if len(tasks) > 1 else [])
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    grid = _subplot_grid(nrows, row_px=260)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=panels, horizontal_spacing=0.06,
                        vertical_spacing=grid["vertical_spacing"])
    methods = _methods_in(rows)
    for k, panel in enumerate(panels):
        for i, m in enumerate(methods):
            mine = [r for r in rows if r["method"] == m and (r["task"] == panel or k == len(tasks))]
            if mine:
                fig.add_trace(_score_line(m, mine, tasks, show=k == 0,
                                          width=_under_width(i, len(methods))),
                              row=k // cols + 1, col=k % cols + 1)
    lengths = sorted({r["length"] for r in rows})
    fig.update_xaxes(type="log", **_length_ticks(lengths))
    fig.update_yaxes(range=[-0.05, 1.05], tickformat=".0%")
    _outer_axis_titles(fig, len(panels), cols, "length (tokens)", "score")
    _mark_T(fig, train_length, len(panels), cols)
    cut = any(needle_cut(r) for r in rows)
    fig.update_layout(title=title or "task score against length" + (
        " (✂: the layout cut a needle of some sample there)" if cut else ""),
        height=grid["height"], margin=grid["margin"])
    return fig


def _under_width(i: int, n: int) -> float:
    """Line width of the ``i``-th of ``n`` methods drawn on one panel: the
    first widest, so methods with the same scores show as nested stripes
    instead of the last one drawn hiding the others (2 px for the last, at
    most 10 for the first)."""
    return 2.0 + (n - 1 - i) * min(2.0, 8.0 / max(1, n - 1))


def _score_line(method: str, rows: list[dict], tasks: list, show: bool,
                width: float = 2.0) -> go.Scatter:
    """Mean score per length (over the rows given, each task weighted
    equally), drawn ``width`` wide; ✂ on a point where the layout cut a
    needle of some sample (:func:`mesa_viz.lm_eval_tasks.needle_cut`), the
    hover says in how many."""
    by = defaultdict(lambda: defaultdict(list))
    cut = defaultdict(list)
    for r in rows:
        by[r["length"]][r["task"]].append(float(r["score"]))
        cut[r["length"]].append(needle_cut(r))
    lengths = sorted(by)
    mean = [float(np.mean([np.mean(v) for v in by[L].values()])) for L in lengths]
    counts = [sum(len(v) for v in by[L].values()) for L in lengths]
    ci = [_binary_interval([s for v in by[L].values() for s in v]) for L in lengths]
    cuts = [_cut_note(cut[L]) for L in lengths]
    cutting = [any(c is True for c in cut[L]) for L in lengths]
    return go.Scatter(
        x=lengths, y=mean, name=str(method), legendgroup=str(method), showlegend=show,
        mode="lines+markers+text", line=dict(color=method_color(method), width=width),
        cliponaxis=False, marker=dict(symbol=["x" if c else "circle" for c in cutting],
                                      size=[width + 9 if c else width + 4 for c in cutting]),
        text=["✂" if c else "" for c in cutting], textposition="top left",
        textfont=dict(color=method_color(method), size=16),
        customdata=[[n, c, k] for n, c, k in zip(counts, ci, cuts)],
        hovertemplate=f"{method}<br>length=%{{x}}<br>score %{{y:.0%}} over %{{customdata[0]}} "
                      "samples%{customdata[1]}%{customdata[2]}<extra></extra>")


def _cut_note(cuts: list) -> str:
    """``<br>needle cut by a chunk boundary: k of n`` over the samples whose
    rows say (empty when none of them has needles)."""
    known = [c for c in cuts if c is not None]
    return f"<br>needle cut by a chunk boundary: {sum(known)} of {len(known)}" if known else ""


def _binary_interval(scores: list[float]) -> str:
    """`` (95% CI [a, b])`` when every score is 0 or 1, else empty."""
    if not scores or any(s not in (0.0, 1.0) for s in scores):
        return ""
    lo, hi = wilson_interval(int(sum(scores)), len(scores))
    return f" (95% CI [{lo:.0%}, {hi:.0%}])"
