"""The report's theory section: the constructions of Appendix E run (no model)."""

from __future__ import annotations

from ...viz.page import Section, note
from . import compute as theory
from .figures import theorem_figure

__all__ = ["SECTIONS"]

#: The section's parameters: the theorem explorer's opening values.
_M, _H, _N, _E, _LENGTH = 16, 0.5, 3, 4, 1024


def theory_section(ctx) -> list:
    """Each PE's value at the threshold dimension against ``t`` and whether its
    statement holds (Theorems 3.1-3.3, Corollary 4.1)."""
    runs = {pe: theory.run(pe, _M, _H, _LENGTH, **_widths(pe)) for pe in theory.PES}
    lines = [r.statement() for r in runs.values()]
    return [note(f"M={_M}, H={_H}, N={_N}, E={_E}, t up to {_LENGTH}: "
                 + "; ".join(f"{st.text}" for st in lines)),
            theorem_figure({pe: r.value for pe, r in runs.items()}, _M, _H, runs["nope"].t)]


def _widths(pe: str) -> dict:
    return {"rerope": {"N": _N}, "stair": {"N": _N, "E": _E}}.get(pe, {})


#: This analysis's part of the report.
SECTIONS = (Section("The theory, run (Appendix E)", theory_section, "theory"),)
