"""Kernels of the sink methods (``methods/sinks.py``): StreamingLLM and
LM-Infinite, the ``sink_tokens`` first keys outside the local window as the far
set, each its :class:`~.rules.Rules`."""

from __future__ import annotations

from ..methods.sinks import LMInfinite, StreamingLLM
from .near_far import rules_kernel
from .registry import kernel
from .rules import Rules

__all__ = ["streaming_llm_rules", "lm_infinite_rules"]


def streaming_llm_rules(method: StreamingLLM) -> Rules:
    """Sinks at their cache slots: query at ``min(i, sink_tokens + window - 1)``, key at ``j``."""
    S, W = method.sink_tokens, method.window
    return Rules(near=W, far_limit=S, qa=1.0, qmax=float(S + W - 1), ka=1.0)


def lm_infinite_rules(method: LMInfinite) -> Rules:
    """Sinks at distance ``window``: query at ``window``, keys at 0."""
    return Rules(near=method.window, far_limit=method.sink_tokens, qb=float(method.window))


kernel(StreamingLLM, rules=lambda m, i0: streaming_llm_rules(m))(rules_kernel)
kernel(LMInfinite, rules=lambda m, i0: lm_infinite_rules(m))(rules_kernel)
