"""Which code computes a method's attention: :func:`attend` picks, per call,
Origin's kernel (a layout that is linear at this length), the one-launch
Triton kernel (CUDA, the method has rules, :func:`use_fused`), or the
method's own torch kernel from the registry."""

from __future__ import annotations

import functools
import logging

import torch

from ..methods import Method
from .fused.twin import decode_rows
from .origin import origin
from .registry import kernel_for
from .rope import Rope, RopeTables
from .rules import Rules
from .sets import softcap_of

__all__ = ["attend", "fused_rules", "use_fused"]

log = logging.getLogger(__name__)


def attend(method: Method, q, k, v, i0: int, rope: "Rope | RopeTables", scale: float,
           backend="sdpa"):
    """Attention of queries at ``i0..`` under the resolved ``method``.

    ``q [b, h, q_len, d]``, ``k, v [b, kv_h, kv_len, d]`` un-rotated; ``rope``
    a :class:`Rope` (tables made for this call) or this forward's
    :class:`RopeTables`.  Returns ``[b, h, q_len, d_v]``.  A ``backend``
    carrying a logit softcap (:class:`.sets.SoftcapEager`) never takes the
    Triton launch: the kernels' explicit scores apply it.
    """
    entry = kernel_for(method)
    tables = rope if isinstance(rope, RopeTables) else RopeTables(rope, method)
    if tables.method != method:
        raise ValueError(f"RopeTables made for {tables.method!r} cannot serve {method!r}: "
                         "make one per forward and method")
    if entry.linear(method, k.shape[2]):
        return origin(method, q, k, v, i0, tables, scale, backend)
    rules = tables.table(("fused-rules", i0), lambda: fused_rules(method, i0)) \
        if use_fused(q, tables) and softcap_of(backend) is None else None
    if rules is not None:
        return _fused(q, k, v, i0, tables, scale, rules)
    return entry.run(method, q, k, v, i0, tables, scale, backend)


def _fused(q, k, v, i0: int, tables: RopeTables, scale: float, rules: Rules):
    """The Triton launches (:mod:`.fused.triton`): a few rows (a decode step)
    split over the keys, with what the launch needs made once a forward (its
    layers share it: ``tables.table``); more rows one launch over query blocks."""
    from .fused.triton import fused_attention, fused_decode
    inv = tables.rope.inv_freq
    if decode_rows(q.shape[1], k.shape[1], q.shape[2]):
        return fused_decode(q, k, v, i0, inv, scale, rules, keep=tables.table)
    return fused_attention(q, k, v, i0, inv, scale, rules)[0]


def fused_rules(method: Method, i0: int) -> "Rules | None":
    """The method's near/far rules for its queries from ``i0`` (its registry
    entry's ``rules``), or None where it has none there."""
    fn = kernel_for(method).rules
    return None if fn is None else fn(method, i0)


def use_fused(q: torch.Tensor, rope: RopeTables) -> bool:
    """Whether the Triton kernel (:mod:`.fused.triton`) serves: CUDA tensors,
    ``triton`` importable, full rotary with a power-of-two head size, no
    cos/sin scaling.  The only decision for it (tests replace it)."""
    half, d = rope.rope.inv_freq.shape[0], q.shape[-1]
    return (q.is_cuda and d == 2 * half and d & (d - 1) == 0 and rope.rope.scaling == 1.0
            and _triton_importable())


@functools.cache
def _triton_importable() -> bool:
    """Whether ``triton`` imports (checked, and said in the log, once)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        log.info("triton is not importable: Mesa's last chunk and the near/far methods run "
                 "their torch kernels (one launch per key set) on CUDA")
        return False
    log.info("triton %s: Mesa's last chunk and the near/far methods run one fused launch "
             "per layer on CUDA (mesa_viz.kernels.fused.triton)", triton.__version__)
    return True
