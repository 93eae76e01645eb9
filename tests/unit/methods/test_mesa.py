"""Mesa's ``chunk_overlap`` in the layout: which keys a middle-chunk query
sees and at which positions, what it leaves as it was, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest

import mesa_viz as mv
from mesa_viz.methods import get_method, parameters
from mesa_viz.methods.base import Slider

#: Chunks (0, 5), (5, 21), (21, 37), ... of 16 tokens behind a first chunk of 5.
CHUNKS = dict(first_chunk=5, chunk_size=16, last_chunk=16)


def _resolved(overlap, n=150, T=64):
    return get_method("mesa", chunk_overlap=overlap, **CHUNKS).resolve(n, T)


def _seen(m, i, n=150):
    """The keys query ``i`` sees and their relative positions ``i - j`` in the layout."""
    j = np.arange(n)
    rel, vis = m.relative(np.full(n, i), j)
    return j[vis], rel[vis]


def test_a_middle_chunk_sees_the_overlap_at_linear_positions_after_the_first_chunk():
    m = _resolved(6)
    keys, rel = _seen(m, 25)             # 5th query of the chunk (21, 37)
    assert list(keys) == list(range(5)) + list(range(15, 26))
    # the query at position F + k + 4 = 15: first chunk at 0..4, overlap at 5..10, itself 11..15
    assert list(15 - rel) == list(range(5)) + list(range(5, 16))
    paper = _resolved(0)
    keys0, rel0 = _seen(paper, 25)
    assert list(keys0) == list(range(5)) + list(range(21, 26))
    assert list(9 - rel0) == list(range(10))


def test_the_first_middle_chunk_has_no_overlap_and_the_last_chunk_is_unchanged():
    m, paper = _resolved(6), _resolved(0)
    keys, rel = _seen(m, 10)              # first middle chunk (5, 21): linear, as without
    assert list(keys) == list(range(11)) and list(rel) == list(10 - keys)
    s = m.plan().last_start
    rows, cols = np.arange(s, 150)[:, None], np.arange(150)[None, :]
    for a, b in zip(m.relative(rows, cols), paper.relative(rows, cols)):
        assert np.array_equal(a, b)
    assert m.plan() == paper.plan()


def test_an_overlap_longer_than_a_chunk_reaches_earlier_middle_chunks_not_the_first():
    m = _resolved(20)
    keys, _ = _seen(m, 21)                # chunk (21, 37): 16 tokens after the first chunk
    assert list(keys) == list(range(22))
    keys, rel = _seen(m, 40)              # chunk (37, 53): the 20 tokens 17..36 before it
    assert list(keys) == list(range(5)) + list(range(17, 41))
    assert rel[0] == 40 - 17 + 5          # the query at position F + 20 + 3 = 28


@pytest.mark.parametrize("overlap", [0, 3, 16, 43])
def test_positions_stay_below_train_length_and_pairs_are_counted(overlap):
    m = _resolved(overlap)
    n = 150
    rel, vis = m.relative(np.arange(n)[:, None], np.arange(n)[None, :])
    s = m.plan().last_start
    # the last middle-chunk query's position: F + overlap + C - 1 (63 at the largest allowed)
    assert rel[:s][vis[:s]].max() == 5 + overlap + 16 - 1 <= 63
    assert m.visible_pairs(n) == int(vis.sum())


def test_an_overlap_keeps_a_cut_span_whole():
    """A span crossing the boundary at 21 is cut without the overlap, whole with it."""
    assert _resolved(0).span_cuts(18, 30) == (21,)
    assert _resolved(3).span_cuts(18, 30) == ()
    lay = mv.layout("mesa", 150, train_length=64, chunk_overlap=3, **CHUNKS)
    assert lay.mask[25, 18] and not mv.layout("mesa", 150, train_length=64, **CHUNKS).mask[25, 18]


def test_default_chunk_size_leaves_room_and_the_option_is_a_slider():
    assert get_method("mesa").resolve(150, 64).chunk_overlap == 0
    m = get_method("mesa", chunk_overlap=54).resolve(150, 64)     # F = 4: chunks of <= 6
    assert m.first_chunk + m.chunk_overlap + m.chunk_size <= 64 and m.chunk_size == 5
    assert isinstance(parameters("mesa")["chunk_overlap"], Slider)
    # the defaults keep the authors' DynamicSplit chunks at T = 8192 with an overlap of 64
    for n in (8704, 9216):
        assert get_method("mesa", chunk_overlap=64).resolve(n, 8192).plan() \
            == get_method("mesa").resolve(n, 8192).plan()


@pytest.mark.parametrize("params,match", [
    (dict(chunk_overlap=44, **CHUNKS),
     r"first_chunk=5 \+ chunk_overlap=44 \+ chunk_size=16 = 65 exceeds train_length=64"
     r".*allowed chunk_overlap <= 43"),
    (dict(chunk_overlap=-1), r"chunk_overlap=-1 is out of range: allowed >= 0"),
    (dict(chunk_overlap=2.5), r"chunk_overlap=2.5 must be an integer"),
    (dict(chunk_overlap=61), r"chunk_overlap=61 .* exceeds train_length=64"),
])
def test_bad_overlaps_are_refused_naming_the_values(params, match):
    with pytest.raises(ValueError, match=match):
        get_method("mesa", **params).resolve(150, 64)
