"""The attention kernels alone, on random tensors, against the dense reference:
every registered kernel (prefill, a continuation block, decode), the
single-query (decode) Stair path and the GPU paths (near and far key sets
concatenated along the head dimension into one SDPA call; few rows by matmul
and split-K), run here on CPU; the registry, the RoPE tables and the stair
factorisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mesa_viz import kernels
from mesa_viz.kernels import sets as attention_sets
from mesa_viz.methods import METHODS, get_method


from kernel_cases import D, H, attend as _attend, dense as _dense, qkv as _qkv
from kernel_cases import rotary_inv_freq as _inv_freq


MESA_CASES = [
    dict(first_chunk=5, chunk_size=16, last_chunk=16, stair_start=9, stair_width=1),
    dict(first_chunk=5, chunk_size=16, last_chunk=16, stair_start=9, stair_width=4),
    dict(first_chunk=8, chunk_size=12, last_chunk=10, stair_start=16, stair_width=7),
    dict(first_chunk=4, chunk_size=16, last_chunk=16, stair_start=3, stair_width=13),
    dict(first_chunk=5, chunk_size=16, last_chunk=16, stair_start=9, stair_width=4,
         log_scaling=True),
]


def _force_gpu_paths(monkeypatch, few_rows=None):
    """Take the branches the kernels take on CUDA, here on CPU."""
    monkeypatch.setattr(attention_sets, "uses_cpu_paths", lambda q, backend: backend == "eager")
    if few_rows is not None:
        monkeypatch.setattr(attention_sets, "few_rows", lambda q, n: few_rows)


STAIR_CASES = [
    dict(stair_start=9, stair_width=4),
    dict(stair_start=0, stair_width=3),
    dict(stair_start=20, stair_width=1),
    dict(stair_start=3, stair_width=13),
]
#: (method, parameters) of the single-query tests: Mesa's last chunk and Stair PE.
DECODE_CASES = [("mesa", p) for p in MESA_CASES] + [("stair", p) for p in STAIR_CASES]


@pytest.mark.parametrize("gpu", [False, True])
@pytest.mark.parametrize("case", range(len(DECODE_CASES)))
def test_single_query_stair_matches_dense(case, gpu, monkeypatch):
    """Decode steps of many lengths: every split of far keys into a short run and
    full runs of ``stair_width``, including none and all (and the GPU's split
    of the output product by run)."""
    if gpu:
        _force_gpu_paths(monkeypatch)
    method, p = DECODE_CASES[case]
    prefill = 150
    for i in [prefill, prefill + 1, prefill + 3, prefill + p["stair_width"], 217]:
        m = get_method(method, train_length=64, **p).resolve(i + 1, prefill_length=prefill)
        q, k, v = _qkv(1, i + 1, seed=i)
        got = _attend(m, q, k, v, i)
        want = _dense(m, q, k, v, i, D ** -0.5)
        assert (got.double() - want).abs().max().item() <= 1e-5, (case, i)


def _resolved(method, p, prefill=150):
    """The method resolved at each decode position ``i`` (``i + 1`` tokens)."""
    return lambda i: get_method(method, train_length=64, **p).resolve(i + 1,
                                                                      prefill_length=prefill)


def _decode_steps_exact(method, p, seed):
    """Decode steps 150..161 after a 150-token prefill, sharing one memo, each
    equal to the dense reference; returns ``(memo, steps)``."""
    steps, m_for = list(range(150, 162)), _resolved(method, p)
    q, k, v = _qkv(170, 170, seed=seed)
    memo = kernels.DecodeMemo()
    for i, got in zip(steps, _decode_with_memo(m_for, q, k, v, steps, memo)):
        want = _dense(m_for(i), q[:, :, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1], i, D ** -0.5)
        assert (got.double() - want).abs().max().item() <= 1e-5, (method, i)
    return memo, steps


@pytest.mark.parametrize("method,p", [("mesa", MESA_CASES[0]), ("mesa", MESA_CASES[1]),
                                      ("stair", STAIR_CASES[1])])
def test_decode_steps_across_the_groups_regrowth_stay_exact(method, p, monkeypatch):
    """With one free row a group (``GROUP_SLACK = 1``), the far groups regrow
    every few steps (copied into a larger buffer, the new free rows hidden):
    every step still equals the dense reference, and the groups grew."""
    from mesa_viz.kernels import decode_memo
    monkeypatch.setattr(decode_memo, "GROUP_SLACK", 1)
    memo, steps = _decode_steps_exact(method, p, seed=5)
    far = memo._entries[0, "stair-far"]
    assert far.cap == -(-far.hi // far.groups) or far.cap == -(-far.hi // far.groups) + 1
    assert int((far.hidden == 0).sum()) == far.hi


@pytest.mark.parametrize("method,p", [("mesa", MESA_CASES[1]), ("stair", STAIR_CASES[0])])
def test_single_query_stair_equals_the_blocked_path(method, p):
    """The decode path and the residue-class path agree on the same rows."""
    m = get_method(method, train_length=64, **p).resolve(180, prefill_length=150)
    q, k, v = _qkv(2, 180, seed=7)
    two = _attend(m, q, k, v, 178)                       # 2 queries: blocked path
    one = _attend(m, q[:, :, 1:], k, v, 179)             # the second alone: decode path
    assert (two[:, :, 1:] - one).abs().max().item() <= 1e-5


PREFILL_CASES = {
    "mesa": dict(first_chunk=5, chunk_size=16, last_chunk=16, stair_start=9, stair_width=4),
    "mesa-anchored": dict(first_chunk=5, chunk_size=16, last_chunk=16, stair="anchored"),
    "stair": dict(stair_start=9, stair_width=4),
    "stair-from-0": dict(stair_start=0, stair_width=3),
    "rerope": dict(window=20),
    "leaky-rerope": dict(window=20, leak=4.0),
    "streaming-llm": dict(sink_tokens=4),
    "lm-infinite": dict(sink_tokens=4),
    "origin": {},
    "dynamic-ntk": {},
    "self-extend": dict(group_size=3, window=20),
    "self-extend-uneven": dict(group_size=4, window=10),       # G does not divide W
    "dual-chunk": dict(chunk_size=40, local_window=16),
    "dual-chunk-full-window": dict(chunk_size=24, local_window=24),
    "string": dict(shifted_offset=30, local_window=8),
    "string-no-window": dict(shifted_offset=45, local_window=0),
    "pi": {}, "ntk": {}, "yarn": {},
}


def _method_of(case):
    """The method of a case name: the longest name in METHODS it starts with."""
    return next(m for m in sorted(METHODS, key=len, reverse=True)
                if case == m or case.startswith(m + "-"))


def _starts(method):
    """Query blocks to run: the prefill from 0 and, where the method allows a
    prompt in pieces (``decode == "rows"``), a block continuing a cache."""
    return [0] if METHODS[method].decode == "prefill-plan" else [0, 90]


@pytest.mark.parametrize("few_rows", [False, True])
@pytest.mark.parametrize("case", sorted(PREFILL_CASES))
def test_gpu_paths_match_dense(case, few_rows, monkeypatch):
    """On CUDA the near and far key sets go through one SDPA call with the head
    dimension doubled, or, for few query rows, through matmul scores merged by
    log-sum-exp; Mesa's middle chunks through one causal call; origin's blocks
    of a continued prompt through masked SDPA of up to 8192 rows.  Force those
    paths on CPU (with a small score budget, so blocks are several) and check
    them, and the CPU paths, against the reference."""
    method = _method_of(case)
    n = 150
    m = get_method(method, train_length=64, **PREFILL_CASES[case]).resolve(
        n, prefill_length=n)
    for i0 in _starts(method):
        q, k, v = _qkv(n - i0, n, seed=3 + i0)
        want = _dense(m, q, k, v, i0, D ** -0.5)
        with monkeypatch.context() as patch:
            cpu = _attend(m, q, k, v, i0)
            _force_gpu_paths(patch, few_rows)
            patch.setattr(attention_sets, "SCORE_BUDGET", 4 * H * 40 * n)
            gpu = _attend(m, q, k, v, i0)
        assert (cpu.double() - want).abs().max().item() <= 1e-5, i0
        assert (gpu.double() - want).abs().max().item() <= 1e-5, i0


@pytest.mark.parametrize("case", ["mesa", "stair", "stair-from-0"])
@pytest.mark.parametrize("block", [7, 16, 33])
def test_stair_row_blocks_match_dense(case, block, monkeypatch):
    """Per-query Stair PE on CPU in several row blocks (``CPU_BLOCK`` made
    small): each far key group is seen by a block's rows through a prefix of
    the group, unmasked where the first row sees it too, masked at the edge,
    and not at all by rows too early for it; all exact against the reference."""
    method = _method_of(case)
    m = get_method(method, train_length=64, **PREFILL_CASES[case]).resolve(150,
                                                                           prefill_length=150)
    q, k, v = _qkv(150, 150, seed=11)
    monkeypatch.setattr(attention_sets, "CPU_BLOCK", block)
    got = _attend(m, q, k, v, 0)
    assert (got.double() - _dense(m, q, k, v, 0, D ** -0.5)).abs().max().item() <= 1e-5


def test_forced_gpu_origin_blocks_run(monkeypatch):
    """The forced GPU path of a continued prompt really runs blocked masked SDPA
    (not the fused causal kernel, which serves only a prefill from 0)."""
    calls = []
    sdpa = attention_sets.sdpa

    def spy(q, k, v, mask, scale, backend="sdpa"):
        calls.append((q.shape[2], mask is not None))
        return sdpa(q, k, v, mask, scale, backend)

    _force_gpu_paths(monkeypatch)
    monkeypatch.setattr(attention_sets, "sdpa", spy)
    monkeypatch.setattr(attention_sets, "SCORE_BUDGET", 4 * 40 * 150)
    m = get_method("origin", train_length=64).resolve(150)
    q, k, v = _qkv(60, 150, seed=4)
    got = _attend(m, q, k, v, 90)
    assert calls == [(40, True), (20, True)]
    assert (got.double() - _dense(m, q, k, v, 90, D ** -0.5)).abs().max().item() <= 1e-5


#: (method, parameters) of the single-query tests of the near/far and chunk kernels.
ROW_DECODE_CASES = [("self-extend", PREFILL_CASES["self-extend"]),
                    ("self-extend", PREFILL_CASES["self-extend-uneven"]),
                    ("dual-chunk", PREFILL_CASES["dual-chunk"]),
                    ("string", PREFILL_CASES["string"])]


@pytest.mark.parametrize("gpu", [False, True])
@pytest.mark.parametrize("case", range(len(ROW_DECODE_CASES)))
def test_single_query_of_new_methods_matches_dense(case, gpu, monkeypatch):
    """Decode steps at lengths on either side of each boundary of the layout
    (window, group, chunk and local-window edges)."""
    if gpu:
        _force_gpu_paths(monkeypatch)
    method, p = ROW_DECODE_CASES[case]
    for i in [150, 151, 159, 160, 161, 175, 199, 200, 217]:
        m = get_method(method, train_length=64, **p).resolve(i + 1, prefill_length=150)
        q, k, v = _qkv(1, i + 1, seed=i)
        got = _attend(m, q, k, v, i)
        assert (got.double() - _dense(m, q, k, v, i, D ** -0.5)).abs().max().item() <= 1e-5, i


@pytest.mark.parametrize("lk", [10, 64, 100])
def test_split_k_product_equals_matmul(lk):
    """The GPU's split-K ``p @ v`` (blocks of keys, summed) equals the plain product."""
    g = torch.Generator().manual_seed(lk)
    p, v = torch.rand(2, 3, 5, lk, generator=g), torch.randn(2, 3, lk, 8, generator=g)
    got = attention_sets.pv(p, v, split=True, block=16)
    assert torch.allclose(got, p @ v, atol=1e-5)


# -- the registry, the tables, the factorisation ----------------------------------------------

def test_every_method_is_native_or_has_a_kernel():
    for name, cls in METHODS.items():
        assert cls.native or cls in kernels.KERNELS, name
        if cls in kernels.KERNELS:
            assert kernels.kernel_for(cls) is kernels.kernel_for(cls())


def test_kernel_registry_refuses_a_second_entry_and_unknown_methods():
    with pytest.raises(ValueError, match="Stair already has a kernel"):
        kernels.kernel(METHODS["stair"], rules=None)(lambda *a: None)
    assert kernels.KERNELS[METHODS["stair"]].run is kernels.stair.stair
    with pytest.raises(TypeError):
        kernels.KERNELS[METHODS["stair"]] = None                     # read-only view


def test_rope_tables_serve_one_method_only():
    """Tables made for one resolved method are refused for another (or for the
    same method with other parameters): a cache can never be reused stale."""
    a = get_method("stair", train_length=64, stair_start=9, stair_width=4).resolve(150)
    b = get_method("stair", train_length=64, stair_start=9, stair_width=5).resolve(150)
    tables = kernels.RopeTables(kernels.Rope(_inv_freq().float()), a)
    q, k, v = _qkv(150, 150, seed=5)
    kernels.attend(a, q, k, v, 0, tables, D ** -0.5)
    with pytest.raises(ValueError, match="RopeTables made for"):
        kernels.attend(b, q, k, v, 0, tables, D ** -0.5)


@pytest.mark.parametrize("s,N,E", [(0, 4, 2), (37, 9, 4), (100, 0, 3), (64, 20, 1), (50, 3, 13)])
def test_stair_factorisation(s, N, E):
    """``P(i - j) = m + g_r(j)``: the query's step ``m`` minus the key position
    of its residue class, for every query from ``s`` on and every far key."""
    geo = kernels.StairGeometry(s, N, E)
    i = torch.arange(s, s + 60)
    j = torch.arange(0, s + 60)
    far = i[:, None] - j[None, :] >= N
    r = torch.tensor([geo.residue(int(x)) for x in i])
    key = torch.stack([geo.key_position(j, int(rr)) for rr in r])            # [i, j]
    got = geo.step(i)[:, None] - key
    want = torch.as_tensor(np.asarray(METHODS["stair"](stair_start=N, stair_width=E)
                                      .relative(i.numpy()[:, None], j.numpy()[None, :])[0]))
    assert torch.equal(got[far], want[far])


# -- decode steps with the application's memo of rotated keys ----------------------------------

def _decode_with_memo(m_for, q, k, v, steps, memo, layer=0):
    """Decode steps ``steps`` (absolute positions) sharing one ``DecodeMemo``."""
    rope = kernels.Rope(_inv_freq().float())
    outs = []
    for i in steps:
        tables = kernels.RopeTables(rope, m_for(i), memo)
        tables.layer = layer
        outs.append(kernels.attend(m_for(i), q[:, :, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1],
                                   i, tables, D ** -0.5))
    return outs


@pytest.mark.parametrize("method,p", [("mesa", MESA_CASES[1]), ("mesa", MESA_CASES[2]),
                                      ("stair", STAIR_CASES[1]), ("origin", {}),
                                      ("rerope", {}), ("self-extend", {}),
                                      ("streaming-llm", {}), ("dual-chunk", {})])
def test_decode_steps_cut_into_chunks_stay_exact(method, p, monkeypatch):
    """A step's key sets cut into 3 chunks each (flash-decoding, as a step over
    thousands of keys is on the CPU; here forced on 150 keys): Mesa's far
    groups with their hidden rows, the near/far rules' two sets, Origin's one
    set, every step equal to the dense reference."""
    from mesa_viz.kernels import flash_decoding
    cut = []

    def three(batch, kv_heads, n_keys):
        cut.append(n_keys)
        return 3 if n_keys >= 3 else 1
    monkeypatch.setattr(flash_decoding, "decode_chunks", three)
    _decode_steps_exact(method, p, seed=31)
    assert any(n >= 3 for n in cut)


@pytest.mark.parametrize("method,p", [("mesa", MESA_CASES[1]), ("mesa", MESA_CASES[3]),
                                      ("mesa", MESA_CASES[4]), ("stair", STAIR_CASES[0]),
                                      ("stair", STAIR_CASES[1]), ("origin", {})])
def test_decode_steps_reuse_rotated_keys_exactly(method, p):
    """Consecutive decode steps with one memo (far keys kept at ``-(N + a_j)``,
    near keys at ``j``; origin's keys at ``j``): every step equals the dense
    reference, and the memo rotated each key once."""
    memo, steps = _decode_steps_exact(method, p, seed=21)
    m_for = _resolved(method, p)
    last, N = steps[-1], m_for(steps[-1]).params().get("stair_start")
    entries = {slot: e for (_, slot), e in memo._entries.items()}
    if N is None:                                 # origin: one buffer of linear keys
        assert list(entries) == ["lin"] and entries["lin"].hi == last + 1
        return
    # far keys in groups by b_j (every key once), near keys at linear positions
    far, near = entries.pop("stair-far"), entries.pop("stair-near")
    assert not entries and far.hi == last - N + 1 and far.cap * far.groups >= far.hi
    assert near.start == steps[0] - N + 1 and near.hi == last + 1
    assert int((far.hidden == 0).sum()) == far.hi       # every far key in one group row


#: Near/far methods (and Dual Chunk without mscale) whose decode steps keep one memo buffer
#: (far keys at the far rule's positions, the others linear), every set non-empty at 150-161.
NEAR_FAR_DECODE = [("rerope", {}), ("leaky-rerope", {"log_scaling": True}),
                   ("self-extend", {}), ("string", {}), ("streaming-llm", {}),
                   ("lm-infinite", {}), ("mesa", {"stair": "anchored", "stair_start": 9}),
                   ("dual-chunk", {})]


@pytest.mark.parametrize("gpu", [False, True])
@pytest.mark.parametrize("method,p", NEAR_FAR_DECODE)
def test_near_far_decode_steps_reuse_rotated_keys_exactly(method, p, gpu, monkeypatch):
    """Consecutive decode steps of the near/far methods with one memo: every
    step equals the dense reference (CPU and GPU branches), and the memo holds
    one buffer of every key (far keys at the rule's positions, the others at
    their own), each rotated once more when it becomes far."""
    if gpu:
        _force_gpu_paths(monkeypatch)
    memo, steps = _decode_steps_exact(method, p, seed=25)
    (entry,) = memo._entries.values()
    assert entry.start == 0 and entry.hi == steps[-1] + 1 and entry.split > 0


def test_decode_memo_drops_rotations_of_other_keys():
    """A memo entry whose source keys changed (a beam reordering changes the
    last keys; a cropped cache is shorter) is rebuilt: the step stays exact.
    (The application keeps one memo per cache object.)"""
    m = get_method("mesa", train_length=64, **MESA_CASES[1]).resolve(160, prefill_length=150)
    q, k, v = _qkv(170, 170, seed=22)
    memo = kernels.DecodeMemo()
    _decode_with_memo(lambda i: m, q, k, v, [155, 156], memo)
    k2 = k.clone()
    k2[:, :, 150:] += 1.0                                   # another beam's generated keys
    for kk, i in [(k2, 157), (k, 152)]:                     # changed keys; a cropped cache
        got = _decode_with_memo(lambda i: m, q, kk, v, [i], memo)[0]
        want = _dense(m, q[:, :, i:i + 1], kk[:, :, :i + 1], v[:, :, :i + 1], i, D ** -0.5)
        assert (got.double() - want).abs().max().item() <= 1e-5


def test_decode_memo_drops_rotations_with_other_frequencies():
    """A step whose RoPE frequencies differ from the memo's (Dynamic NTK's grow
    with the length at every step) rotates its keys afresh: it equals the same
    step without a memo."""
    m = get_method("origin", train_length=64).resolve(160)
    q, k, v = _qkv(170, 170, seed=23)
    memo, i = kernels.DecodeMemo(), 157
    _decode_with_memo(lambda i: m, q, k, v, [155, 156], memo)
    other = kernels.Rope(_inv_freq().float() / 3)
    tables = kernels.RopeTables(other, m, memo)
    tables.layer = 0
    got = kernels.attend(m, q[:, :, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1], i, tables,
                         D ** -0.5)
    want = kernels.attend(m, q[:, :, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1], i,
                          kernels.RopeTables(other, m), D ** -0.5)
    assert (got - want).abs().max().item() <= 1e-6


# -- flash-attn for flash_attention_2 models ---------------------------------------------------

def _fake_flash_attn(calls):
    """A stand-in for the ``flash_attn`` package: ``flash_attn_func`` with its
    layout ``[b, L, h, d]``, GQA, bottom-right causal alignment and
    ``return_attn_probs`` giving ``(out, softmax_lse, None)``, computed densely."""
    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                        return_attn_probs=False):
        calls.append(causal)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = (q @ k.transpose(-1, -2)).float() * softmax_scale
        if causal:
            L, S = q.shape[2], k.shape[2]
            s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(S - L), -math.inf)
        lse = torch.logsumexp(s, -1)
        out = (torch.exp(s - lse[..., None]) @ v.float()).to(q.dtype).transpose(1, 2)
        return (out, lse, None) if return_attn_probs else out
    fake = type(math)("flash_attn")
    fake.flash_attn_func = flash_attn_func
    return fake


@pytest.mark.parametrize("case", ["mesa", "stair", "rerope", "streaming-llm"])
def test_flash_attn_serves_flash_attention_2_models(case, monkeypatch):
    """With flash-attn importable (a stand-in here), the GPU paths of a
    ``flash_attention_2`` model's kernels call its ``flash_attn_func`` (Mesa's
    middle chunks causally, unmasked key sets with their log-sum-exp) and stay
    exact; without it they use SDPA, said once in the log."""
    method = _method_of(case)
    m = get_method(method, train_length=64, **PREFILL_CASES[case]).resolve(150,
                                                                           prefill_length=150)
    q, k, v = _qkv(150, 150, seed=40)
    want = _dense(m, q, k, v, 0, D ** -0.5)
    calls = []
    _force_gpu_paths(monkeypatch, few_rows=True)
    monkeypatch.setattr(attention_sets, "flash_attn_module",
                        lambda backend: _fake_flash_attn(calls) if backend ==
                        "flash_attention_2" else None)
    got = _attend(m, q, k, v, 0, backend="flash_attention_2")
    assert (got.double() - want).abs().max().item() <= 1e-5
    if method == "mesa":              # middle chunks causally; last chunk's unmasked far keys
        assert True in calls and False in calls
    calls.clear()
    sdpa = _attend(m, q, k, v, 0, backend="sdpa")
    assert not calls and (sdpa.double() - want).abs().max().item() <= 1e-5


def test_without_flash_attn_sdpa_serves_and_says_so(caplog, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_flash(name, *args, **kwargs):
        if name == "flash_attn":
            raise ImportError("no flash_attn here")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_flash)
    attention_sets._flash_attn.cache_clear()
    try:
        with caplog.at_level("INFO", logger="mesa_viz.kernels.sets"):
            assert attention_sets.flash_attn_module("flash_attention_2") is None
            assert attention_sets.flash_attn_module("flash_attention_2") is None
        assert attention_sets.flash_attn_module("sdpa") is None
        said = [r.message for r in caplog.records if "flash-attn is not importable" in r.message]
        assert len(said) == 1 and "SDPA" in said[0]
    finally:
        attention_sets._flash_attn.cache_clear()


def test_blocked_rows_of_the_new_kernels():
    """Where a layout is Origin's the kernel hands it to SDPA's fused causal
    kernel (no blocked rows for the memory estimate); elsewhere every row."""
    def rows(name, n, **p):
        m = get_method(name, train_length=64, **p).resolve(n)
        return kernels.kernel_for(m).blocked_rows(m, n)
    assert rows("self-extend", 60) == 0 and rows("self-extend", 150) == 150
    assert rows("string", 21) == 0 and rows("string", 22) == 22
    assert rows("dual-chunk", 64) == 0 and rows("dual-chunk", 65) == 65
    assert rows("pi", 150) == rows("ntk", 150) == rows("yarn", 150) == 0


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("rows,keys", [(48, 80), (64, 64)])
def test_lower_right_causal_attention_with_grouped_heads(rows, keys, dtype, tol):
    """Mesa's middle chunks on the GPU path: query ``x`` sees keys up to
    ``keys - rows + x``, 8 query heads on 2 key heads, without torch's
    ``causal_lower_right`` bias (it failed on CUDA under GQA in bfloat16)."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(3, 8, rows, 32, generator=g).to(dtype)
    k, v = (torch.randn(3, 2, keys, 32, generator=g).to(dtype) for _ in range(2))
    got = attention_sets.causal_lower_right_sdpa(q, k, v, 0.3)
    kk, vv = (x.repeat_interleave(4, 1).double() for x in (k, v))
    visible = torch.ones(rows, keys, dtype=torch.bool).tril(keys - rows)
    w = (q.double() @ kk.transpose(-1, -2) * 0.3).masked_fill(~visible, -math.inf)
    want = torch.softmax(w, -1) @ vv
    assert got.shape == (3, 8, rows, 32) and got.dtype == dtype
    assert (got.double() - want).abs().max().item() <= tol


def test_memo_under_a_cache_that_keeps_keys_checks_no_probes_and_drops_a_crop():
    """Under a cache that keeps its keys (``forward_starts(CacheState(length,
    keeps_keys=True))``) the memo keeps no probes of a one-row batch (each
    comparison is a device sync on GPU):
    a cache cropped below the memo's keys drops them before the next forward,
    so a crop and keys written again in place stay exact; an untrusted step
    after trusted ones rebuilds rather than trust unchecked keys."""
    m = get_method("mesa", train_length=64, **MESA_CASES[1]).resolve(160, prefill_length=150)
    q, k, v = _qkv(170, 170, seed=24)
    memo = kernels.DecodeMemo()
    for i in (155, 156):
        memo.forward_starts(kernels.CacheState(i, keeps_keys=True))
        _decode_with_memo(lambda i: m, q, k, v, [i], memo)
    entries = list(memo._entries.values())           # Mesa's far keys (grouped) and near keys
    assert all(e.unchecked and e.probe is None for e in entries)
    assert max(e.hi for e in entries) == 157
    k2 = k.clone()
    k2[:, :, 153:] += 1.0                               # cropped to 153, written again
    memo.forward_starts(kernels.CacheState(153, keeps_keys=True))
    assert all(e.hi <= 153 for e in memo._entries.values())   # keys past the crop dropped
    for i in (153, 154, 157):
        memo.forward_starts(kernels.CacheState(i, keeps_keys=True))
        got = _decode_with_memo(lambda i: m, q, k2, v, [i], memo)[0]
        want = _dense(m, q[:, :, i:i + 1], k2[:, :, :i + 1], v[:, :, :i + 1], i, D ** -0.5)
        assert (got.double() - want).abs().max().item() <= 1e-5, i
    memo.forward_starts(kernels.CacheState(158, keeps_keys=False))
    _decode_with_memo(lambda i: m, q, k2, v, [158], memo)
    entries = list(memo._entries.values())
    assert all(isinstance(e.probe, tuple) for e in entries)
    assert max(e.hi for e in entries) == 159 and min(e.start for e in entries) == 0


def test_memo_sees_frequencies_changed_in_place():
    """transformers' LongRoPE updates ``inv_freq`` in place (``copy_``): the
    memo keys its rotations by the tensor and its version, so the step after
    such an update rotates afresh."""
    m = get_method("origin", train_length=64).resolve(160)
    q, k, v = _qkv(170, 170, seed=25)
    inv = _inv_freq().float().clone()
    rope, memo = kernels.Rope(inv), kernels.DecodeMemo()

    def step(i):
        tables = kernels.RopeTables(rope, m, memo)
        tables.layer = 0
        return kernels.attend(m, q[:, :, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1], i, tables,
                              D ** -0.5)
    step(155)
    inv.mul_(0.5)                                       # same tensor, new values
    got = step(156)
    want = kernels.attend(m, q[:, :, 156:157], k[:, :, :157], v[:, :, :157], 156,
                          kernels.RopeTables(kernels.Rope(inv.clone()), m), D ** -0.5)
    assert (got - want).abs().max().item() <= 1e-6


def test_a_moving_far_rule_keeps_the_near_keys(monkeypatch):
    """Leaky-ReRoPE's default leak moves with the length, so its far keys'
    positions change at every step: each step equals the dense reference, the
    layer's memo entry (its buffer) is kept, and only the far keys are rotated
    again (never the near window's)."""
    from mesa_viz.kernels import decode_memo
    memo, rotated = kernels.DecodeMemo(), []
    put = decode_memo._MemoEntry._put
    steps, m_for = list(range(150, 158)), _resolved("leaky-rerope", {})
    assert len({m_for(i).leak for i in steps}) == len(steps)          # a new rule each step
    q, k, v = _qkv(170, 170, seed=31)
    _decode_with_memo(m_for, q, k, v, steps[:1], memo)
    (entry,) = memo._entries.values()
    monkeypatch.setattr(decode_memo._MemoEntry, "_put", lambda self, k, a, b, *rest:
                        rotated.append((a, b)) or put(self, k, a, b, *rest))
    got = _decode_with_memo(m_for, q, k, v, steps[1:], memo)
    for i, out in zip(steps[1:], got):
        want = _dense(m_for(i), q[:, :, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1], i, D ** -0.5)
        assert (out.double() - want).abs().max().item() <= 1e-5
    assert list(memo._entries.values()) == [entry]
    w = m_for(steps[-1]).window
    assert all(a == 0 and b <= steps[-1] + 1 - w for a, b in rotated if b - a > 2)
