"""Flash-decoding on the CPU: one decode step's attention split over its keys.

A decode step has one query row a head, so SDPA's CPU flash kernel, which
shares its work out by (batch, head, query block), gives a thread one head's
whole key range: with few KV heads (GQA) the threads wait on each other, and
each query head reads its KV head's keys again.  Here the query heads of one KV
head are scored together (GQA folded into rows: the keys read once) and a set's
keys are cut into chunks that go to the threads as a batch (split-K, as
Flash-Decoding does on GPUs); each chunk returns its output and log-sum-exp and
the parts merge into one softmax.  A method's step scores several key sets,
each with its own rotation of the query (near keys, far keys, Mesa's far
groups): every set is cut the same way and all parts merge at once.

On SmolLM2-135M's shape (3 KV heads, 2 threads) one layer's step over 16k and
32k keys takes 0.74 and 0.59 of one SDPA call's time (``benchmarks/cpu-decode-groups``).
"""

from __future__ import annotations

import math

import torch

from . import sets

__all__ = ["flash_decode", "uses_flash_decoding", "decode_chunks", "DECODE_CHUNK"]

#: Fewest keys a chunk holds: below ``2 * DECODE_CHUNK`` keys a set is one call.
DECODE_CHUNK = 1024

_flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def uses_flash_decoding(q: torch.Tensor, v: torch.Tensor, backend: str) -> bool:
    """Whether a decode step of ``q`` over values ``v`` runs
    :func:`flash_decode`: tensors on CPU under a fused backend (an eager or
    softcapped backend scores explicitly), values as wide as the keys (the
    flash kernel's own condition)."""
    return backend in sets.FUSED_BACKENDS and sets.uses_cpu_paths(q, backend) \
        and v.shape[-1] == q.shape[-1]


def decode_chunks(batch: int, kv_heads: int, n_keys: int, threads: int | None = None) -> int:
    """Chunks a set of ``n_keys`` keys is cut into: the fewest that give
    every thread the same number of (KV head, chunk) pairs, each chunk of at
    least :data:`DECODE_CHUNK` keys; 1 for a batch of several rows (their
    rows already share the threads out)."""
    t = torch.get_num_threads() if threads is None else threads
    if batch > 1 or t <= 1:
        return 1
    return max(1, min(t // math.gcd(kv_heads, t), n_keys // DECODE_CHUNK))


def flash_decode(key_sets, scale: float, chunks: int | None = None) -> torch.Tensor:
    """One query row a head over several key sets, one softmax.

    ``key_sets``: ``(q [b, h, 1, d], k [b, kv_h, L, d], v [b, kv_h, L, d],
    hidden)``, each set with the query rotated its own way; ``hidden [L]``
    float (0 at a key, ``-inf`` at a row to leave out) or None.  ``chunks``:
    the split of each set (default :func:`decode_chunks`).  Returns ``[b, h,
    1, d]`` in ``q``'s dtype; the parts merge in float32.
    """
    outs, lses = [], []
    for q, k, v, hidden in key_sets:
        n = decode_chunks(k.shape[0], k.shape[1], k.shape[2]) if chunks is None else chunks
        _set_parts(q, k, v, hidden, scale, n, outs, lses)
    q0 = key_sets[0][0]
    lse = torch.cat(lses) if len(lses) > 1 else lses[0]           # [parts, b, kv_h, rep]
    out = torch.cat(outs) if len(outs) > 1 else outs[0]           # [parts, b, kv_h, rep, d_v]
    if lse.shape[0] > 1:      # the parts come stacked: one softmax over them (sets.merge_lse
        # takes a list, a product a part); no row sees only hidden keys (the near set)
        out = (out.float() * torch.softmax(lse, dim=0)[..., None]).sum(0)
    else:
        out = out[0]
    b, h = q0.shape[:2]
    return out.to(q0.dtype).reshape(b, h, 1, -1)


def _set_parts(q, k, v, hidden, scale, n: int, outs: list, lses: list) -> None:
    """Append one set's parts ``[parts, b, kv_h, rep, d_v]`` and their
    log-sum-exps ``[parts, b, kv_h, rep]`` (a part whose keys are all hidden:
    ``-inf``, weight 0): ``n`` equal chunks as one batched call (a batch of
    one row), then the keys left over."""
    b, kvh, L, d = k.shape
    qf = q.reshape(b, kvh, -1, d)                       # the query heads of a KV head as rows
    c = L // n if n > 1 else 0
    cut = n * c
    if n > 1 and b == 1:
        kc = k[0, :, :cut].unflatten(1, (n, c)).transpose(0, 1)      # [n, kv_h, c, d]
        vc = v[0, :, :cut].unflatten(1, (n, c)).transpose(0, 1)
        mask = None if hidden is None else hidden[:cut].view(n, 1, 1, c)
        o, lse = _scored(qf.expand(n, -1, -1, -1), kc, vc, mask, scale)
        outs.append(o[:, None])
        lses.append(lse[:, None])
    else:
        cut = 0
    if cut < L:
        mask = None if hidden is None else hidden[cut:].view(1, 1, 1, L - cut)
        o, lse = _scored(qf, k[:, :, cut:], v[:, :, cut:], mask, scale)
        outs.append(o[None])
        lses.append(lse[None])


def _scored(q, k, v, mask, scale):
    """SDPA's CPU flash kernel with its log-sum-exp; ``mask [n, 1, 1, c]``
    float (``-inf`` hides a row): a chunk with no visible row gets ``lse =
    -inf`` (the kernel gives it 0)."""
    if mask is None:
        return _flash_cpu(q, k, v, 0.0, False, scale=scale)
    o, lse = _flash_cpu(q, k, v, 0.0, False, attn_mask=mask.to(q.dtype), scale=scale)
    seen = (mask > -math.inf).any(-1)                    # [n, 1, 1]
    return o, lse.masked_fill(~seen, -math.inf)
