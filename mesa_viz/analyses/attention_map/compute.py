"""The whole attention map of one layer and head under a method: one forward to
that layer keeps the head's un-rotated queries and keys, then :mod:`.pooling`
scores them block by block as the method's layout says, pooled to a grid."""

from __future__ import annotations

from ...models.parts import model_device
from ...runtime import PeakMemory, capture_qk
from ...runtime.probes import as_ids, pick
from .pooling import check_grid, check_pool, check_region, head_map

__all__ = ["attention_map"]


def attention_map(model, input_ids, method="origin", *, layer: int, head: int, grid: int = 512,
                  pool: str = "max", region=None, train_length=None, keep_qk: bool = True,
                  check_memory: bool = True, progress: bool = True, **params):
    """The whole attention map of ``layer``/``head`` under ``method``, pooled.

    One forward (stopped after ``layer``) keeps that head's un-rotated queries
    and keys (``runtime.capture_qk``); :func:`.pooling.pool_attention`
    scores query blocks against every key as the method's layout says,
    softmaxes each row over its full key range and pools the probabilities
    (``pool`` ``"max"`` or ``"mean"`` over each cell) into at most ``grid x
    grid`` cells, so ``[n, n]`` is never held.  ``region=(q0, q1, k0, k1)``
    maps only those query rows and keys (one cell a position where the region
    is at most ``grid`` wide).  Returns a :class:`~.pooling.AttentionMap`
    (``values [grid_q, grid_k]``, ``q_edges``, ``k_edges``, ``seconds``,
    ``peak_bytes`` of the whole call; with ``keep_qk`` the queries and keys,
    for :meth:`~.pooling.AttentionMap.zoom` without the model).
    """
    n = as_ids(input_ids).shape[1]
    pick("head", head, model.config.num_attention_heads, ())
    check_grid(grid, n)
    check_pool(pool)
    check_region(region, n)
    with PeakMemory(model_device(model)) as peak:
        qk = capture_qk(model, input_ids, method, layer=layer, heads=[head],
                        train_length=train_length, check_memory=check_memory, **params)
        amap = head_map(qk, int(head), grid=grid, pool=pool, region=region, keep_qk=keep_qk,
                        progress=progress)
    amap.peak_bytes, amap.meta["peak"] = peak.peak_bytes, peak.method
    return amap
