"""Each ``preset="authors-code"`` against a transcription of the authors' released
code, written here from reading that code (not imported): ReRoPE and Leaky-ReRoPE
(bojone/rerope ``rerope_patch.py``, ``leaky_rerope_patch.py``), Self-Extend
(datamllab/LongLM ``self_extend_patch/Llama.py``), Dual Chunk Attention
(HKUNLP/ChunkLlama ``chunkllama_attn_replace.py``) as attention outputs of
random queries, keys and values through ``kernels.attend``; Mesa
(soacker/Mesa-Extrapolation ``methods/mesa_extrapolation.py``) as the positions,
visibility and query scales of every row, prefill and generated."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mesa_viz import kernels
from mesa_viz.methods import resolve
from mesa_viz.methods.mesa_presets import authors_code_values

D = 16
INV = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))   # full rotary


def _qkv(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 2, n, D, generator=g, dtype=torch.float64) for _ in range(3)]


def _rot(x, pos, inv=INV, mscale=1.0):
    """transformers 4.31's ``apply_rotary_pos_emb`` with ``emb = cat(freqs, freqs)``
    at positions ``pos`` (cos and sin times ``mscale``, as ChunkLlama's tables)."""
    f = torch.as_tensor(pos, dtype=torch.float64)[..., None] * inv
    emb = torch.cat((f, f), -1)
    half = x.shape[-1] // 2
    x_half = torch.cat((-x[..., half:], x[..., :half]), -1)
    return x * emb.cos() * mscale + x_half * emb.sin() * mscale


def _softmax_v(w, mask, v):
    return torch.softmax(w.masked_fill(~torch.as_tensor(mask), -math.inf), -1) @ v


def _ours(m, q, k, v, i0=0):
    """mesa_viz's kernel on the same float64 inputs, cast to float32."""
    out = kernels.attend(m, q.float(), k.float(), v.float(), i0, kernels.Rope(INV.float()),
                         D ** -0.5)
    return out.double()


def _log_n(pos, T):
    return (torch.log(torch.as_tensor(pos, dtype=torch.float64) + 1) / math.log(T)).clip(min=1)


# -- ReRoPE and Leaky-ReRoPE ----------------------------------------------------------------

def _rerope_code(q, k, v, T, window, leak=None):
    """``forward_with_rerope`` / ``forward_with_leaky_rerope``, prefill: queries
    times ``log(pos + 1) / log(training_length)`` (clipped at 1); scores at
    ``|i - j| < window`` from ``q, k`` rotated to ``i, j``, else from the query at
    ``window`` (leaky: ``(i + offset) / k``, keys at ``j / k``, ``offset =
    window (k - 1)``)."""
    n = q.shape[2]
    pos = np.arange(n)
    q = q * _log_n(pos, T)[:, None]
    w1 = _rot(q, pos) @ _rot(k, pos).transpose(-1, -2)
    if leak is None:
        w2 = _rot(q, np.full(n, window)) @ k.transpose(-1, -2)
    else:
        off = window * (leak - 1)
        w2 = _rot(q, pos + off, INV / leak) @ _rot(k, pos, INV / leak).transpose(-1, -2)
    i, j = np.indices((n, n))
    w = torch.where(torch.as_tensor(np.abs(i - j) < window), w1, w2) / math.sqrt(D)
    return _softmax_v(w, j <= i, v)


def _rerope_decode_code(q, k, v, T, window):
    """``forward_with_rerope`` with ``q_len == 1``: the new query (times log-n)
    against keys rotated by ``-min(i - j, window)``."""
    i = k.shape[2] - 1
    d = np.minimum(i - np.arange(i + 1), window)
    qs = q * _log_n([i], T)[:, None]
    w = qs @ _rot(k, -d).transpose(-1, -2) / math.sqrt(D)
    return _softmax_v(w, np.ones((1, i + 1), bool), v)


@pytest.mark.parametrize("name,leak", [("rerope", None), ("leaky-rerope", 4.0)])
def test_rerope_authors_code_preset_is_the_released_patch(name, leak):
    """Prefill of 90 tokens at ``T = 32`` (log-n from row 32 on), window 8."""
    T, n, window = 32, 90, 8
    q, k, v = _qkv(n)
    extra = {} if leak is None else {"leak": leak}
    m = resolve(name, n, train_length=T, preset="authors-code", window=window, **extra)
    assert m.log_scaling
    diff = (_ours(m, q, k, v) - _rerope_code(q, k, v, T, window, leak)).abs().max().item()
    assert diff < 2e-5, diff
    paper = resolve(name, n, train_length=T, window=window, **extra)
    assert (_ours(paper, q, k, v) - _rerope_code(q, k, v, T, window, leak)).abs().max() > 1e-3


def test_rerope_decode_step_is_the_released_patch():
    T, n, window = 32, 70, 8
    q, k, v = _qkv(n, seed=1)
    m = resolve("rerope", n, train_length=T, preset="authors-code", window=window)
    got = _ours(m, q[:, :, -1:], k, v, i0=n - 1)
    diff = (got - _rerope_decode_code(q[:, :, -1:], k, v, T, window)).abs().max().item()
    assert diff < 2e-5, diff


# -- Self-Extend ------------------------------------------------------------------------------

def _self_extend_code(q, k, v, G, W):
    """``self_extend_forward`` of ``Llama.py``, prefill: neighbour scores at
    ``i, j``, grouped at ``i // G + W - W / G`` (a float) and ``j // G``; the
    neighbour mask ``tril`` minus the ``tril`` from ``W`` below the diagonal."""
    n = q.shape[2]
    pos = np.arange(n)
    neighbour = _rot(q, pos) @ _rot(k, pos).transpose(-1, -2)
    group = _rot(q, pos // G + W - W / G) @ _rot(k, pos // G).transpose(-1, -2)
    mask = np.tril(np.ones((n, n)))
    mask[W:, :-W] -= np.tril(np.ones((n - W, n - W)))
    w = torch.where(torch.as_tensor(mask.astype(bool)), neighbour, group) / math.sqrt(D)
    return _softmax_v(w, np.tril(np.ones((n, n), bool)), v)


@pytest.mark.parametrize("G,W", [(3, 10), (4, 10), (4, 8)])
def test_self_extend_authors_code_preset_is_llama_py(G, W):
    """The float shift ``W - W / G``; equal to the default ``//`` only where ``G | W``."""
    n = 80
    q, k, v = _qkv(n, seed=2)
    code = _self_extend_code(q, k, v, G, W)
    m = resolve("self-extend", n, train_length=32, preset="authors-code", group_size=G, window=W)
    assert m.shift == "float"
    assert (_ours(m, q, k, v) - code).abs().max().item() < 2e-5
    floor = _ours(resolve("self-extend", n, train_length=32, group_size=G, window=W), q, k, v)
    assert ((floor - code).abs().max().item() < 2e-5) == (W % G == 0)


# -- Dual Chunk Attention -----------------------------------------------------------------------

def _chunkllama_code(q, k, v, T, prompt):
    """``chunkllama_attn_replace.forward`` with ``replace_with_chunkllama(T)``:
    ``chunk_size = 3T/4``, ``local_window = T/8``, chunks of ``cl = chunk_size -
    local_window``; keys at ``j % cl``, queries at ``i % cl`` (own chunk), ``min(cl
    + i % cl, chunk_size)`` (previous chunk), ``min(2 cl - 1, chunk_size)`` (older);
    the rotary tables rebuilt, times ``mscale = 0.05 ln(L / T) + 1``, by every
    forward of ``L > T`` cached keys (a prefill of ``prompt`` tokens, then one per
    generated token), keys cached rotated.  One softmax over the three sets
    (the code merges their flash outputs in bfloat16: not copied)."""
    n = q.shape[2]
    cs, lw = T * 3 // 4, T // 8
    cl = cs - lw

    def mscale(L):
        return 0.05 * math.log(L / T) + 1 if L > T else 1.0

    made = [max(prompt, j + 1) for j in range(n)]            # the forward computing token j
    ks = torch.stack([_rot(k[:, :, j], j % cl, mscale=mscale(made[j])) for j in range(n)], 2)
    rows = []
    for i in range(n):
        gap = i // cl - np.arange(i + 1) // cl
        qpos = np.where(gap == 0, i % cl, np.where(gap == 1, min(cl + i % cl, cs),
                                                   min(2 * cl - 1, cs)))
        qi = torch.stack([_rot(q[:, :, i], p, mscale=mscale(made[i])) for p in qpos], 2)
        w = (qi * ks[:, :, :i + 1]).sum(-1) / math.sqrt(D)
        rows.append((torch.softmax(w, -1)[..., None] * v[:, :, :i + 1]).sum(2))
    return torch.stack(rows, 2)


@pytest.mark.parametrize("T,prompt,n", [(32, 90, 90), (32, 90, 96), (64, 60, 80)])
def test_dual_chunk_authors_code_preset_is_chunkllama(T, prompt, n):
    """Prefill (and generated rows past it, the mscale growing with the cache)."""
    q, k, v = _qkv(n, seed=3)
    code = _chunkllama_code(q, k, v, T, prompt)
    m = resolve("dual-chunk", n, train_length=T, prefill_length=prompt, preset="authors-code")
    assert m.mscale and (m.chunk_size, m.local_window) == (T * 3 // 4 - T // 8, T // 8 + 1)
    got = torch.cat([_ours(m, q[:, :, :prompt], k[:, :, :prompt], v[:, :, :prompt])] + [
        _ours(m, q[:, :, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1], i0=i)
        for i in range(prompt, n)], 2)
    assert (got - code).abs().max().item() < 2e-5
    plain = resolve("dual-chunk", n, train_length=T, prefill_length=prompt,
                    chunk_size=m.chunk_size, local_window=m.local_window)
    assert (_ours(plain, q, k, v) - code).abs().max().item() > 1e-3   # mscale matters past T


# -- Mesa ---------------------------------------------------------------------------------------

def _mesa_code(I, T, n, F=100, L=512, E=50, reserve=50, margin=100, fresh_chunk=1800):
    """``chunk_forward`` and ``attention_chunk_forward`` for a prompt of ``I``
    tokens and generated tokens up to ``n``: ``rel [n, n]`` (-1 where hidden)
    and every query's log-n scale.  ``set_align_position`` splits from ``I >= T
    - reserve`` (else the class default ``context_window_length`` stays); the
    chunk loop feeds the first chunk, then chunks of ``C`` behind the first
    chunk's cache while ``end + C < I``, the rest behind every key; each forward
    of ``kv`` cached keys places them at ``arange(kv)``, or past ``T`` at the
    sorted repeat of ``E`` copies before ``kv - (kv - 1) % C`` (queries take the
    last ``q_len`` entries), and scales queries by ``log(index + 1) / log(T)``."""
    C = fresh_chunk
    if I >= T - reserve:
        R = I + reserve - L - F
        N, M = divmod(R, T - F - margin)
        C = T - F - margin if M < 200 else R // (N + 1)

    def positions(kv):
        if kv <= T:
            return np.arange(kv)
        push = (kv - 1) % C
        last = (kv - push) // E + 1
        pos2 = np.sort(np.repeat(np.arange(kv - push - last, kv - push), E))
        return np.concatenate([pos2, np.arange(kv - push, kv)])[-kv:]

    rel, scale = np.full((n, n), -1.0), np.ones(n)

    def forward(keys, rows):            # keys: cached token indices, rows: the query tokens
        pos = positions(len(keys))
        for r, i in enumerate(rows):
            x = len(keys) - len(rows) + r
            rel[i, keys[:x + 1]] = pos[x] - pos[:x + 1]
            scale[i] = max(1.0, math.log(x + 1) / math.log(T))

    first, beg, end, past = list(range(min(F, I))), 0, F, []
    while beg < I:
        rows = list(range(beg, min(end, I)))
        forward(past + rows, rows)
        past = first if end + C < I else list(range(min(end, I)))
        beg, end = end, end + C
    for i in range(I, n):
        forward(list(range(i + 1)), [i])
    return rel, scale


def _mesa_ours(I, T, n, **params):
    m = resolve("mesa", n, train_length=T, prefill_length=I, preset="authors-code", **params)
    i, j = np.indices((n, n))
    rel, vis = m.relative(i, j)
    return np.where(vis, rel, -1), m.query_scale(np.arange(n)), m


@pytest.mark.parametrize("I,n,L", [
    (1998, 2000, 1024), (2020, 2030, 1024), (2047, 2047, 1024),      # split below T
    (2000, 2060, 512), (1500, 2070, 512), (2047, 2100, 1024),        # generating past T
    (2049, 2052, 1024), (2100, 2100, 1024), (2147, 2150, 1024),      # anchor in the last chunk
    (3122, 3125, 1024), (3223, 3223, 1024),
    (4096, 4100, 512), (3000, 3003, 512),
    (24, 30, 512), (500, 520, 1024), (1500, 1500, 512)])              # short: Origin
def test_mesa_authors_code_preset_is_the_released_code(I, n, L):
    """``T = 2048``: every row's positions, visibility and log-n scale equal the
    released code's, prefill and generated, while generation stays within one
    chunk of the anchor (the code re-anchors every ``C`` generated tokens)."""
    code_rel, code_scale = _mesa_code(I, 2048, n, L=L)
    rel, scale, m = _mesa_ours(I, 2048, n, last_chunk=L)
    assert (rel == code_rel).all()
    assert np.allclose(scale, code_scale, rtol=0, atol=1e-12)


def test_mesa_authors_code_differences_from_the_paper_rule_are_real():
    """What the preset reproduces and the defaults do not: a prompt of 2000
    tokens split below ``T`` (``L = 1024``); query 2048 against key 0 after a
    2000-token prompt (``L = 512``); a prompt whose anchor falls in its last chunk."""
    rel, _, m = _mesa_ours(2000, 2048, 2000, last_chunk=1024)
    assert len(m.plan().chunks) == 4 and m.plan().middle[1] == (1026, 1952)
    assert rel[1951, 99] == 1951 - 1026 + 100 - 99 and rel[1951, 100] == -1
    rel, _, m = _mesa_ours(2000, 2048, 2049)
    assert m.plan().chunks == ((0, 100), (100, 1538), (1538, 2000)) and rel[2048, 0] == 638
    assert resolve("mesa", 2049, train_length=2048, prefill_length=2000).relative(2048, 0)[0] \
        == 2048
    v = authors_code_values(2100, 2048, 100, 1024)
    assert v["stair_start"] < 0                                     # anchor inside the last chunk
    rel, _, m = _mesa_ours(2100, 2048, 2100, last_chunk=1024)
    s, a = m.plan().last_start, m.plan().last_start - m.stair_start + 1
    assert s < a - 1 and rel[s, s] == 0                # rows before the anchor stepped too
    assert rel[a, s] == 1 + (a - 1 - s) // 50 == 19 and rel[a - 1, s] == 18


def test_mesa_authors_code_last_chunk_lengths():
    """At ``L = 512`` the released code's last chunk is 462-661 tokens (``L - 50``
    plus a remainder below 200), at ``L = 1024`` 974-1173, for every prompt
    from ``T + 1`` to ``8T`` (``T = 2048``); the anchor falls inside the last
    chunk only at ``L = 1024`` and 2049-2147, 3122-3221, 3223 tokens."""
    for L, lo, hi in [(512, 462, 661), (1024, 974, 1173)]:
        lasts = [authors_code_values(I, 2048, 100, L)["last_chunk"] for I in range(2049, 16384)]
        assert (min(lasts), max(lasts)) == (lo, hi)
    inside = [I for I in range(2049, 16384)
              if authors_code_values(I, 2048, 100, 1024)["stair_start"] < 0]
    assert inside == [*range(2049, 2148), *range(3122, 3222), 3223]
    assert not any(authors_code_values(I, 2048, 100, 512)["stair_start"] < 0
                   for I in range(2049, 16384))
