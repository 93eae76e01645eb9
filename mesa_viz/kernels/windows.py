"""Kernels of the near-window methods (``methods/windows.py``): ReRoPE,
Leaky-ReRoPE and STRING, each its near/far :class:`~.rules.Rules`, run by the
torch path (:func:`.near_far.rules_kernel`) and, on CUDA, the Triton launch."""

from __future__ import annotations

import math

import numpy as np

from ..methods.windows import LeakyReRoPE, ReRoPE, String
from .near_far import by_rules, rules_kernel
from .registry import kernel
from .rope import scale_rows
from .rules import Rules

__all__ = ["window_rules", "string_rules", "rerope"]


def window_rules(window: int, leak: float = math.inf) -> Rules:
    """Far keys (``t >= window``) at ``window + (t - window) / leak``: query at
    ``i / leak + window (1 - 1/leak)``, key at ``j / leak``; ReRoPE (``leak =
    inf``): query at ``window``, keys at 0."""
    if math.isinf(leak):
        return Rules(near=window, qb=float(window))
    return Rules(near=window, qa=1 / leak, qb=window * (1 - 1 / leak), ka=1 / leak)


def string_rules(method: String) -> Rules:
    """STRING: keys ``S`` or more behind the query (``S = shifted_offset``) at
    ``t - S + W`` (``W = local_window``): query at ``i - S + W``, key at ``j``."""
    S, W = method.shifted_offset, method.local_window
    return Rules(near=S, qa=1.0, qb=float(W - S), ka=1.0)


def _window_rules(method: "ReRoPE | LeakyReRoPE") -> Rules:
    return window_rules(method.window, getattr(method, "leak", math.inf))


@kernel(ReRoPE, LeakyReRoPE, rules=lambda m, i0: None if m.log_scaling else _window_rules(m))
def rerope(method, q, k, v, i0, rope, scale, backend):
    """ReRoPE and Leaky-ReRoPE: :func:`.near_far.by_rules` with
    :func:`window_rules`, queries times the method's ``query_scale`` first
    (``log_scaling``; the Triton launch serves only without it, its rules
    being None then)."""
    q = scale_rows(q, method.query_scale(np.arange(i0, i0 + q.shape[2])))
    return by_rules(_window_rules(method), q, k, v, i0, rope, scale, backend)


kernel(String, rules=lambda m, i0: string_rules(m),
       linear=lambda m, kv_len: kv_len <= m.shifted_offset)(rules_kernel)
