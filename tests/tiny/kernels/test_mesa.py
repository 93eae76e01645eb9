"""Mesa's kernel with ``chunk_overlap`` against the dense reference of the
layout: the kernel alone on random tensors (every backend branch of the middle
chunks: CPU flash sub-blocks, the GPU's lower-right causal SDPA forced on CPU,
eager masks; a prompt in pieces), and a tiny model's prefill and generated
tokens; the refusal at ``apply``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mesa_viz as mv
from mesa_viz.kernels import sets
from mesa_viz.methods import get_method
from kernel_cases import D, H, attend, dense, qkv
from reference import reference_logits, rule_frequencies

T = 64
#: Middle chunks (5, 21), (21, 37), ... behind a first chunk of 5 tokens.
CHUNKS = dict(first_chunk=5, chunk_size=16, last_chunk=16, stair_start=9, stair_width=4)
#: Overlaps: shorter than a chunk, a whole chunk, longer (reaching back two chunks).
OVERLAPS = [6, 16, 20]


def _method(overlap, n=150):
    return get_method("mesa", train_length=T, chunk_overlap=overlap, **CHUNKS).resolve(
        n, prefill_length=n)


@pytest.mark.parametrize("path", ["cpu", "eager", "gpu"])
@pytest.mark.parametrize("overlap", OVERLAPS)
def test_kernel_equals_dense_reference_on_every_backend_branch(overlap, path, monkeypatch):
    m, n = _method(overlap), 150
    q, k, v = qkv(n, n, seed=overlap)
    want = dense(m, q, k, v, 0, D ** -0.5)
    if path == "gpu":                                # the CUDA branch (lower-right SDPA), on CPU
        monkeypatch.setattr(sets, "uses_cpu_paths", lambda q, backend: backend == "eager")
        monkeypatch.setattr(sets, "SCORE_BUDGET", 4 * H * 40 * n)
    got = attend(m, q, k, v, 0, "eager" if path == "eager" else "sdpa")
    assert (got.double() - want).abs().max().item() <= 1e-5
    without = dense(_method(0), q, k, v, 0, D ** -0.5)
    assert (got.double() - without).abs().max().item() > 1e-2      # the overlap is seen


@pytest.mark.parametrize("overlap", OVERLAPS)
def test_kernel_in_pieces_reads_the_overlap_from_earlier_pieces(overlap):
    """Each piece of :meth:`Mesa.prefill_pieces` (a middle chunk's overlap in
    the piece before it) against the dense rows of the whole prompt."""
    m, n = _method(overlap), 150
    q, k, v = qkv(n, n, seed=30 + overlap)
    want = dense(m, q, k, v, 0, D ** -0.5)
    pieces = m.prefill_pieces(n, 20)
    assert len(pieces) > 4
    for a, b in pieces:
        got = attend(m, q[:, :, a:b], k[:, :, :b], v[:, :, :b], a)
        assert (got.double() - want[:, :, a:b]).abs().max().item() <= 1e-5, (a, b)


def _reference(model, ids, prefill_length, **params):
    n = ids.shape[1]
    lay = mv.layout("mesa", n, prefill_length=prefill_length, **params)
    m = mv.methods.resolve("mesa", n, prefill_length=prefill_length, **params)
    inv_freq, rope_scale = rule_frequencies(model, m, n, prefill_length)
    return reference_logits(model, ids, lay.relative_positions, lay.mask,
                            m.query_scale(np.arange(n)), inv_freq, rope_scale=rope_scale)


@pytest.mark.parametrize("piece_tokens", [None, 24])
def test_tiny_model_prefill_and_generation_equal_the_dense_reference(tiny, piece_tokens):
    """Past T: the prefill's logits (in one forward and in pieces) and 4
    greedy steps equal the reference of the layout with the overlap, and
    differ from the layout without it."""
    n, steps = 150, 4
    params = dict(CHUNKS, train_length=T, chunk_overlap=6)
    ids = torch.randint(0, 500, (1, n), generator=torch.Generator().manual_seed(4))
    pieces = {} if piece_tokens is None else dict(piece_tokens=piece_tokens)
    with mv.apply(tiny, "mesa", **params, **pieces), torch.no_grad():
        prefill = tiny(ids).logits[0].double()
        out = tiny.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                            do_sample=False, output_logits=True,
                            return_dict_in_generate=True, pad_token_id=0)
    generated = torch.stack(out.logits, 1)[0].double()                    # [steps, vocab]
    ref = _reference(tiny, out.sequences[:, :n + steps - 1], n, **params)
    assert (prefill - ref[:n]).abs().max().item() <= 1e-4
    assert (generated - ref[n - 1:]).abs().max().item() <= 1e-4
    paper = _reference(tiny, ids, n, **dict(params, chunk_overlap=0))
    assert (prefill - paper).abs().max().item() > 1e-3


def test_apply_refuses_an_overlap_past_train_length(tiny_llama):
    with pytest.raises(ValueError, match=r"first_chunk=8 \+ chunk_overlap=41 \+ chunk_size=16 "
                                         r"= 65 exceeds train_length=64"):
        with mv.apply(tiny_llama, "mesa", train_length=T, first_chunk=8, chunk_size=16,
                      chunk_overlap=41):
            pass
