"""Checks of what an analysis is asked to run, shared by every sweep: each raises
ValueError naming the bad value and what is allowed."""

from __future__ import annotations

import numbers

from ..methods import get_method

__all__ = ["check_methods", "check_lengths"]


def check_methods(methods, method_params: dict | None = None) -> None:
    """``methods`` is a non-empty list of known method names, each accepting
    its ``method_params[name]``, and ``method_params`` names no other method."""
    method_params = method_params or {}
    if not methods:
        raise ValueError("methods is empty: allowed a non-empty list of method names")
    for m in methods:
        get_method(m, **method_params.get(m, {}))       # unknown method/parameter: clear error
    unknown = sorted(set(method_params) - set(methods))
    if unknown:
        raise ValueError(f"parameters given for {unknown}, which are not among methods "
                         f"{list(methods)}")


def check_lengths(lengths) -> None:
    """``lengths`` is a non-empty list of positive integers (token counts)."""
    if not lengths:
        raise ValueError("lengths is empty: allowed a non-empty list of token counts")
    bad = [n for n in lengths
           if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1]
    if bad:
        raise ValueError(f"lengths {bad}: allowed positive integers (token counts)")
