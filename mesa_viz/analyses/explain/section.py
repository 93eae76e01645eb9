"""The report's drill-down section: why the shortest failed passkey sample of the
given results failed (``mesa_viz.explain`` against its comparison method)."""

from __future__ import annotations

import html

from ...runs.jsonl import load_rows
from ...viz.page import Section, missing, note
from .compute import explain, file_name
from .figures import explanation_figures

__all__ = ["SECTIONS"]


def explain_section(ctx) -> list:
    """The drill-down of the shortest failed passkey sample (when results are
    given); kept on the context (``ctx.explanation``) for the attention map."""
    if ctx.model is None:
        return missing("the drill-down (it re-runs the model, and none was given)",
                       "pass model= and tokenizer= to report.build")
    rows = load_rows(ctx.results["passkey"]) if "passkey" in ctx.results else []
    failed = [r for r in rows if not r["correct"]]
    rebuildable = sorted((r for r in failed if "seed" in r or "input_ids" in r),
                         key=lambda r: (r["length"], r["depth"], r.get("seed", 0)))
    items = []
    if failed and not rebuildable:
        items += missing("the drill-down of a failed passkey sample: its rows record no "
                         "seed (written before per-sample keys), so the sample cannot be "
                         "rebuilt", "rerun mesa-viz passkey into a new --out")
    if not rebuildable:
        return items or [note("No failed passkey sample to explain (give passkey results "
                              "with one).")]
    exp = explain(rebuildable[0], ctx.model, ctx.tokenizer, train_length=ctx.train_length)
    exp.save(ctx.data / file_name(rebuildable[0], exp.methods[1]))
    ctx.explanation = exp
    return [f"<pre>{html.escape(exp.summary())}</pre>", *explanation_figures(exp).values()]


#: This analysis's part of the report.
SECTIONS = (Section("Why it fails: the heads that miss the needle", explain_section, "explain",
                    reads="passkey"),)
