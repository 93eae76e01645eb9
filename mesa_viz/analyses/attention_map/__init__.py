"""The whole attention map of one layer and head, pooled to a grid without ever
holding ``[n, n]`` (:mod:`.compute`, :mod:`.pooling`)."""

from .compute import attention_map
from .pooling import (MIN_GROUP, POOLS, AttentionMap, cell_edges, check_grid, check_pool,
                      check_region, head_map, pool_attention)

__all__ = ["attention_map", "AttentionMap", "head_map", "pool_attention", "POOLS", "MIN_GROUP",
           "check_grid", "check_pool", "check_region", "cell_edges"]
