"""An independent dense reference: the model run once over the whole sequence
with every query/key pair scored at the relative position ``layout(...)`` gives.

RoPE here is written with complex numbers, not with the library's rotate-half
code: channel ``c`` pairs with ``c + rot/2`` (``pairs="half"``: Llama, GPT-NeoX
partial rotary, Phi), with ``c + 1`` for even ``c`` (``"interleaved"``:
Cohere, GLM) or, in the last ``rot`` channels, ``c`` with ``c + rot/2``
(``"rope-last"``: DeepSeek-V3, whose identity rotation de-interleaves);
the model is called with ``position_ids = 0`` so its own rotation is the
identity.  A frequency rule is given as ``inv_freq`` ``[rot/2]`` (PI, NTK,
YaRN: written here from their formulas) or ``[n, rot/2]`` (Dynamic-NTK: the
frequencies position ``p``'s query and key were rotated with; linear layouts
only).
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


def _pairs(x, half, pairs):
    """``(re, im, rest)`` of ``x [..., d]``: the two channels of each RoPE pair
    as the model lays them out, and the channels RoPE leaves alone."""
    d = x.shape[-1]
    if pairs == "half":
        return x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    if pairs == "interleaved":
        return x[..., 0:2 * half:2], x[..., 1:2 * half:2], x[..., 2 * half:]
    if pairs == "rope-last":
        return x[..., d - 2 * half:d - half], x[..., d - half:], x[..., :d - 2 * half]
    raise AssertionError(pairs)


def dense_scores(q, k, rel, inv_freq, pairs="half", rope_scale=1.0):
    """``q [h, n, d]``, ``k [h, n, d]``, ``rel [n, n]`` -> ``[h, n, n]`` scores
    ``rope_scale * Re(sum_c zq_c conj(zk_c) e^{i rel w_c}) + pass``, float64
    (``inv_freq`` ``[half]``, or ``[n, half]`` per position: see
    :func:`_angles`; ``rope_scale``: the product of the cos/sin scalings of
    query and key, which leave the channels RoPE passes alone unscaled)."""
    half = inv_freq.shape[-1]
    q1, q2, q_pass = _pairs(q, half, pairs)
    k1, k2, k_pass = _pairs(k, half, pairs)
    zq, zk = torch.complex(q1, q2), torch.complex(k1, k2)
    phase = torch.exp(1j * _angles(rel, inv_freq))                      # [n, n, half]
    s = torch.einsum("hic,hjc,ijc->hij", zq, zk.conj(), phase).real
    return rope_scale * s + torch.einsum("hid,hjd->hij", q_pass, k_pass)


@contextmanager
def reference_attention(model, rel, mask, query_scale=None, inv_freq=None, pairs="half",
                        rope_scale=1.0, record=None):
    """Within the block, ``model(ids, position_ids=zeros)`` computes dense
    attention with relative positions ``rel [n, n]`` and ``mask [n, n]``
    (``inv_freq``: the model's RoPE frequencies unless given; ``pairs``: how
    the model pairs RoPE channels, module doc; ``rope_scale``: see
    :func:`dense_scores`); ``record``: a dict that gets each layer's
    probabilities ``[head, n, n]`` (float64)."""
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
        s = dense_scores(q, k, rel_t, inv, pairs, rope_scale) * scaling
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


def reference_logits(model, ids, rel, mask, query_scale=None, inv_freq=None, pairs="half",
                     rope_scale=1.0):
    """Logits ``[n, vocab]`` of the dense reference for ``ids [1, n]``."""
    with reference_attention(model, rel, mask, query_scale, inv_freq, pairs, rope_scale), \
            torch.no_grad():
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
    with reference_attention(model, rel, mask, query_scale, inv_freq,
                             record=record), torch.no_grad():
        model(ids, position_ids=torch.zeros_like(ids))
    return record[layer]


def _exponents(model):
    """``2k / d`` for the ``d / 2`` RoPE pairs ``k`` of the model (float64)."""
    dim = 2 * _inv_freq(model).numel()
    return torch.arange(0, dim, 2, dtype=torch.float64) / dim, dim


def pi_inv_freq(model, factor):
    """Position Interpolation: ``theta_k / s`` (positions scaled by ``1/s``)."""
    exps, _ = _exponents(model)
    return 1.0 / model.config.rope_parameters["rope_theta"] ** exps / factor


def ntk_inv_freq(model, factor):
    """NTK-aware: base ``b * s ** (d / (d - 2))``."""
    exps, dim = _exponents(model)
    base = model.config.rope_parameters["rope_theta"] * factor ** (dim / (dim - 2))
    return 1.0 / base ** exps


def yarn_inv_freq(model, train_length, factor, beta_fast=32.0, beta_slow=1.0):
    """YaRN's NTK-by-parts frequencies and its attention factor, as the
    authors' code defines them: pair ``k`` (of ``d/2``, fastest first) is
    kept (``theta_k``) below ``low`` and interpolated (``theta_k / s``) above
    ``high``, with a linear ramp over ``k`` between; ``low = floor(dim(beta_fast))``, ``high =
    ceil(dim(beta_slow))``, where ``dim(r) = d ln(T / (2 pi r)) / (2 ln b)``
    is the pair index making ``r`` rotations in ``T`` tokens.  Returns
    ``(inv_freq [d/2], 0.1 ln s + 1)``."""
    exps, dim = _exponents(model)
    base = model.config.rope_parameters["rope_theta"]
    theta = 1.0 / base ** exps

    def pair_of(rotations):
        return dim * math.log(train_length / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(pair_of(beta_fast)), 0)
    high = min(math.ceil(pair_of(beta_slow)), dim - 1)
    high = high + 0.001 if high == low else high
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    inv_freq = theta / factor * ramp + theta * (1 - ramp)
    return inv_freq, (0.1 * math.log(factor) + 1 if factor > 1 else 1.0)


def rule_frequencies(model, m, n, prefill_length=None):
    """``(inv_freq, rope_scale)`` of the resolved method ``m`` over ``n``
    tokens (a prompt of ``prefill_length``): its frequency rule written from
    the formulas above, ``(None, 1.0)`` for the model's own RoPE."""
    if m.name == "dynamic-ntk":                      # each forward's own frequencies
        prefill = prefill_length or n
        lengths = [max(prefill, p + 1) for p in range(n)]
        return dynamic_ntk_inv_freq(model, m.train_length, m.factor, lengths), 1.0
    if m.name == "pi":
        return pi_inv_freq(model, m.factor), 1.0
    if m.name == "ntk":
        return ntk_inv_freq(model, m.factor), 1.0
    if m.name == "yarn":
        inv, mscale = yarn_inv_freq(model, m.train_length, m.factor, m.beta_fast, m.beta_slow)
        mscale = mscale if m.attention_factor is None else m.attention_factor
        return inv, mscale ** 2         # cos and sin of q and k scaled: rotary part x mscale^2
    return None, 1.0
