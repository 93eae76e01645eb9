"""Pure layouts: Figure 1, every method's rule, defaults derived from the
training length, the capability API, and bad parameters."""

import numpy as np
import pytest

import mesa_viz as mv
from mesa_viz.methods import DECODE_MODES, METHODS, resolve, stair_position


FIG1 = dict(train_length=5, first_chunk=2, chunk_size=3, last_chunk=2, stair_width=2)


def test_figure1_chunks_and_mask():
    L = mv.layout("mesa", seq_len=13, **FIG1)
    assert L.chunk_plan.chunks == ((0, 2), (2, 5), (5, 8), (8, 11), (11, 13))
    expected = np.tril(np.ones((13, 13), bool))
    for a, b in [(2, 5), (5, 8), (8, 11)]:          # middle chunks: first chunk + themselves
        expected[a:b, 2:a] = False
    assert (L.mask == expected).all()
    assert (L.relative_positions[~L.mask] == -1).all()


def test_figure1_middle_chunk_positions():
    L = mv.layout("mesa", seq_len=13, **FIG1)
    for a, b in [(2, 5), (5, 8), (8, 11)]:
        for off, i in enumerate(range(a, b)):
            # the first chunk sits at 0..1 and the chunk at 2.. : query at 2 + off
            assert list(L.relative_positions[i, :2]) == [2 + off, 1 + off]
            assert list(L.relative_positions[i, a:i + 1]) == list(range(off, -1, -1))


def test_figure1_paper_configuration():
    """Figure 1 (left) as the paper draws it, with a training length (8) that
    keeps every position it shows trained; its defaults give the same plan and
    stair start, and ``stair_limit=8`` the same stair width."""
    fig = dict(first_chunk=2, chunk_size=3, last_chunk=2, stair_start=2, stair_width=2)
    L = mv.layout("mesa", 13, train_length=8, **fig)
    assert L.chunk_plan.chunks == ((0, 2), (2, 5), (5, 8), (8, 11), (11, 13))
    assert list(L.relative_positions[12]) == [7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 0]
    assert L.max_relative_position == 7
    defaults = mv.layout("mesa", 13, train_length=8, stair_limit=8)
    assert {k: defaults.params[k] for k in fig} == fig
    assert (defaults.relative_positions == L.relative_positions).all()


@pytest.mark.parametrize("T", [8, 10, 16, 24, 32, 64])
@pytest.mark.parametrize("times", [1.4, 2, 3])
def test_mesa_defaults_are_readable_at_small_train_length(T, times):
    """Small T: a first chunk of at least 2 tokens, middle chunks of at least
    3, and a stair that climbs in steps wider than one position."""
    n = int(times * T)
    L = mv.layout("mesa", n, train_length=T)
    plan, p = L.chunk_plan, L.params
    assert plan.first[1] >= 2 and plan.middle
    assert all(b - a >= 3 for a, b in plan.middle)
    assert p["stair_start"] >= 2 and p["stair_width"] >= 2
    last_row = L.relative_positions[-1]
    steps = last_row[last_row >= p["stair_start"]]
    assert len(set(steps)) >= 2 and len(set(steps)) < len(steps)      # a stair, not a line
    assert L.max_relative_position < T


@pytest.mark.parametrize("T", [1024, 4096, 8192])
def test_mesa_defaults_at_large_train_length(T):
    """At T >= 1024 the defaults are the documented fractions of T."""
    for n in (T + T // 8, 2 * T, 4 * T):
        m = mv.get_method("mesa").resolve(n, T)
        assert (m.first_chunk, m.last_chunk, m.stair_start, m.stair_limit) == \
            (T // 16, T // 16, T // 4, T // 2)
        assert T // 16 < m.chunk_size <= T // 8


@pytest.mark.parametrize("T", [3, 4, 8])
def test_every_default_resolves_at_tiny_train_length(T):
    for name in METHODS:
        L = mv.layout(name, 3 * T, train_length=T)
        assert L.mask.any()
    with pytest.raises(ValueError, match="window=1 leaves no room below train_length=2"):
        mv.layout("leaky-rerope", 6, train_length=2)          # no room for a leak at T = 2


def test_figure1_stair_row():
    L = mv.layout("stair", seq_len=10, stair_start=4, stair_width=2)
    assert list(L.relative_positions[9]) == [6, 6, 5, 5, 4, 4, 3, 2, 1, 0]


@pytest.mark.parametrize("n", [1, 7, 64])
def test_origin_is_linear(n):
    L = mv.layout("origin", n)
    i, j = np.indices((n, n))
    assert (L.mask == (j <= i)).all()
    assert (L.relative_positions[L.mask] == (i - j)[L.mask]).all()


def test_mesa_below_train_length_is_origin():
    a = mv.layout("mesa", 50, train_length=64)
    b = mv.layout("origin", 50)
    assert a.chunk_plan.chunks == ((0, 50),)
    assert (a.relative_positions == b.relative_positions).all()


@pytest.mark.parametrize("n,T,F,C,last", [(100, 32, 4, 8, 8), (257, 64, 16, 40, 5),
                                          (1000, 128, 1, 127, 64), (70, 64, 8, 16, 16)])
def test_mesa_plan_rule(n, T, F, C, last):
    m = mv.get_method("mesa", first_chunk=F, chunk_size=C, last_chunk=last).resolve(n, T)
    chunks = m.plan().chunks
    assert chunks[0] == (0, F)
    assert all(b - a == C for a, b in chunks[1:-1])
    assert chunks[-1][1] == n and chunks[-1][1] - chunks[-1][0] >= last
    assert chunks[-1][1] - chunks[-1][0] < last + C           # no room for another chunk
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))


@pytest.mark.parametrize("stair", ["per-query", "anchored"])
@pytest.mark.parametrize("n", [300, 1000, 4000])
def test_mesa_default_stair_fits_train_length(n, stair):
    L = mv.layout("mesa", n, train_length=256, stair=stair)
    assert L.max_relative_position <= 255
    # middle chunks never exceed first_chunk + chunk_size
    p = L.params
    mid = L.chunk_plan.middle
    if mid:
        a, b = mid[-1]
        assert L.relative_positions[a:b][L.mask[a:b]].max() < p["first_chunk"] + p["chunk_size"]


@pytest.mark.parametrize("limit", [None, 40, 64])
def test_mesa_stair_limit_bounds_positions(limit):
    L = mv.layout("mesa", 1000, train_length=64, stair_limit=limit)
    assert L.max_relative_position < (limit or 32)
    s = L.chunk_plan.last_start
    # ... and the width is the smallest that does it
    tighter = mv.get_method("mesa", stair_limit=limit, stair_width=L.params["stair_width"] - 1)
    if L.params["stair_width"] > 1:
        rel, vis = tighter.resolve(1000, 64).relative([999], range(1000))
        assert rel[vis].max() >= (limit or 32)
    assert L.relative_positions[s:][L.mask[s:]].max() == L.max_relative_position


def test_mesa_anchored_default_starts_at_chunk_boundary():
    L = mv.layout("mesa", 1000, train_length=64, stair="anchored")
    assert L.params["stair_start"] == 0 and L.max_relative_position < 32


def test_mesa_per_query_stair_is_papers_rule():
    L = mv.layout("mesa", 200, train_length=64, stair_start=10, stair_width=3)
    s = L.chunk_plan.last_start
    i, j = np.indices((200, 200))
    rows = slice(s, 200)
    expect = stair_position(i - j, 10, 3)
    assert (L.relative_positions[rows][L.mask[rows]] == expect[rows][L.mask[rows]]).all()
    assert L.mask[rows].sum() == np.tril(np.ones((200, 200), bool))[rows].sum()


def test_mesa_anchored_stair():
    L = mv.layout("mesa", 200, train_length=64, stair="anchored", stair_start=10, stair_width=3,
                  last_chunk=16)
    s = L.chunk_plan.last_start
    for i in (s, s + 5, 199):
        for j in (0, s // 2, s - 1):
            assert L.relative_positions[i, j] == (i - s) + stair_position(s - j, 10, 3)
        assert L.relative_positions[i, s] == i - s


def test_rerope_and_leaky():
    r = mv.layout("rerope", 20, window=5)
    assert list(r.relative_positions[19, :]) == [5] * 15 + [4, 3, 2, 1, 0]
    k = mv.layout("leaky-rerope", 20, window=5, leak=2)
    assert k.relative_positions[19, 0] == pytest.approx(5 + 14 / 2)
    assert k.relative_positions[19, 16] == 3


def test_leaky_default_leak_fits():
    k = mv.layout("leaky-rerope", 400, train_length=100)
    assert k.max_relative_position <= 99 + 1e-9


def test_streaming_llm_cache_slots():
    L = mv.layout("streaming-llm", 30, train_length=10, sink_tokens=2)
    W = 8
    row = L.relative_positions[29]
    assert L.mask[29].sum() == 2 + W
    assert list(row[:2]) == [9, 8]                       # slots 0, 1 seen from slot 9
    assert list(row[22:30]) == list(range(7, -1, -1))
    assert L.max_relative_position <= 9


def test_lm_infinite_lambda_mask():
    L = mv.layout("lm-infinite", 40, train_length=10, sink_tokens=3)
    assert L.mask[39, :3].all() and not L.mask[39, 3:30].any() and L.mask[39, 31:].all()
    assert set(L.relative_positions[39, :3]) == {9}
    assert L.max_relative_position <= 9


def test_dynamic_ntk_reports_rule():
    L = mv.layout("dynamic-ntk", 16, train_length=8)
    assert "base" in L.rope_rule and (L.relative_positions[L.mask] >= 0).all()


@pytest.mark.parametrize("call,needle", [
    (lambda: mv.layout("nope", 10), "unknown method 'nope'"),
    (lambda: mv.layout("mesa", 0), "seq_len=0"),
    (lambda: mv.layout("mesa", 100, train_length=32, first_chunk=20, chunk_size=20), "chunk_size=20"),
    (lambda: mv.layout("mesa", 100, train_length=32, first_chunk=0), "first_chunk=0"),
    (lambda: mv.layout("mesa", 100, train_length=32, stair_width=0), "stair_width=0"),
    (lambda: mv.layout("stair", 100, train_length=32, stair_start=40), "stair_start=40"),
    (lambda: mv.layout("rerope", 100, train_length=32, window=32), "window=32"),
    (lambda: mv.layout("leaky-rerope", 100, train_length=32, leak=0.5), "leak=0.5"),
    (lambda: mv.layout("streaming-llm", 100, train_length=32, sink_tokens=4, window=30), "window=30"),
    (lambda: mv.layout("mesa", 100, stair="sideways"), "stair='sideways'"),
    (lambda: mv.layout("mesa", 100, chunk_width=3), "chunk_width"),
    (lambda: mv.layout("mesa", 100, train_length=32, stair_start=8, stair_limit=8), "stair_limit=8"),
    (lambda: mv.layout("mesa", 100, train_length=32, stair_limit=40), "stair_limit=40"),
    (lambda: mv.layout("mesa", 300, train_length=64, stair="anchored", stair_start=30,
                       last_chunk=20), "stair_start=30"),
    (lambda: mv.layout("mesa", 100, preset="book"), "preset='book'"),
    (lambda: mv.layout("mesa", 100, train_length=512, preset="paper"), "train_length > 512"),
    (lambda: mv.layout("self-extend", 100, train_length=32, group_size=0), "group_size=0"),
    (lambda: mv.layout("self-extend", 100, train_length=32, window=32), "window=32"),
    (lambda: mv.layout("dual-chunk", 100, train_length=32, chunk_size=32), "chunk_size=32"),
    (lambda: mv.layout("dual-chunk", 100, train_length=32, chunk_size=24, local_window=9),
     "local_window=9"),
    (lambda: mv.layout("dual-chunk", 100, train_length=32, chunk_size=8, local_window=9),
     "local_window=9"),
    (lambda: mv.layout("string", 100, train_length=32, shifted_offset=32), "shifted_offset=32"),
    (lambda: mv.layout("string", 100, train_length=32, shifted_offset=10, local_window=10),
     "local_window=10"),
    (lambda: mv.layout("pi", 100, train_length=32, factor=0.5), "factor=0.5"),
    (lambda: mv.layout("ntk", 100, train_length=32, factor=0), "factor=0"),
    (lambda: mv.layout("yarn", 100, train_length=32, factor=0.9), "factor=0.9"),
    (lambda: mv.layout("yarn", 100, train_length=32, beta_fast=1.0), "beta_fast=1.0"),
    (lambda: mv.layout("dynamic-ntk", 100, train_length=32, factor=0.5), "factor=0.5"),
])
def test_bad_parameters_name_the_value(call, needle):
    with pytest.raises(ValueError) as e:
        call()
    assert needle in str(e.value)
    assert "allowed" in str(e.value) or "must" in str(e.value)


def test_layout_rows_matches_dense():
    L = mv.layout("mesa", 300, train_length=64)
    rel, vis, _ = mv.layout_rows("mesa", 300, [0, 150, 299], train_length=64)
    assert (rel == L.relative_positions[[0, 150, 299]]).all()
    assert (vis == L.mask[[0, 150, 299]]).all()


# -- the capability API ---------------------------------------------------------------

CASES = [("origin", {}), ("dynamic-ntk", {}), ("stair", dict(stair_start=5, stair_width=3)),
         ("rerope", dict(window=7)), ("leaky-rerope", dict(window=7)),
         ("streaming-llm", dict(sink_tokens=3)), ("streaming-llm", dict(sink_tokens=0)),
         ("lm-infinite", dict(sink_tokens=2, window=9)), ("mesa", {}),
         ("mesa", dict(first_chunk=3, chunk_size=5, last_chunk=4)),
         ("mesa", dict(stair="anchored", last_chunk=3)),
         ("self-extend", dict(group_size=3, window=4)), ("dual-chunk", {}),
         ("dual-chunk", dict(chunk_size=5, local_window=2)),
         ("string", dict(shifted_offset=5, local_window=2)), ("pi", {}), ("ntk", {}),
         ("yarn", {})]


@pytest.mark.parametrize("name,params", CASES)
@pytest.mark.parametrize("n", [1, 7, 16, 41, 100])
def test_visible_pairs_count_the_layout(name, params, n):
    """The closed form of every method equals the pairs its layout shows."""
    m = resolve(name, n, train_length=16, **params)
    assert m.visible_pairs(n) == int(mv.layout(m, n).mask.sum())


def test_capabilities_are_declared():
    for name, cls in METHODS.items():
        assert cls.name == name and cls.decode in DECODE_MODES
        assert cls.past_train_length, name
        m = resolve(name, 100, train_length=32)
        model = {"rope_theta": 10000.0, "rotary_dim": 64}
        assert (m.rope_parameters(model) is None) == (m.rope_rule() is None)
        assert (m.rope_parameters(model) is None) == (not m.native or name == "origin")
        assert (m.query_scale(np.arange(100)) >= 1).all()
    assert resolve("dynamic-ntk", 10, factor=2.0).rope_parameters() == \
        {"rope_type": "dynamic", "factor": 2.0}
    assert METHODS["origin"].native and not METHODS["stair"].native
    assert METHODS["mesa"].chunked and METHODS["mesa"].decode == "prefill-plan"


def test_mesa_query_scale_is_log_n_in_the_last_chunk():
    m = resolve("mesa", 200, train_length=64, log_scaling=True)
    s = m.plan().last_start
    f = m.query_scale(np.arange(200))
    assert (f[:s] == 1).all()
    assert np.allclose(f[s:], np.maximum(1, np.log(np.arange(s, 200) + 1) / np.log(64)))
    assert (resolve("mesa", 50, train_length=64, log_scaling=True).query_scale(
        np.arange(50)) == 1).all()


def test_resolve_helper():
    """One call from a name (or a value) and plain numbers to a resolved method."""
    a = resolve("mesa", 300, train_length=64, first_chunk=8)
    assert a == mv.get_method("mesa", first_chunk=8).resolve(300, 64)
    assert resolve(a, 300) == a
    assert resolve("rerope", 300, default_train_length=100).train_length == 100
    assert resolve("rerope", 300, train_length=64, default_train_length=100).train_length == 64
    assert resolve(mv.get_method("rerope", train_length=50), 300,
                   default_train_length=100).train_length == 50
    assert resolve("rerope", 300).train_length == 300
    assert resolve("mesa", 300, train_length=64, prefill_length=280).plan().last[1] == 280
