"""The whole attention map of one head, block by block, pooled to a grid.

Nothing here holds an ``[n, n]`` matrix: query rows are scored in blocks
against every key they may see, softmaxed over the whole key range, pooled
(max or mean over the cell, of the full causal matrix, zeros included) into
the grid cells the block touches, and dropped.  Torch and numpy only; the
model is run by :func:`.compute.attention_map`, which hands this module one
head's un-rotated queries and keys (``runtime.capture_qk``).

Scores follow the method's layout exactly (``method.relative``), as matmuls.
Within a block of rows ``i`` (first row ``i0``), keys ``j`` whose column
``rel(i, j) - rel(i0, j)`` is the same vector ``u`` form a *separable group*:
``rel(i, j) = u_i + v_j`` with ``v_j = rel(i0, j)``, so RoPE of the query at
``u_i`` and of the key at ``-v_j`` scores the whole group in one matmul.
Origin is one group per block; ReRoPE, Leaky-ReRoPE and the sink methods a
near and a far group; Stair PE (Mesa's last chunk) one group per residue of
the key modulo ``stair_width``; Mesa's middle chunks two.  Keys in groups of
fewer than :data:`MIN_GROUP` (where a row crosses a window) are scored pair by
pair in the two-component form ``cos(rel w) (q1 k1 + q2 k2) + sin(rel w) (q1 k2
- q2 k1)``, so any layout is scored exactly; keys no row of the block sees
are skipped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ...kernels import Rope, rotate
from ...methods import Method, get_method
from ...runs.arrays import load_result, save_result

__all__ = ["POOLS", "MIN_GROUP", "AttentionMap", "head_map", "TableRope", "block_logits",
           "pool_attention", "check_grid", "check_pool", "check_region", "cell_edges"]

#: Pooling of a grid cell.
POOLS = ("max", "mean")
#: Smallest separable key group scored by matmul (smaller ones pair by pair).
MIN_GROUP = 8
#: Relative positions closer than this are one position when keys are grouped.
_RESOLUTION = 2.0 ** -20
#: Elements of one pair-by-pair score chunk ``[rows, keys, rot_dim/2]``.
_PAIR_CHUNK = 1 << 22


# -- checks ------------------------------------------------------------------------------

def check_pool(pool) -> str:
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r}: allowed {list(POOLS)}")
    return pool


def check_region(region, n: int) -> tuple[int, int, int, int]:
    """``(q0, q1, k0, k1)``: query rows ``[q0, q1)`` and keys ``[k0, k1)`` of an
    ``n``-token map (``None``: all of it)."""
    if region is None:
        return 0, n, 0, n
    try:
        q0, q1, k0, k1 = (int(v) for v in region)
    except (TypeError, ValueError) as err:
        raise ValueError(f"region={region!r}: allowed (q_start, q_stop, k_start, k_stop)") from err
    if not (0 <= q0 < q1 <= n and 0 <= k0 < k1 <= n):
        raise ValueError(f"region={tuple(region)!r} is out of range: allowed 0 <= q_start < "
                         f"q_stop <= {n} and 0 <= k_start < k_stop <= {n}")
    return q0, q1, k0, k1


def check_grid(grid, n: int) -> int:
    """A grid of ``grid x grid`` cells needs ``1 <= grid <= n`` (a cell per position at most)."""
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or not 1 <= grid <= n:
        raise ValueError(f"grid={grid!r}: allowed an integer in [1, {n}] (the input has "
                         f"{n} tokens; a cell covers at least one position)")
    return int(grid)


def cell_edges(start: int, stop: int, cells: int) -> np.ndarray:
    """``[cells + 1]`` integer edges: cell ``c`` covers ``edges[c] .. edges[c+1]-1``
    (``cells <= stop - start``, so every cell holds at least one position)."""
    return np.round(np.linspace(start, stop, cells + 1)).astype(np.int64)


# -- exact scores of a block of rows --------------------------------------------------------

class TableRope:
    """:class:`~mesa_viz.kernels.Rope` with its cos/sin tables computed once
    for the integer positions ``-n .. n`` (what :func:`~mesa_viz.kernels.rotate`
    reads; fractional positions are computed as the Rope computes them)."""

    def __init__(self, rope: Rope, n: int):
        self.rope, self.n = rope, int(n)
        self.tables = rope.cos_sin(torch.arange(-self.n, self.n + 1), torch.float32)
        self.scaling = rope.scaling
        self.inv_freq = rope.inv_freq

    def cos_sin(self, pos: torch.Tensor, dtype: torch.dtype):
        idx = pos.round()
        if dtype != torch.float32 or not bool((idx == pos).all()) or \
                pos.numel() and float(idx.abs().max()) > self.n:
            return self.rope.cos_sin(pos, dtype)
        idx = idx.long() + self.n
        return self.tables[0][idx], self.tables[1][idx]


def block_logits(method: Method, q: torch.Tensor, k: torch.Tensor, i0: int, rope: Rope,
                 scale: float) -> torch.Tensor:
    """Pre-softmax logits ``[R, kv]`` of queries ``i0 .. i0+R-1`` over keys
    ``0 .. kv-1`` under the resolved ``method``, ``-inf`` where it hides a key.

    ``q [R, head_dim]``, ``k [kv, head_dim]``: one head, un-rotated, float32;
    ``rope``: the forward's RoPE; ``scale``: the softmax scale.
    """
    R, kv = q.shape[0], k.shape[0]
    i = np.arange(i0, i0 + R)
    rel, vis = method.relative(i[:, None], np.arange(kv)[None, :])
    rel = np.broadcast_to(rel, (R, kv))
    vis = np.broadcast_to(np.asarray(vis, dtype=bool), (R, kv))
    q = q * torch.as_tensor(method.query_scale(i), dtype=q.dtype)[:, None]
    k = k * torch.as_tensor(method.key_scale(np.arange(kv)), dtype=k.dtype)[:, None]
    out = torch.full((R, kv), -math.inf, dtype=torch.float32)
    seen = np.flatnonzero(vis.any(axis=0))
    if seen.size == 0:
        return out
    cols = _columns(seen)
    groups, single = _key_groups(rel[:, cols])
    for members in groups:
        J, j = _columns(seen[members]), seen[members[0]]
        u = torch.as_tensor(rel[:, j] - rel[0, j], dtype=torch.float32)
        v = torch.tensor(rel[0, J], dtype=torch.float32)
        out[:, J] = rotate(q, rope, u) @ rotate(k[J], rope, -v).T * scale
    if single.size:
        J = _columns(seen[single])
        out[:, J] = _pair_logits(q, k[J], rel[:, J], rope, scale)
    return out.masked_fill_(torch.as_tensor(~vis), -math.inf)


def _columns(idx: np.ndarray):
    """Column indices as a slice when they are contiguous (a view, not a gather)."""
    return slice(int(idx[0]), int(idx[-1]) + 1) if idx[-1] - idx[0] + 1 == idx.size else idx


def _key_groups(rel: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Columns of ``rel [R, m]`` in separable groups (module doc) of at least
    :data:`MIN_GROUP` (arrays of column indices), and the other columns.

    Columns are bucketed by an integer hash of their signature ``rel[:, j] -
    rel[0, j]`` (exact, wrapping int64 arithmetic; fractional positions are
    first rounded to ``_RESOLUTION``), then every bucket is checked exactly
    against its first column: a collision costs speed, never exactness."""
    if rel.dtype.kind == "f":
        rel = np.round(rel / _RESOLUTION).astype(np.int64)
    rel = rel.astype(np.int64, copy=False)
    weights = np.random.default_rng(0).integers(-2 ** 62, 2 ** 62, rel.shape[0])
    with np.errstate(over="ignore"):
        hashes = weights @ rel - weights.sum() * rel[0]
    _, inv, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    order = np.argsort(inv, kind="stable")
    ends = np.cumsum(counts)
    groups, single = [], [np.flatnonzero(counts[inv] < MIN_GROUP)]
    for g in np.flatnonzero(counts >= MIN_GROUP):
        members = order[ends[g] - counts[g]:ends[g]]
        first = members[0]
        same = ((rel[:, _columns(members)] - rel[:, first, None])
                == (rel[0, members] - rel[0, first])).all(axis=0)
        groups.append(members[same])
        single.append(members[~same])
    return groups, np.sort(np.concatenate(single))


def _pair_logits(q, k, rel: np.ndarray, rope: Rope, scale: float) -> torch.Tensor:
    """Logits ``[R, m]`` of ``q [R, d]`` and ``k [m, d]`` at relative positions
    ``rel [R, m]``, pair by pair (module doc), in key chunks."""
    half = rope.inv_freq.numel()
    w = rope.inv_freq.detach().float().cpu()
    q1, q2, qp = q[:, :half, None], q[:, half:2 * half, None], q[:, 2 * half:]
    step = max(1, _PAIR_CHUNK // max(1, q.shape[0] * half))
    out = []
    for a in range(0, k.shape[0], step):
        kc = k[a:a + step]
        k1, k2 = kc[:, :half].T[None], kc[:, half:2 * half].T[None]          # [1, half, m]
        theta = torch.tensor(rel[:, a:a + step], dtype=torch.float32)[:, None, :] * w[None, :, None]
        rot = (torch.cos(theta) * (q1 * k1 + q2 * k2) + torch.sin(theta) * (q1 * k2 - q2 * k1))
        out.append(rot.sum(1) * rope.scaling ** 2 + qp @ kc[:, 2 * half:].T)
    return torch.cat(out, dim=1) * scale


# -- pooling ------------------------------------------------------------------------------

def _pool_keys(p: np.ndarray, k_edges: np.ndarray, pool: str) -> np.ndarray:
    """``p [R, kv]`` (keys past ``kv`` are zeros) pooled into key cells: ``[R,
    cells]`` maxima or sums."""
    out = np.zeros((p.shape[0], len(k_edges) - 1), dtype=np.float64)
    k0, stop = int(k_edges[0]), min(p.shape[1], int(k_edges[-1]))
    live = np.flatnonzero(k_edges[:-1] < stop)
    if live.size:
        reduce = np.maximum if pool == "max" else np.add
        out[:, live] = reduce.reduceat(p[:, k0:stop], k_edges[live] - k0, axis=1)
    return out


def _pool_rows(acc: np.ndarray, cells: np.ndarray, rows: np.ndarray, q_edges: np.ndarray,
               pool: str) -> None:
    """Fold ``cells [R, grid_k]`` of consecutive query ``rows`` into ``acc``."""
    idx = np.searchsorted(q_edges, rows, side="right") - 1
    starts = np.flatnonzero(np.r_[True, np.diff(idx) > 0])
    reduce = np.maximum if pool == "max" else np.add
    acc[idx[starts]] = reduce(acc[idx[starts]], reduce.reduceat(cells, starts, axis=0))


def block_rows(n: int) -> int:
    """Query rows per block: ``[rows, n]`` float32 arrays of about 32 MB."""
    return int(min(256, max(16, (1 << 23) // max(1, n))))


def pool_attention(method: Method, q: torch.Tensor, k: torch.Tensor, rope: Rope, scale: float,
                   *, grid: int, pool: str = "max", region=None, progress: bool = True):
    """The attention map ``[grid_q, grid_k]`` of one head, pooled.

    ``q, k [n, head_dim]``: that head's un-rotated queries and keys (float32);
    ``region=(q0, q1, k0, k1)``: rows ``[q0, q1)`` and keys ``[k0, k1)`` only
    (each row still softmaxed over all its keys); ``grid`` cells a side at
    most (fewer where the region is narrower: one cell a position).  Returns
    ``(values, q_edges, k_edges)``: ``max`` or ``mean`` over each cell of the
    full causal probability matrix (hidden and future keys count as 0).
    """
    from tqdm.auto import tqdm

    n = q.shape[0]
    q0, q1, k0, k1 = check_region(region, n)
    check_pool(pool)
    check_grid(grid, n)
    q_edges = cell_edges(q0, q1, min(grid, q1 - q0))
    k_edges = cell_edges(k0, k1, min(grid, k1 - k0))
    acc = np.zeros((len(q_edges) - 1, len(k_edges) - 1))
    B, rope = block_rows(n), TableRope(rope, n)
    for a in tqdm(range(q0, q1, B), desc=f"attention map ({method.name})", unit="block",
                  disable=not progress, leave=False):
        b = min(q1, a + B)
        p = torch.softmax(block_logits(method, q[a:b], k[:b], a, rope, scale), dim=-1)
        _pool_rows(acc, _pool_keys(p.numpy(), k_edges, pool), np.arange(a, b), q_edges, pool)
    if pool == "mean":
        acc /= np.diff(q_edges)[:, None] * np.diff(k_edges)[None, :]
    return acc, q_edges, k_edges


# -- the result ---------------------------------------------------------------------------

def head_map(qk, head: int, *, grid: int = 512, pool: str = "max", region=None,
             keep_qk: bool = True, progress: bool = True) -> "AttentionMap":
    """The pooled map of ``head`` from one layer's captured queries and keys
    (``qk``: a ``runtime.CapturedQK``, ``q, k [head, pos, head_dim]``):
    :func:`pool_attention` under the resolved method the forward ran."""
    if head not in qk.heads:
        raise ValueError(f"head={head!r} was not captured: allowed {list(qk.heads)}")
    h = qk.heads.index(head)
    t0 = time.perf_counter()
    values, q_edges, k_edges = pool_attention(qk.method, qk.q[h], qk.k[h], qk.rope, qk.scale,
                                              grid=grid, pool=pool, region=region,
                                              progress=progress)
    m, n = qk.method, qk.q.shape[1]
    return AttentionMap(
        method=m.name, params=m.params(), train_length=qk.train_length, layer=qk.layer,
        head=int(head), seq_len=n, pool=pool, region=list(check_region(region, n)),
        q_edges=q_edges, k_edges=k_edges, values=values,
        chunk_plan=[list(c) for c in m.plan().chunks] if m.chunked else None,
        seconds={"forward": qk.seconds, "map": time.perf_counter() - t0},
        meta=dict(qk.meta), q=qk.q[h].numpy() if keep_qk else None,
        k=qk.k[h].numpy() if keep_qk else None,
        inv_freq=qk.rope.inv_freq.detach().float().cpu().numpy(),
        rope_scaling=float(qk.rope.scaling), scale=float(qk.scale))


@dataclass
class AttentionMap:
    """One head's whole attention map, pooled to a grid, and what it took.

    ``values [grid_q, grid_k]``: ``pool`` (max or mean) of the probabilities
    in each cell; cell ``(r, c)`` covers queries ``q_edges[r] .. q_edges[r+1]-1``
    and keys ``k_edges[c] .. k_edges[c+1]-1``; ``region = [q0, q1, k0, k1]``.
    ``seconds``: ``forward`` (the model, up to ``layer``) and ``map``;
    ``peak_bytes``: peak memory of the whole call (process RSS or CUDA,
    ``runtime.memory.PeakMemory``).  ``q, k [pos, head_dim]`` (un-rotated),
    ``inv_freq``, ``rope_scaling`` and ``scale`` let :meth:`zoom` re-pool any
    region at full resolution without the model (``None`` when not kept).
    """

    method: str
    params: dict
    train_length: int
    layer: int
    head: int
    seq_len: int
    pool: str
    region: list
    q_edges: np.ndarray
    k_edges: np.ndarray
    values: np.ndarray
    chunk_plan: list | None = None
    seconds: dict = field(default_factory=dict)
    peak_bytes: int | None = None
    meta: dict = field(default_factory=dict)
    q: np.ndarray | None = None
    k: np.ndarray | None = None
    inv_freq: np.ndarray | None = None
    rope_scaling: float = 1.0
    scale: float | None = None

    @property
    def grid(self) -> int:
        return int(max(self.values.shape))

    def resolved(self) -> Method:
        """The method value the map was scored with."""
        return get_method(self.method, **self.params)

    def zoom(self, region=None, grid: int | None = None, pool: str | None = None,
             progress: bool = False) -> "AttentionMap":
        """The map of ``region=(q0, q1, k0, k1)`` (``None``: everything) re-pooled
        from the kept queries and keys, ``grid`` cells a side at most (default
        this map's), each cell one position where the region is that narrow."""
        if self.q is None or self.k is None:
            raise ValueError("this AttentionMap was saved without its queries and keys "
                             "(qk=False): zoom needs the model (mesa_viz.attention_map)")
        t0 = time.perf_counter()
        pool = self.pool if pool is None else pool
        rope = Rope(torch.as_tensor(self.inv_freq, dtype=torch.float32), float(self.rope_scaling))
        values, qe, ke = pool_attention(self.resolved(), torch.as_tensor(self.q),
                                        torch.as_tensor(self.k), rope, float(self.scale),
                                        grid=grid or self.grid, pool=pool, region=region,
                                        progress=progress)
        return replace(self, values=values, q_edges=qe, k_edges=ke, pool=pool,
                       region=list(check_region(region, self.seq_len)),
                       seconds={"map": time.perf_counter() - t0}, peak_bytes=None)

    # -- persistence ----------------------------------------------------------------
    _ARRAYS = ("q_edges", "k_edges", "values", "q", "k", "inv_freq")

    def save(self, path: "str | Path", qk: bool = True) -> Path:
        """Write ``path.npz`` (arrays; ``qk=False`` leaves out the queries and
        keys, and with them :meth:`zoom`) and ``path.json`` (the rest)."""
        return save_result(self, path, self._ARRAYS, skip=() if qk else ("q", "k"))

    @classmethod
    def load(cls, path: "str | Path") -> "AttentionMap":
        return load_result(cls, path)
