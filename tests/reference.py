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
only).  Attention logit softcapping (Gemma 2) is read from the model's own
call (``softcap``) and applied as ``cap * tanh(s / cap)`` to the scaled scores;
``per_layer`` gives some layers their own positions, mask and frequencies
(sliding-window layers that keep the model's own attention, per-layer-type
RoPE: :func:`hybrid_layers`; a method within a window above the training
length: :func:`window_above`).
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
    """The model's own RoPE frequencies ``[rot/2]`` (float64): of the
    full-attention layers where the rotary keeps one set per layer type;
    GPT-J's table rows ``p / 10000 ** (2k / rot)``, from the formula."""
    for name, mod in model.named_modules():
        if name.endswith("rotary_emb") and hasattr(mod, "embed_positions"):
            dim = mod.pos_embd_dim
            return 1.0 / 10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        if name.endswith("rotary_emb"):
            inv = getattr(mod, "full_attention_inv_freq", None)
            return (mod.inv_freq if inv is None else inv).detach().to(torch.float64)
    raise AssertionError("no rotary embedding")


def rope_theta(model, layer_type="full_attention"):
    """The RoPE base of ``layer_type``'s layers (RoPE parameters given per
    layer type: Gemma 3, OLMo 3), else the model's one base."""
    rp = model.config.rope_parameters
    return (rp[layer_type] if isinstance(rp.get(layer_type), dict) else rp)["rope_theta"]


def hybrid_layers(model, n, train_length, nope_full=False):
    """``per_layer`` for :func:`reference_logits`: each sliding-window layer
    whose window ``W <= train_length`` at true positions ``i - j``, seeing
    keys ``i - W < j <= i``, rotated with its layer type's base from the
    formula ``1 / b ** (2k / d)``, no query scale; ``nope_full``: the
    full-attention layers rotate nothing (Cohere 2)."""
    cfg = model.config
    W = cfg.sliding_window
    types = getattr(cfg, "layer_types", None) or ["sliding_attention"] * cfg.num_hidden_layers
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    dim = 2 * _inv_freq(model).numel()
    layers = {}
    for layer, kind in enumerate(types):
        if kind == "sliding_attention" and W is not None and W <= train_length:
            theta = rope_theta(model, kind)
            inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
            layers[layer] = dict(rel=i - j, mask=(j <= i) & (i - j < W), inv_freq=inv,
                                 query_scale=None, rope_scale=1.0)
        elif nope_full and kind == "full_attention":
            layers[layer] = dict(inv_freq=torch.zeros(dim // 2, dtype=torch.float64),
                                 rope_scale=1.0)
    return layers


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


def window_above(model, mask, train_length):
    """``per_layer`` for :func:`reference_logits`: each sliding-window layer
    whose window ``W > train_length`` runs the method within its window,
    the method's relative positions where the method's ``mask [n, n]`` and
    ``i - j < W`` both let query ``i`` see key ``j``."""
    cfg = model.config
    W = cfg.sliding_window
    types = getattr(cfg, "layer_types", None) or ["sliding_attention"] * cfg.num_hidden_layers
    n = mask.shape[0]
    near = np.arange(n)[:, None] - np.arange(n)[None, :] < (W or 0)
    return {layer: dict(mask=np.asarray(mask) & near) for layer, kind in enumerate(types)
            if kind == "sliding_attention" and W is not None and W > train_length}


def _rule(rel, mask, query_scale, inv_freq, rope_scale):
    """One layer's ``(rel, mask, query_scale, inv_freq, rope_scale)`` as tensors."""
    return (torch.as_tensor(np.where(mask, rel, 0), dtype=torch.float64),
            torch.as_tensor(mask),
            None if query_scale is None else torch.as_tensor(query_scale, dtype=torch.float64),
            torch.as_tensor(inv_freq, dtype=torch.float64), rope_scale)


@contextmanager
def reference_attention(model, rel, mask, query_scale=None, inv_freq=None, pairs="half",
                        rope_scale=1.0, record=None, per_layer=None):
    """Within the block, ``model(ids, position_ids=zeros)`` computes dense
    attention with relative positions ``rel [n, n]`` and ``mask [n, n]``
    (``inv_freq``: the model's RoPE frequencies unless given; ``pairs``: how
    the model pairs RoPE channels, module doc; ``rope_scale``: see
    :func:`dense_scores`); ``record``: a dict that gets each layer's
    probabilities ``[head, n, n]`` (float64); ``per_layer``: layer index ->
    a dict replacing some of ``rel, mask, query_scale, inv_freq,
    rope_scale`` for that layer (:func:`hybrid_layers`)."""
    inv = _inv_freq(model) if inv_freq is None else inv_freq
    shared = dict(rel=rel, mask=mask, query_scale=query_scale, inv_freq=inv,
                  rope_scale=rope_scale)
    rules = {layer: _rule(**{**shared, **own}) for layer, own in (per_layer or {}).items()}
    default = _rule(**shared)

    def attn(module, query, key, value, attention_mask, scaling=None, softcap=None, **kw):
        rel_t, mask_t, qs, inv, rope_scale = rules.get(module.layer_idx, default)
        q = query[0].to(torch.float64)
        if qs is not None:
            q = q * qs[:, None]
        rep = query.shape[1] // key.shape[1]
        k = key[0].repeat_interleave(rep, 0).to(torch.float64)
        v = value[0].repeat_interleave(rep, 0).to(torch.float64)
        s = dense_scores(q, k, rel_t, inv, pairs, rope_scale) * scaling
        if softcap is not None:
            s = softcap * torch.tanh(s / softcap)
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
                     rope_scale=1.0, per_layer=None):
    """Logits ``[n, vocab]`` of the dense reference for ``ids [1, n]``
    (``per_layer``: see :func:`reference_attention`)."""
    with reference_attention(model, rel, mask, query_scale, inv_freq, pairs, rope_scale,
                             per_layer=per_layer), torch.no_grad():
        pos = torch.zeros_like(ids)
        return model(ids, position_ids=pos).logits[0].to(torch.float64)


def dynamic_ntk_inv_freq(model, train_length, factor, lengths):
    """Dynamic-NTK frequencies ``[len(lengths), rot/2]``, written from the
    formula (not transformers' code): for a forward over ``L > T`` tokens
    ``base' = base * (factor * L / T - (factor - 1)) ** (d / (d - 2))``."""
    dim = 2 * _inv_freq(model).numel()
    exps = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    rows = []
    for L in lengths:
        base = rope_theta(model)
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
    return 1.0 / rope_theta(model) ** exps / factor


def ntk_inv_freq(model, factor):
    """NTK-aware: base ``b * s ** (d / (d - 2))``."""
    exps, dim = _exponents(model)
    base = rope_theta(model) * factor ** (dim / (dim - 2))
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
    base = rope_theta(model)
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


#: ALiBi families: the decoder block's bias argument (read from each family's
#: modeling code: this table, not the library's).
ALIBI_ARGUMENT = {"mpt": "position_bias", "bloom": "alibi"}


def alibi_slopes_of_paper(heads: int) -> torch.Tensor:
    """The ALiBi paper's slopes ``2^(-8k/heads)``, ``k = 1..heads`` (a power of
    two heads: MPT and BLOOM agree there), float64."""
    assert heads & (heads - 1) == 0, heads
    return 2.0 ** (-8.0 * torch.arange(1, heads + 1, dtype=torch.float64) / heads)


def alibi_reference_logits(model, ids, rel, mask):
    """Logits ``[n, vocab]`` of ``ids [1, n]`` run once with no cache, every
    block's ALiBi bias replaced by ``-slope_h * rel [n, n]`` (``-inf`` where
    ``mask`` hides the key), made in float64 from the paper's slopes."""
    kind = model.config.model_type
    heads = int(model.config.num_attention_heads)
    rel_t = torch.as_tensor(np.where(mask, rel, 0), dtype=torch.float64)
    bias = -alibi_slopes_of_paper(heads)[:, None, None] * rel_t
    bias = bias.masked_fill(~torch.as_tensor(mask), -math.inf).to(torch.float32)

    def swap(module, args, kwargs):
        return args, {**kwargs, ALIBI_ARGUMENT[kind]: bias}

    blocks = next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList))
    handles = [b.register_forward_pre_hook(swap, with_kwargs=True) for b in blocks]
    try:
        with torch.no_grad():
            return model(ids, use_cache=False).logits[0].to(torch.float64)
    finally:
        for h in handles:
            h.remove()
