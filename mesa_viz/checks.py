"""Checks of what an analysis is asked to run, shared by passkey, thresholds
and bench: each raises ValueError naming the bad value and what is allowed."""

from __future__ import annotations

import logging
import numbers

from .methods import get_method

__all__ = ["check_methods", "check_lengths", "fits"]

log = logging.getLogger(__name__)


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


def fits(model, method: str, length: int, params: dict | None = None,
         decode_tokens: int = 0) -> bool:
    """False (with a warning naming the estimate) when :mod:`mesa_viz.memory`
    predicts a prefill of ``length`` tokens under ``method`` cannot fit."""
    from .memory import LengthTooLong, check_fits
    try:
        check_fits(model, method, length, params=params or {}, decode_tokens=decode_tokens)
    except LengthTooLong as err:
        log.warning("skipping %s at length %d: %s", method, length, err)
        return False
    return True
