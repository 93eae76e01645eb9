"""One self-contained offline HTML page of figures and text (plotly.js inlined once),
and the pieces the report's sections are made of (:class:`Section`, notes,
what a section says when its input is missing)."""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from ..runs.jsonl import load_rows

__all__ = ["save_html", "Section", "note", "pre", "missing", "from_results", "NO_MODEL"]


log = logging.getLogger(__name__)


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


# -- report sections --------------------------------------------------------------------------

@dataclass(frozen=True)
class Section:
    """One part of the report: ``draw(context)`` returns its page items (figures
    and HTML strings); ``name`` is its analysis (``mesa_viz/analyses/<name>``);
    ``reads`` names the results file it draws (``results={KIND: path}``), if any."""

    title: str
    draw: Callable
    name: str
    reads: str | None = None


def note(text: str) -> str:
    """A paragraph of the page."""
    return f"<p class='note'>{html.escape(text)}</p>"


def pre(text: str) -> str:
    """Preformatted text (a table) of the page."""
    return f"<pre>{html.escape(text)}</pre>"


def missing(what: str, how: str) -> list:
    """What a section says when its input is missing, and how to include it."""
    return [note(f"Not included: {what}. To include it, {how}.")]


#: What a model section says without a model.
NO_MODEL = ("no model was given",
            "pass model= and tokenizer= to report.build (mesa-viz report without --no-model)")


def from_results(ctx, kind: str, unit: str, how: str, draw) -> list:
    """Draw the ``kind`` results file of the report's context (copied to
    ``<kind>.json`` in its data folder first), or say how to include it."""
    if kind not in ctx.results:
        return missing(f"no {kind} results were given",
                       f"{how} and pass results={{'{kind}': FILE}} to report.build "
                       f"(mesa-viz report --{kind} FILE)")
    path = ctx.results[kind]
    rows = load_rows(path)
    (ctx.data / f"{kind}.json").write_text(json.dumps(rows, indent=1, default=str))
    return [note(f"{len(rows)} {unit} from {path.name}"), *draw(rows)]
