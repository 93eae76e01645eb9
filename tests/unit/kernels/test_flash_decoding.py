"""Flash-decoding on the CPU (``kernels/flash_decoding.py``): one query row a
head over key sets cut into chunks, against one softmax over their union."""

from __future__ import annotations

import math

import pytest
import torch

from mesa_viz.kernels import flash_decoding
from mesa_viz.kernels.flash_decoding import decode_chunks, flash_decode


def _union(key_sets, scale):
    """The reference: every set's scores in float64, one softmax, ``[b, h, 1, d_v]``."""
    logits, values = [], []
    for q, k, v, hidden in key_sets:
        rep = q.shape[1] // k.shape[1]
        kk = k.double().repeat_interleave(rep, 1)
        s = torch.matmul(q.double(), kk.transpose(-1, -2)) * scale
        logits.append(s if hidden is None else s + hidden.double())
        values.append(v.double().repeat_interleave(rep, 1))
    p = torch.softmax(torch.cat(logits, -1), dim=-1)
    return torch.matmul(p, torch.cat(values, 2))


def _sets(b, h, kvh, lengths, seed, hide=()):
    """Key sets of ``lengths`` keys (random queries of their own); set ``s``
    hides rows ``hide[s]`` (a slice) where given."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, L in enumerate(lengths):
        q = torch.randn(b, h, 1, 16, generator=g)
        k, v = torch.randn(b, kvh, L, 16, generator=g), torch.randn(b, kvh, L, 16, generator=g)
        hidden = None
        if n < len(hide) and hide[n] is not None:
            hidden = torch.zeros(L)
            hidden[hide[n]] = -math.inf
        out.append((q, k, v, hidden))
    return out


@pytest.mark.parametrize("chunks", [1, 2, 3, 5])
@pytest.mark.parametrize("batch", [1, 2])
def test_sets_cut_into_chunks_equal_one_softmax(chunks, batch):
    """Three sets (one with hidden rows, one cut unevenly with keys left over)
    under every split equal the softmax over their union."""
    sets = _sets(batch, 6, 2, [97, 40, 13], seed=chunks,
                 hide=(slice(30, 45), None, slice(0, 3)))
    got = flash_decode(sets, 0.25, chunks=chunks)
    assert got.shape == (batch, 6, 1, 16)
    assert (got.double() - _union(sets, 0.25)).abs().max().item() <= 1e-5


def test_a_chunk_whose_rows_are_all_hidden_has_no_weight():
    """SDPA's CPU flash kernel gives a row that sees no key a log-sum-exp of 0,
    not -inf: a chunk of hidden rows alone (the free rows after a far group)
    must add nothing."""
    sets = _sets(1, 4, 2, [64, 9], seed=3, hide=(slice(32, 64),))
    got = flash_decode(sets, 0.5, chunks=4)              # chunks 2 and 3: hidden rows only
    assert (got.double() - _union(sets, 0.5)).abs().max().item() <= 1e-5


def test_bfloat16_merges_in_float32():
    """bfloat16 sets: within bfloat16's rounding of the float64 reference."""
    sets = [(q.bfloat16(), k.bfloat16(), v.bfloat16(), hidden)
            for q, k, v, hidden in _sets(1, 6, 3, [300, 20], seed=9, hide=(slice(0, 7),))]
    got = flash_decode(sets, 0.25, chunks=3)
    assert got.dtype == torch.bfloat16
    assert (got.double() - _union(sets, 0.25)).abs().max().item() <= 2e-2


@pytest.mark.parametrize("batch,kv_heads,n_keys,threads,want", [
    (1, 3, 8192, 2, 2),       # SmolLM2: 3 KV heads on 2 threads, 6 pairs
    (1, 8, 32768, 16, 2),     # 8 KV heads on 16 threads
    (1, 1, 32768, 16, 16),    # multi-query: one chunk a thread
    (1, 32, 32768, 16, 1),    # no GQA: the heads already share the threads
    (1, 1, 3000, 16, 2),      # chunks of at least DECODE_CHUNK keys
    (1, 3, 1500, 2, 1),
    (2, 3, 32768, 2, 1),      # a batch of rows: no split
    (1, 3, 32768, 1, 1),      # one thread
])
def test_decode_chunks(batch, kv_heads, n_keys, threads, want):
    assert flash_decoding.DECODE_CHUNK == 1024
    assert decode_chunks(batch, kv_heads, n_keys, threads) == want


def test_keys_and_values_packed_in_one_tensor():
    """Keys and values read as two halves of one cache row (vLLM's KV layout
    ``[..., 2 * head_dim]``, as the plugin hands them over): strided chunks,
    the same result."""
    g = torch.Generator().manual_seed(4)
    q = torch.randn(1, 6, 1, 16, generator=g)
    kv = torch.randn(1, 3, 70, 32, generator=g)
    k, v = kv[..., :16], kv[..., 16:]
    sets = [(q, k, v, None)]
    want = _union([(q, k.contiguous(), v.contiguous(), None)], 0.25)
    for chunks in (1, 2, 3):
        assert (flash_decode(sets, 0.25, chunks=chunks).double() - want).abs().max() <= 1e-5


def test_values_narrower_than_keys_keep_the_explicit_scores():
    """The flash kernel takes values as wide as the keys only: a step over
    narrower values is not sent to it."""
    from mesa_viz.kernels.flash_decoding import uses_flash_decoding
    q = torch.randn(1, 4, 1, 16)
    assert uses_flash_decoding(q, torch.randn(1, 2, 9, 16), "sdpa")
    assert not uses_flash_decoding(q, torch.randn(1, 2, 9, 12), "sdpa")
    assert not uses_flash_decoding(q, torch.randn(1, 2, 9, 16), "eager")


def test_the_one_layer_benchmark_writes_its_rows(tmp_path):
    """``benchmarks/cpu-decode-groups/one_layer.py``: the machine's row, then
    one row a length with both timings and the two results' difference."""
    import json
    import runpy
    import sys
    from pathlib import Path
    script = Path(__file__).parents[3] / "benchmarks" / "cpu-decode-groups" / "one_layer.py"
    out = tmp_path / "one_layer.jsonl"
    argv = sys.argv
    sys.argv = [str(script), "--lengths", "2100,700", "--calls", "3", "--out", str(out)]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    machine, *rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert machine["kind"] == "machine" and machine["threads"] >= 1
    assert [r["keys"] for r in rows] == [2100, 700]
    assert all(r["sdpa_us"] > 0 and r["flash_decoding_us"] > 0 for r in rows)
    assert max(r["max_abs_diff"] for r in rows) <= 1e-5
