"""The kernel registry: one entry per method class, declared with ``@kernel``.

::

    @kernel(MyMethod, rules=None)
    def my_method(method, q, k, v, i0, rope, scale, backend): ...

A kernel receives

* ``method``: the *resolved* method value (``mesa_viz.methods``);
* ``q [batch, head, q_len, head_dim]``: un-rotated queries at absolute
  positions ``i0 .. i0 + q_len - 1``;
* ``k, v [batch, kv_head, kv_len, head_dim | v_dim]``: un-rotated keys and
  values at positions ``0 .. kv_len - 1``, ``kv_len == i0 + q_len`` (GQA:
  ``head`` is a multiple of ``kv_head``);
* ``rope``: the :class:`~.rope.RopeTables` of this forward;
* ``scale``: the softmax scale; ``backend``: ``"sdpa"``, ``"eager"`` or
  ``"flash_attention_2"``;

and returns ``[batch, head, q_len, v_dim]``.  It must hold no ``[n, n]``
matrix: query blocks sized by :func:`.sets.block_size`.

Every registration says whether the method has near/far position *rules*
(:class:`~.rules.Rules`): ``rules(method, i0) -> Rules | None`` gives them for
the queries from ``i0``; the torch path (:func:`.near_far.by_rules`) and the
one-launch Triton kernel (``fused/``) both read them, so a rule is written
once.  ``rules=None``: the method has none (its kernel is its own code).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable

import torch

from ..methods import Method

__all__ = ["Kernel", "KERNELS", "kernel", "kernel_for"]

KernelFn = Callable[..., torch.Tensor]


def _never(method: Method, kv_len: int) -> bool:
    return False


@dataclass(frozen=True)
class Kernel:
    """A registry entry.

    ``run(method, q, k, v, i0, rope, scale, backend)`` (module doc);
    ``rules(method, i0) -> Rules | None`` or None (module doc); ``linear(
    method, kv_len) -> bool``: the layout over ``kv_len`` keys is Origin's
    (linear and causal), so Origin's kernel serves (SDPA's fused causal
    kernel); ``kv_copies``: O(n) copies of one layer's keys and values the
    kernel holds at once, in KV widths (None: the memory estimate's default);
    ``blocked_rows(method, seq_len)``: query rows of a prefill scored in
    blocks against (up to) all keys, for the memory estimate (None: every row
    unless ``linear``, then none).
    """

    run: KernelFn
    rules: "Callable | None"
    linear: Callable[[Method, int], bool] = _never
    kv_copies: float | None = None
    blocked: "Callable[[Method, int], int] | None" = None

    def blocked_rows(self, method: Method, seq_len: int) -> int:
        """Query rows of a ``seq_len``-token prefill scored in blocks against
        (up to) all keys (memory estimate)."""
        if self.blocked is not None:
            return int(self.blocked(method, seq_len))
        return 0 if self.linear(method, seq_len) else int(seq_len)


#: Method class -> Kernel; written only at import, by :func:`kernel`.
_REGISTRY: dict[type[Method], Kernel] = {}
#: Read-only view of the registry.
KERNELS = MappingProxyType(_REGISTRY)


def kernel(*classes: type[Method], rules: "Callable | None",
           linear: Callable[[Method, int], bool] = _never, kv_copies: float | None = None,
           blocked_rows: "Callable[[Method, int], int] | None" = None):
    """Decorator registering a kernel for each of ``classes`` (exact classes:
    a subclass needs its own entry).  ``rules`` must be given: the method's
    near/far rules (a function), or None; the rest: see :class:`Kernel`."""
    def register(fn: KernelFn) -> KernelFn:
        for cls in classes:
            if cls in _REGISTRY:
                raise ValueError(f"method class {cls.__name__} already has a kernel "
                                 f"({_REGISTRY[cls].run.__name__})")
            _REGISTRY[cls] = Kernel(fn, rules, linear, kv_copies, blocked_rows)
        return fn
    return register


def kernel_for(method: "Method | type[Method]") -> Kernel:
    """The registry entry of a method (value or class); ValueError naming the
    methods that have one if it has none."""
    cls = method if isinstance(method, type) else type(method)
    if cls not in _REGISTRY:
        have = sorted(c.name for c in _REGISTRY)
        raise ValueError(f"method {cls.name!r} has no attention kernel (and is not native): "
                         f"allowed {have}")
    return _REGISTRY[cls]
