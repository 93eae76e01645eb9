"""Marks on any figure: one helper, :func:`mark`, for ``T``, chunk boundaries,
thresholds and needles on linear, log and category axes, x or y, any subplot.

The mark carries a ``name``, its label sits in a light box beside it, and a
mark outside the data is not drawn (a span is clipped), so no marker stretches
an axis.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from .style import MARK_COLOR

__all__ = ["AxisInfo", "axis_info", "mark", "marker_items", "add_marker_items",
           "category_boundary", "positive", "mark_T", "note_T", "label_style", "ABOVE"]


def label_style(name: str, text: str, border: str) -> dict:
    """A marker label: dark text in a light box, readable on any colour map."""
    return dict(name=name, text=text, bordercolor=border, font=dict(size=11, color="#111111"),
                bgcolor="rgba(255,255,255,0.85)", borderwidth=1, borderpad=2, showarrow=False)


_AXIS_TYPES = ("linear", "log", "category")
#: ``label_at`` for an x mark whose label sits just over the plot area (in the
#: top margin, centred on the line), where it covers no data.
ABOVE = "above"


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
         fill_opacity: float = 0.15, label_at: float | str = 1.0) -> bool:
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
    where along the other axis (0..1 of its domain), or :data:`ABOVE` (x
    marks): over the plot area, in the top margin, where it covers no data
    (leave the margin room for it).  The shape and the label carry ``name``.

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
                 width: float = 1.5, fill_opacity: float = 0.15, label_at: float | str = 1.0):
    """The ``(shape, annotation)`` dicts :func:`mark` adds (either may be None),
    for adding many marks at once; ``other``: the other axis's AxisInfo (needed
    with ``across``) or its id."""
    if not name:
        raise ValueError("name is empty: allowed a non-empty name tests and widgets can find")
    if label_at != ABOVE and not (isinstance(label_at, (int, float)) and 0 <= label_at <= 1):
        raise ValueError(f"label_at={label_at!r}: allowed 0..1 (fraction of the other axis) "
                         f"or {ABOVE!r} (x marks: in the margin over the plot, off the data)")
    if label_at == ABOVE and ax.letter != "x":
        raise ValueError(f"label_at={ABOVE!r} is for x marks: allowed 0..1 on a y mark")
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
    a = label_style(name, text, color)
    if ax.letter == "x" and label_at == ABOVE:        # in the margin, over the line or span
        mid = math.sqrt(lo * hi) if ax.type == "log" else (lo + hi) / 2
        a.update(x=ax.annotation_coordinate(mid), xref=ax.ref, xanchor="center", y=1,
                 yref=oref + " domain", yanchor="bottom", yshift=2)
    elif ax.letter == "x":
        a.update(x=ax.annotation_coordinate(pos), xref=ax.ref,
                 xanchor="left" if inward else "right",
                 xshift=gap, y=label_at, yref=oref + " domain",
                 yanchor="top" if label_at >= 0.5 else "bottom")
    else:
        a.update(y=ax.annotation_coordinate(pos), yref=ax.ref,
                 yanchor="bottom" if inward else "top",
                 yshift=gap, x=label_at, xref=oref + " domain",
                 xanchor="right" if label_at >= 0.5 else "left")
    return a


def _edge_note(ax: AxisInfo, oref: str, below: bool, text: str, name: str,
               label_at: float) -> dict:
    """A note at the plot's edge for a mark outside the data (drawn nowhere else)."""
    start = below != ax.reversed                   # the visual left / bottom edge
    oref += " domain"
    label_at, above = (1.0, True) if label_at == ABOVE else (label_at, False)
    if ax.letter == "x":
        a = label_style(name, f"◀ {text}" if start else f"{text} ▶", "#999999")
        a.update(xref=ax.ref + " domain",
                 x=0 if start else 1, xanchor="left" if start else "right", yref=oref,
                 y=label_at, yanchor="bottom" if above or label_at < 0.5 else "top")
    else:
        a = label_style(name, f"▼ {text}" if start else f"▲ {text}", "#999999")
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


def positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}: allowed a positive integer")
    return int(value)


def mark_T(fig: go.Figure, T, n: int, cols: int, at=None) -> None:
    """``T`` marked on the x axis of the first ``n`` subplots (at ``at``, e.g.
    a category boundary; default ``T``): unlabelled lines, named once in the
    subtitle (:func:`note_T`), since a label box in each panel covers data and
    one over each panel meets its title."""
    if T is None:
        return
    T = positive(T, "train_length")
    drawn = [mark(fig, T if at is None else at, name="train_length", row=k // cols + 1,
                  col=k % cols + 1) for k in range(n)]
    note_T(fig, f"dashed line: T={T}" if any(drawn) else f"T={T} lies outside the x range")


def note_T(fig: go.Figure, text: str) -> None:
    """``text`` as the first line of ``fig``'s subtitle (top margin widened)."""
    sub = fig.layout.title.subtitle.text
    fig.update_layout(title_subtitle_text=text + (f"<br>{sub}" if sub else ""),
                      margin_t=max(fig.layout.margin.t or 100, 100 if not sub else 120))
