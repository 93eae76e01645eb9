"""The model's own sliding-window attention, for the layers a method leaves alone.

A layer whose window ``W`` is at most the training length never sees a
distance it was not trained on, so under every method it runs as the model
runs it: queries and keys rotated to their true positions with the layer's
own RoPE (its layer type's frequencies), each query ``i`` attending to the
keys ``i - W < j <= i`` (transformers' sliding window: a key at distance
``W`` is already out).  The keys may be the cache's last ones only (a
sliding-window cache layer keeps ``W - 1`` of them): they end at the last
query.

A layer whose window is above the training length gets the method within its
window (:func:`method_window`): the method's layout cut at ``i - j < W``.
"""

from __future__ import annotations

import numpy as np
import torch

from . import sets
from .rope import Rope, arange, rotate

__all__ = ["own_window", "method_window"]


def own_window(q, k, v, i0: int, rope: Rope, scale: float, window: int, backend: str):
    """Sliding-window attention at true positions.

    ``q [b, h, q_len, d]`` un-rotated queries at ``i0 .. i0 + q_len - 1``;
    ``k, v [b, kv_h, kv_len, d | d_v]`` un-rotated keys at the positions
    ending with the last query's (``i0 + q_len - kv_len ..``); ``rope`` the
    layer's own frequencies; ``window`` ``W``: query ``i`` sees keys ``i - W <
    j <= i``.  Blocks of query rows, each against the ``W - 1 + rows`` keys it
    can see.  Returns ``[b, h, q_len, d_v]``.
    """
    if window < 1:
        raise ValueError(f"sliding window {window}: allowed an integer >= 1")
    Lq, Lk, dev = q.shape[2], k.shape[2], q.device
    end = i0 + Lq
    k0 = end - Lk
    if k0 < 0 or k0 > max(0, i0 - window + 1):
        raise ValueError(f"{Lk} keys ending at position {end - 1} do not hold the window of "
                         f"{window} keys of the queries from {i0}")
    qr = rotate(q, rope, arange(i0, end, dev))
    kr = rotate(k, rope, arange(k0, end, dev))
    out = []
    B = sets.block_size(q, min(Lk, window + 256), backend)
    for a in range(0, Lq, B):
        b = min(Lq, a + B)
        lo, hi = max(k0, i0 + a - window + 1), i0 + b             # keys the block sees
        i, j = arange(i0 + a, i0 + b, dev), arange(lo, hi, dev)
        mask = (j[None, :] <= i[:, None]) & (i[:, None] - j[None, :] < window)
        out.append(sets.sdpa(qr[:, :, a:b], kr[:, :, lo - k0:hi - k0], v[:, :, lo - k0:hi - k0],
                             mask, scale, backend))
    return torch.cat(out, dim=2)


def method_window(method, q, k, v, i0: int, rope: Rope, scale: float, window: int,
                  backend: str):
    """A method restricted to a sliding window above the training length:
    query ``i`` sees key ``j`` where the method's layout does
    (``method.relative(i, j)``) and ``i - j < window``, at the layout's
    relative position.  Shapes as :func:`own_window` (the keys may be the
    cache's last ones, ending at the last query); ``rope`` the method's
    frequencies for this layer.  Exact scores straight from the layout, the
    query rotated once per key (no kernel of the method serves a key set cut
    by a window; the Triton launch is never used here), in blocks of rows
    within :data:`.sets.SCORE_BUDGET`.  Returns ``[b, h, q_len, d_v]``.
    """
    if window < 1:
        raise ValueError(f"sliding window {window}: allowed an integer >= 1")
    Lq, Lk = q.shape[2], k.shape[2]
    end = i0 + Lq
    k0 = end - Lk
    if k0 < 0 or k0 > max(0, i0 - window + 1):
        raise ValueError(f"{Lk} keys ending at position {end - 1} do not hold the window of "
                         f"{window} keys of the queries from {i0}")
    rep = q.shape[1] // k.shape[1]
    kk = (k.repeat_interleave(rep, 1).to(torch.float32)
          * _factors(method.key_scale(np.arange(k0, end)), k.device)[:, None])
    vv = v.repeat_interleave(rep, 1).to(torch.float32)
    qq = q.to(torch.float32) * _factors(method.query_scale(np.arange(i0, end)), q.device)[:, None]
    per_row = 4 * q.shape[0] * q.shape[1] * min(Lk, window) * q.shape[-1]
    B = max(1, sets.SCORE_BUDGET // per_row)
    out = [_window_rows(method, qq[:, :, a:min(Lq, a + B)], kk, vv, i0 + a, k0, rope, scale,
                        window, backend) for a in range(0, Lq, B)]
    return torch.cat(out, dim=2).to(q.dtype)


def _factors(x, device) -> torch.Tensor:
    """A method's per-position ``query_scale``/``key_scale`` as float32 ``[n]``."""
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=torch.float32, device=device)


def _window_rows(method, q, k, v, start: int, k0: int, rope: Rope, scale: float, window: int,
                 backend: str):
    """Rows ``start..`` of :func:`method_window`: ``q [b, h, R, d]`` (scaled,
    float32) against the keys ``k, v [b, h, Lk, d]`` from ``k0`` they may see."""
    R, dev = q.shape[2], q.device
    lo, hi = max(k0, start - window + 1), start + R
    i, j = np.arange(start, hi)[:, None], np.arange(lo, hi)[None, :]
    rel, vis = method.relative(i, j)
    vis = np.asarray(vis) & (j <= i) & (i - j < window)                    # [R, keys]
    rel = torch.as_tensor(np.where(vis, rel, 0), dtype=torch.float32, device=dev)
    K = hi - lo
    sq = Rope(rope.inv_freq, rope.scaling ** 2)       # q and k rotations' scalings, on q
    qrot = rotate(q[:, :, :, None].expand(-1, -1, -1, K, -1).flatten(2, 3), sq, rel.flatten())
    w = (qrot.unflatten(2, (R, K)) * k[:, :, None, lo - k0:hi - k0]).sum(-1) * scale
    w = sets.capped(w, backend).masked_fill(~torch.as_tensor(vis, device=dev), float("-inf"))
    return torch.matmul(torch.softmax(w, dim=-1), v[:, :, lo - k0:hi - k0])
