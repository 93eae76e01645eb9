"""The method registry: every method class by name, and the calls that build one."""

from __future__ import annotations

import dataclasses

from .base import Method, Origin, control_of
from .frequency import DynamicNTK, NTKAware, PositionInterpolation, YaRN
from .grouped import DualChunk, SelfExtend
from .mesa import Mesa
from .sinks import LMInfinite, StreamingLLM
from .stair import Stair
from .windows import LeakyReRoPE, ReRoPE, String

__all__ = ["METHODS", "get_method", "resolve", "parameters", "pop_params"]


#: Every method by its name (command line, JSON rows), in the order figures and tables list them.
METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in
    (Origin, Stair, ReRoPE, LeakyReRoPE, DynamicNTK, StreamingLLM, LMInfinite, Mesa,
     SelfExtend, DualChunk, String, PositionInterpolation, NTKAware, YaRN)
}


def parameters(method: "str | type[Method]") -> dict:
    """A method's parameters (``train_length`` and its own fields) ->
    the explorer control each declares (:func:`.base.param`)."""
    cls = METHODS[method] if isinstance(method, str) else method
    return {f.name: control_of(f) for f in dataclasses.fields(cls)}


def pop_params(method: str, options: dict) -> dict:
    """Pop ``method``'s own parameters (not ``train_length``) out of
    ``options`` (an integration's keyword arguments, e.g. lm-eval's model
    args), checked by :func:`get_method`; the rest stay in ``options``."""
    names = set(parameters(type(get_method(method)))) - {"train_length"}
    params = {k: options.pop(k) for k in list(options) if k in names}
    get_method(method, **params)
    return params


def get_method(method: "str | Method", **params) -> Method:
    """A method value from its name (or a Method, with parameters replaced)."""
    if isinstance(method, Method):
        return dataclasses.replace(method, **params) if params else method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: allowed {sorted(METHODS)}")
    cls = METHODS[method]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for method {method!r}: "
                         f"allowed {sorted(names)}")
    return cls(**params)


def resolve(method: "str | Method", seq_len: int, *, train_length: int | None = None,
            prefill_length: int | None = None, default_train_length: int | None = None,
            **params) -> Method:
    """``get_method(method, **params).resolve(seq_len, ...)`` in one call.

    ``train_length`` (an int, no model needed) overrides the method's own;
    ``default_train_length`` (e.g. a config's ``max_position_embeddings``)
    serves where neither is given; failing all, ``seq_len`` (no extrapolation).
    """
    m = get_method(method, **params)
    if train_length is None and m.train_length is None:
        train_length = default_train_length
    return m.resolve(seq_len, train_length=train_length, prefill_length=prefill_length)
