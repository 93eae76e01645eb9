"""Subplot grids and the rows they draw: spacing that keeps titles and tick labels
apart, axis titles on the outer panels, length ticks, checked result rows.
"""

from __future__ import annotations

import plotly.graph_objects as go

__all__ = ["check_row_keys", "methods_in", "subplot_grid", "outer_axis_titles", "length_ticks",
           "wrap_title", "colorbar_under", "NOTEBOOK_WIDTH"]

#: The width (CSS px) a figure without its own ``width`` is laid out for: a
#: notebook's output area in a 1400 px browser window is about this wide.
NOTEBOOK_WIDTH = 900


def check_row_keys(rows, keys, what: str) -> list[dict]:
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


def methods_in(rows) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


def subplot_grid(nrows: int, row_px: int, gap_px: int = 95) -> dict:
    """Pixel-based spacing for ``nrows`` subplot rows: a gap between rows that
    holds the upper row's tick labels and axis title plus the lower row's
    subplot title, so none overlap at the default height."""
    margin = dict(t=90, b=70)
    plot_px = nrows * row_px + (nrows - 1) * gap_px
    spacing = gap_px / plot_px if nrows > 1 else 0.0
    return dict(height=plot_px + margin["t"] + margin["b"], vertical_spacing=spacing,
                margin=margin)


def outer_axis_titles(fig: go.Figure, n: int, cols: int, x_title: str, y_title: str) -> None:
    """Axis titles only on the bottom subplot of each column and the first column."""
    for k in range(n):
        row, col = k // cols + 1, k % cols + 1
        if k + cols >= n:
            fig.update_xaxes(title_text=x_title, row=row, col=col)
        if col == 1:
            fig.update_yaxes(title_text=y_title, row=row, col=col)


def length_ticks(lengths, most: int = 12) -> dict:
    """Ticks at the measured lengths (when there are few), not at 2, 3, 5 x 10^k."""
    lengths = sorted(set(lengths))
    if not 1 < len(lengths) <= most:
        return {}
    return dict(tickvals=lengths, ticktext=[str(L) for L in lengths])


def wrap_title(text: str, width_px: int | None = None, font_px: float = 17) -> str:
    """``text`` broken into lines (``<br>``) at spaces so each fits a figure
    ``width_px`` wide (default :data:`NOTEBOOK_WIDTH`) in a ``font_px`` font;
    a title is never cut off at the figure's edge."""
    room = int(((width_px or NOTEBOOK_WIDTH) - 60) / (0.55 * font_px))
    lines: list[str] = []
    for word in str(text).split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= room:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines)


def colorbar_under(fig: go.Figure, cols, title: str, plot_px: float,
                   below_px: float = 62) -> dict:
    """A horizontal colour bar under subplot columns ``cols`` (row 1), clear of
    the x axis title: two colour bars side by side under their own panels
    never overlap, as two vertical bars at the right edge do.  ``plot_px``:
    the plot area's height in px (figure height less top and bottom margins)."""
    x0 = fig.get_subplot(1, min(cols)).xaxis.domain[0]
    x1 = fig.get_subplot(1, max(cols)).xaxis.domain[1]
    return dict(orientation="h", x=(x0 + x1) / 2, xanchor="center", len=(x1 - x0) * 0.9,
                y=-below_px / plot_px, yanchor="top", thickness=12,
                title=dict(text=title, side="top"))
