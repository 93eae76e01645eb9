"""Random attention inputs and the dense complex-RoPE reference of any method, for
the kernel tests (``tests/unit/kernels``) and the device checks (``tests/gpu``)."""

from __future__ import annotations

import math

import numpy as np
import torch

from mesa_viz import kernels
from reference import dense_scores

H, KVH, D, ROT = 4, 2, 16, 12          # GQA and partial rotary (12 of 16 channels)


def rotary_inv_freq():
    return 1.0 / (10000 ** (torch.arange(0, ROT, 2, dtype=torch.float64) / ROT))


def qkv(lq, lk, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, lq, D, generator=g)
    k = torch.randn(1, KVH, lk, D, generator=g)
    v = torch.randn(1, KVH, lk, D, generator=g)
    return q, k, v


def dense(m, q, k, v, i0, scale, inv_freq=None, softcap=None):
    """``[1, H, Lq, D]`` attention from ``m.relative`` with complex-number RoPE
    (``inv_freq``: default the partial rotary of ``ROT`` channels; ``softcap``:
    logits ``cap * tanh(s / cap)``)."""
    lq, lk = q.shape[2], k.shape[2]
    rel, vis = m.relative(np.arange(i0, i0 + lq)[:, None], np.arange(lk)[None, :])
    rel = torch.as_tensor(np.where(vis, rel, 0), dtype=torch.float64)
    fac = torch.as_tensor(m.query_scale(np.arange(i0, i0 + lq)), dtype=torch.float64)
    kfac = torch.as_tensor(m.key_scale(np.arange(lk)), dtype=torch.float64)
    rep = H // KVH
    kk = k[0].repeat_interleave(rep, 0).double() * kfac[:, None]
    vv = v[0].repeat_interleave(rep, 0).double()
    inv = rotary_inv_freq() if inv_freq is None else inv_freq
    s = dense_scores(q[0].double() * fac[:, None], kk, rel, inv) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~torch.as_tensor(vis), -math.inf)
    return (torch.softmax(s, -1) @ vv)[None]


def attend(m, q, k, v, i0, backend="sdpa"):
    rope = kernels.Rope(rotary_inv_freq().float())
    return kernels.attend(m, q, k, v, i0, rope, D ** -0.5, backend)
