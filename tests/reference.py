"""An independent dense reference: the model run once over the whole sequence
with every query/key pair scored at the relative position ``layout(...)`` gives.

RoPE here is written with complex numbers (channel ``c`` pairs with
``c + rot/2``), not with the library's rotate-half code; the model is called
with ``position_ids = 0`` so its own rotation is the identity.  A frequency
rule (Dynamic-NTK) is given as ``inv_freq [n, rot/2]``: the frequencies
position ``p``'s query and key were rotated with (linear layouts only).
"""

from __future__ import annotations

import math
import uuid
from contextlib import contextmanager

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface


def _inv_freq(model):
    """The model's own RoPE frequencies ``[rot/2]`` (float64)."""
    for name, mod in model.named_modules():
        if name.endswith("rotary_emb"):
            return mod.inv_freq.detach().to(torch.float64)
    raise AssertionError("no rotary embedding")


def _angles(rel, inv_freq):
    """``[n, n, half]`` rotation angles: ``rel * w`` for one set of frequencies
    ``w [half]``; ``i * w_i - j * w_j`` for per-position ones ``w [n, half]``
    (then ``rel`` must be linear, ``i - j``)."""
    if inv_freq.dim() == 1:
        return rel[..., None] * inv_freq
    n = inv_freq.shape[0]
    pos = torch.arange(n, dtype=torch.float64)
    i, j = torch.meshgrid(pos, pos, indexing="ij")
    assert torch.equal(torch.where(i >= j, rel, 0.0), torch.where(i >= j, i - j, 0.0))
    a = pos[:, None] * inv_freq                                         # [n, half]
    return a[:, None, :] - a[None, :, :]


def dense_scores(q, k, rel, inv_freq):
    """``q [h, n, d]``, ``k [h, n, d]``, ``rel [n, n]`` -> ``[h, n, n]`` scores
    ``Re(sum_c zq_c conj(zk_c) e^{i rel w_c}) + pass``, float64 (``inv_freq``
    ``[half]``, or ``[n, half]`` per position: see :func:`_angles`)."""
    half = inv_freq.shape[-1]
    rd = 2 * half
    zq = torch.complex(q[..., :half], q[..., half:rd])
    zk = torch.complex(k[..., :half], k[..., half:rd])
    phase = torch.exp(1j * _angles(rel, inv_freq))                      # [n, n, half]
    s = torch.einsum("hic,hjc,ijc->hij", zq, zk.conj(), phase).real
    return s + torch.einsum("hid,hjd->hij", q[..., rd:], k[..., rd:])


@contextmanager
def reference_attention(model, rel, mask, query_scale=None, inv_freq=None, record=None):
    """Within the block, ``model(ids, position_ids=zeros)`` computes dense
    attention with relative positions ``rel [n, n]`` and ``mask [n, n]``
    (``inv_freq``: the model's RoPE frequencies unless given); ``record``: a
    dict that gets each layer's probabilities ``[head, n, n]`` (float64)."""
    inv = _inv_freq(model) if inv_freq is None else torch.as_tensor(inv_freq, dtype=torch.float64)
    rel_t = torch.as_tensor(np.where(mask, rel, 0), dtype=torch.float64)
    mask_t = torch.as_tensor(mask)
    qs = None if query_scale is None else torch.as_tensor(query_scale, dtype=torch.float64)

    def attn(module, query, key, value, attention_mask, scaling=None, **kw):
        q = query[0].to(torch.float64)
        if qs is not None:
            q = q * qs[:, None]
        rep = query.shape[1] // key.shape[1]
        k = key[0].repeat_interleave(rep, 0).to(torch.float64)
        v = value[0].repeat_interleave(rep, 0).to(torch.float64)
        s = dense_scores(q, k, rel_t, inv) * scaling
        s = s.masked_fill(~mask_t, -math.inf)
        probs = torch.softmax(s, -1)
        if record is not None:
            record[module.layer_idx] = probs
        out = probs @ v
        return out.to(query.dtype)[None].transpose(1, 2).contiguous(), None

    name = f"reference_{uuid.uuid4().hex[:8]}"
    AttentionInterface.register(name, attn)
    AttentionMaskInterface.register(name, lambda *a, **k: None)
    old = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(old)
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)


def reference_logits(model, ids, rel, mask, query_scale=None, inv_freq=None):
    """Logits ``[n, vocab]`` of the dense reference for ``ids [1, n]``."""
    with reference_attention(model, rel, mask, query_scale, inv_freq), torch.no_grad():
        pos = torch.zeros_like(ids)
        return model(ids, position_ids=pos).logits[0].to(torch.float64)


def dynamic_ntk_inv_freq(model, train_length, factor, lengths):
    """Dynamic-NTK frequencies ``[len(lengths), rot/2]``, written from the
    formula (not transformers' code): for a forward over ``L > T`` tokens
    ``base' = base * (factor * L / T - (factor - 1)) ** (d / (d - 2))``."""
    rp = model.config.rope_parameters
    dim = 2 * _inv_freq(model).numel()
    exps = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    rows = []
    for L in lengths:
        base = rp["rope_theta"]
        if L > train_length:
            base = base * (factor * L / train_length - (factor - 1)) ** (dim / (dim - 2))
        rows.append(1.0 / base ** exps)
    return torch.stack(rows)


def reference_probs(model, ids, rel, mask, layer, query_scale=None, inv_freq=None):
    """Probabilities ``[head, n, n]`` (float64) of decoder ``layer`` in the dense
    reference run of ``ids [1, n]``."""
    record = {}
    with reference_attention(model, rel, mask, query_scale, inv_freq, record), torch.no_grad():
        model(ids, position_ids=torch.zeros_like(ids))
    return record[layer]
