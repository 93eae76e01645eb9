"""The position rules of Self-Extend, Dual Chunk Attention, STRING, the
frequency rules and Mesa's presets against transcriptions of their papers and
of the authors' released code (pure numpy; the code paths are written here
from reading that code, not imported), and the Mesa paper's Appendix G claim
(Stair PE coincides with Self-Extend)."""

import math

import numpy as np
import pytest

import mesa_viz as mv
from mesa_viz.methods import dynamic_split, resolve, stair_position


def _rel(method, n, **params):
    """``[n, n]`` relative positions (-1 where masked) of a resolved method."""
    m = resolve(method, n, **params)
    i, j = np.indices((n, n))
    rel, vis = m.relative(i, j)
    return np.where(vis, rel, -1)


# -- Self-Extend ----------------------------------------------------------------------------

def _self_extend_code(n, G, W):
    """LongLM's ``self_extend_forward`` (Llama, plain path, ``//`` as fixed):
    a neighbour mask ``tril`` minus the band below ``W``, neighbour positions
    ``i - j``, grouped positions ``i // G + W - W // G - j // G``."""
    neighbour = np.tril(np.ones((n, n), bool))
    if n > W:
        neighbour[W:, :-W] &= ~np.tril(np.ones((n - W, n - W), bool))
    i, j = np.indices((n, n))
    grouped = (i // G + W - W // G) - j // G
    rel = np.where(neighbour, i - j, grouped)
    return np.where(np.tril(np.ones((n, n), bool)), rel, -1)


@pytest.mark.parametrize("G,W", [(1, 5), (2, 4), (3, 7), (4, 10), (8, 16)])
def test_self_extend_is_the_authors_rule(G, W):
    assert (_rel("self-extend", 60, train_length=64, group_size=G, window=W)
            == _self_extend_code(60, G, W)).all()


def test_self_extend_defaults():
    """``window = T/4``; the smallest group keeping every position below ``T``
    (``G = 1``, Origin, up to ``T``), from the prompt length."""
    assert (_rel("self-extend", 64, train_length=64) == _rel("origin", 64)).all()
    for n in (65, 100, 300, 1000):
        m = resolve("self-extend", n, train_length=64)
        G, W = m.group_size, m.window
        assert W == 16 and (n - 1) // G + W - W // G <= 63
        assert G == 1 or (n - 1) // (G - 1) + W - W // (G - 1) > 63
    assert resolve("self-extend", 1000, train_length=64, prefill_length=100) == \
        resolve("self-extend", 1000, train_length=64, group_size=2, window=16)


# -- Dual Chunk Attention -------------------------------------------------------------------

def test_dual_chunk_figure_2_row():
    """The paper's Figure 2 (s = 6, c = 10, w = c - s = 4): row 11."""
    L = mv.layout("dual-chunk", 12, train_length=10)
    assert (L.params["chunk_size"], L.params["local_window"]) == (7, 3)        # defaults: 3T/4
    row = _rel("dual-chunk", 12, train_length=10, chunk_size=6, local_window=4)[11]
    assert list(row) == [9, 8, 7, 6, 5, 4, 5, 4, 3, 2, 1, 0]


def _chunkllama_code(n, chunk_size, local_window):
    """ChunkLlama's ``ChunkLlamaRotaryEmbedding`` positions: chunks of
    ``cl = chunk_size - local_window``; keys at ``j % cl``; queries at ``i % cl``
    (own chunk), ``min(cl + i % cl, chunk_size)`` (previous chunk),
    ``chunk_size`` (older chunks)."""
    cl = chunk_size - local_window
    q_t, qc_t = np.arange(cl), np.minimum(np.arange(cl) + cl, chunk_size)
    rel = np.full((n, n), -1)
    for i in range(n):
        for j in range(i + 1):
            gap = i // cl - j // cl
            q = q_t[i % cl] if gap == 0 else qc_t[i % cl] if gap == 1 else qc_t[cl - 1]
            rel[i, j] = q - j % cl
    return rel


@pytest.mark.parametrize("T,lw", [(32, 4), (40, 5), (64, 8)])
def test_dual_chunk_reproduces_the_authors_code(T, lw):
    """The code's ``chunk_size = 3T/4``, ``local_window = T/8`` is this rule with
    ``chunk_size = 3T/4 - T/8`` and ``local_window = T/8 + 1``."""
    cs = T * 3 // 4
    got = _rel("dual-chunk", 150, train_length=T, chunk_size=cs - lw, local_window=lw + 1)
    assert (got == _chunkllama_code(150, cs, lw)).all()


@pytest.mark.parametrize("T", [8, 10, 64, 4096])
def test_dual_chunk_paper_defaults_are_origin_up_to_train_length(T):
    n = min(T, 300)
    assert (_rel("dual-chunk", n, train_length=T) == _rel("origin", n)).all()
    far = _rel("dual-chunk", 3 * T if T < 100 else 900, train_length=min(T, 256))
    assert far.max() == min(T, 256) - 1


# -- STRING ---------------------------------------------------------------------------------

def test_string_figure_5():
    """The paper's Figure 5 (L = 9, S = 3): positions 6-8 dropped, 0-5 shifted
    down by S, W added to the shifted diagonals."""
    rel = _rel("string", 9, train_length=9, shifted_offset=3, local_window=1)
    assert list(rel[8]) == [6, 5, 4, 3, 2, 1, 2, 1, 0]
    assert rel.max() == 8 - 3 + 1


def test_string_defaults_are_the_authors():
    m = resolve("string", 10000, train_length=8192)
    assert (m.shifted_offset, m.local_window) == (int(0.33 * 8192), 128)
    assert (_rel("string", 21, train_length=64) == _rel("origin", 21)).all()     # n <= S
    assert (_rel("string", 22, train_length=64) != _rel("origin", 22)).any()


# -- frequency rules ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["pi", "ntk", "yarn"])
def test_frequency_rules_scale_with_the_prompt(name):
    """``factor = max(1, n / T)`` from the prompt, fixed through the decode;
    factor 1 is the model's own RoPE; positions stay linear."""
    model = {"rope_theta": 10000.0, "rotary_dim": 64, "rope_type": "default"}
    below = resolve(name, 100, train_length=128)
    assert below.factor == 1.0
    m = resolve(name, 400, train_length=128, prefill_length=320)
    assert m.factor == 2.5 and m.native and m.decode == "prefill-plan"
    assert (_rel(name, 50, train_length=16) == _rel("origin", 50)).all()
    rule = m.rope_parameters(model)
    expect = {"pi": {"rope_type": "linear", "factor": 2.5},
              "ntk": {"rope_type": "default", "rope_theta": 10000.0 * 2.5 ** (64 / 62)},
              "yarn": {"rope_type": "yarn", "factor": 2.5, "beta_fast": 32.0, "beta_slow": 1.0,
                       "original_max_position_embeddings": 128}}[name]
    assert rule.keys() == expect.keys()
    assert all(rule[k] == pytest.approx(v) for k, v in expect.items() if k != "rope_type")
    assert rule["rope_type"] == expect["rope_type"]


def test_ntk_needs_the_models_base():
    with pytest.raises(ValueError, match="rope_theta and rotary_dim"):
        resolve("ntk", 10, train_length=8).rope_parameters()


# -- the Mesa paper's Appendix G: Stair PE and Self-Extend ------------------------------------

@pytest.mark.parametrize("G,W", [(2, 4), (3, 6), (4, 8), (5, 10), (2, 6), (8, 16)])
def test_appendix_g_stair_pe_is_self_extend_where_the_paper_says(G, W):
    """With ``N = W``, ``E = G`` and ``G | W``: floor-form Stair PE equals
    Self-Extend on every pair with ``i mod G >= j mod G`` (Appendix G's
    condition), and is one less on every other grouped pair; the neighbour
    part always coincides."""
    n = 120
    se = _rel("self-extend", n, train_length=n, group_size=G, window=W)
    stair = _rel("stair", n, train_length=n, stair_start=W, stair_width=G)
    i, j = np.indices((n, n))
    causal, grouped = j <= i, i - j >= W
    same_phase = (i % G) >= (j % G)
    assert (se[causal & ~grouped] == stair[causal & ~grouped]).all()
    assert (se[causal & grouped & same_phase] == stair[causal & grouped & same_phase]).all()
    assert (se[causal & grouped & ~same_phase] == stair[causal & grouped & ~same_phase] + 1).all()
    rows = (i % G == G - 1) & causal                 # rows where every key meets the condition
    assert (se[rows] == stair[rows]).all()


@pytest.mark.parametrize("G,W", [(2, 3), (3, 7), (4, 10), (3, 6)])
def test_appendix_g_ceiling_stair(G, W):
    """The paper's Eq. 3 (ceiling) form equals Self-Extend on the rows with
    ``i = W (mod G)``, whether or not ``G`` divides ``W``; with ``G`` not
    dividing ``W`` the floor form matches no row entirely."""
    n = 100
    se = _rel("self-extend", n, train_length=n, group_size=G, window=W)
    i, j = np.indices((n, n))
    t = i - j
    ceiling = np.where(t < W, t, W + np.ceil((t - W) / G).astype(int))
    rows = (i % G == W % G) & (j <= i)
    assert (se[rows] == ceiling[rows]).all()
    if W % G:
        floor = stair_position(t, W, G)
        assert not any((se[r, :r + 1] == floor[r, :r + 1]).all() for r in range(W + G, n))


# -- Mesa presets -----------------------------------------------------------------------------

def _algorithm_2(I, T, F=100, L=512, M_max=200):
    """The paper's Algorithm 2, line by line."""
    N = (I - L - F) // (T - F)
    M = (I - L - F) % (T - F)
    return T - F if M < M_max else (I - L - F) // (N + 1)


@pytest.mark.parametrize("T", [1024, 2048, 4096, 8192])
@pytest.mark.parametrize("times", [1.1, 1.5, 2.0, 3.3, 4.0])
def test_paper_preset_is_algorithm_2(T, times):
    I = int(times * T)
    m = resolve("mesa", I, train_length=T, preset="paper")
    assert m.chunk_size == _algorithm_2(I, T) == dynamic_split(I, T)
    assert (m.first_chunk, m.stair_start, m.stair_width, m.stair, m.log_scaling) == \
        (100, 512, 50, "per-query", False)
    plan = m.plan()
    assert plan.first == (0, 100) and all(b - a == m.chunk_size for a, b in plan.middle)
    rest = (I - 612) % (T - 100)
    last = plan.last[1] - plan.last[0]
    assert last == 512 + rest if rest < 200 else 512 <= last < 512 + len(plan.middle)
    assert m.params()["preset"] == "paper"


def _code_plan(I, T, F=100, L=512, reserve=50, margin=100, M_max=200):
    """The authors' ``PositionSet.set_align_position`` and ``chunk_forward``:
    the chunk size, then chunks of it after the first while they end before
    ``I``, the rest the last chunk."""
    R = I + reserve - L - F
    D = T - F - margin
    N, M = divmod(R, D)
    C = D if M < M_max else R // (N + 1)
    chunks, beg, end = [], 0, F
    while beg < I:
        chunks.append((beg, min(end, I)))
        beg, end = end, end + C
    return C, chunks


def _code_positions(kv, C, E):
    """The authors' position list for ``kv`` cached keys (``push_pos``,
    ``last_pos`` and the sorted repeat of ``E`` copies), as a formula: keys
    from the anchor ``a = kv - (kv - 1) % C`` keep their index, earlier ones
    step down every ``E`` keys."""
    a = kv - (kv - 1) % C
    x = np.arange(kv)
    return np.where(x >= a, x, a - 1 - (a - 1 - x) // E)


@pytest.mark.parametrize("I,T", [(4096, 2048), (8000, 2048), (12288, 2048), (16384, 4096),
                                 (12288, 8192), (16384, 8192), (3000, 2048)])
def test_authors_code_preset_reproduces_the_code(I, T):
    """Chunks and positions of the last chunk (and of a middle chunk) equal the
    released code's for the same prompt length and training length."""
    m = resolve("mesa", I, train_length=T, preset="authors-code")
    C, chunks = _code_plan(I, T)
    assert m.chunk_size == C and m.plan().chunks == tuple(chunks)
    assert (m.stair, m.stair_width, m.log_scaling) == ("anchored", 50, True)
    s = chunks[-1][0]
    rows = np.array([s, (s + I) // 2, I - 1])
    rel, vis = m.relative(rows[:, None], np.arange(I)[None, :])
    pos = _code_positions(I, C, 50)
    causal = np.arange(I)[None, :] <= rows[:, None]
    assert (vis == causal).all() and (rel == rows[:, None] - pos[None, :])[causal].all()
    a, b = chunks[1]                                  # a middle chunk: first chunk at 0..F-1
    rel, vis = m.relative(np.array([[b - 1]]), np.arange(100)[None, :])
    assert (rel == (100 + b - 1 - a) - np.arange(100)).all()


def test_preset_values_can_be_overridden_and_are_reported():
    m = resolve("mesa", 16384, train_length=8192, preset="paper", stair_width=20)
    assert m.stair_width == 20 and m.stair_start == 512 and m.params()["preset"] == "paper"
    below = resolve("mesa", 8000, train_length=8192, preset="authors-code")
    assert below.plan().chunks == ((0, 8000),)            # Origin up to T, as the code
    assert math.isclose(below.query_scale(np.array([7999]))[0], 1.0)


# -- the layout explorer (notebook 01) offers every new parameter ---------------------------

@pytest.mark.parametrize("name,param,value", [("self-extend", "group_size", 4),
                                              ("self-extend", "window", 3),
                                              ("dual-chunk", "chunk_size", 6),
                                              ("dual-chunk", "local_window", 2),
                                              ("string", "shifted_offset", 6),
                                              ("string", "local_window", 2),
                                              ("yarn", "factor", 3.0)])
def test_layout_explorer_drives_the_new_parameters(name, param, value):
    """Each new method in the explorer: its parameters have sliders, set off
    auto they redraw the layout exactly as ``layout(...)`` draws it."""
    from mesa_viz import widgets
    ex = widgets.layout_explorer(method=name, seq_len=40, train_length=16)
    assert "invalid" not in ex.message
    ex.controls[param + "_auto"].value = False
    ex.controls[param].value = value
    assert "invalid" not in ex.message, ex.message
    z = ex.figures["layout"].data[0].z
    z = np.array([[np.nan if v is None else v for v in row] for row in z], dtype=float)
    want = mv.layout(name, 40, train_length=16, **{param: value})
    assert (np.nan_to_num(z, nan=-1) == want.relative_positions).all()
    assert ex.controls[param].value == value


@pytest.mark.parametrize("kwargs", [
    dict(method="mesa", params={"stair": "anchored"}),
    dict(method="mesa", seq_len=1400, train_length=1024, params={"preset": "authors-code"})])
def test_layout_explorer_draws_mesa_choices(kwargs):
    """The explorer draws Mesa's choice fields (``stair``, ``preset``) set by
    hand: the layout equals ``layout(...)`` with the same parameters, the
    control shows the value with its auto box unchecked."""
    from mesa_viz import widgets
    from mesa_viz.viz.reduce import MAX_LAYOUT_SIDE, stride
    ex = widgets.layout_explorer(**kwargs)
    assert "invalid" not in ex.message, ex.message
    (name, value), = kwargs["params"].items()
    assert ex.controls[name].value == value and not ex.controls[name + "_auto"].value
    n, T = ex.controls["seq_len"].value, ex.controls["train_length"].value
    if "seq_len" in kwargs:
        assert (n, T) == (kwargs["seq_len"], kwargs["train_length"])
    z = np.array([[np.nan if v is None else v for v in row]
                  for row in ex.figures["layout"].data[0].z], dtype=float)
    want = mv.layout("mesa", n, train_length=T, **kwargs["params"])
    assert want.params[name] == value
    s = stride(n, MAX_LAYOUT_SIDE)             # above 512 tokens the heatmap is sampled
    assert (np.nan_to_num(z, nan=-1) == want.relative_positions[::s, ::s]).all()


def test_layout_explorer_offers_every_parameter_of_every_method():
    """Every field of every method has a control in the explorer (from the
    method's own field metadata), and every choice of a choice field draws."""
    import dataclasses
    from mesa_viz import widgets
    from mesa_viz.methods.base import Derived, control_of
    ex = widgets.layout_explorer(method="mesa", seq_len=700, train_length=600)  # presets: T > 512
    for name, cls in mv.METHODS.items():
        for f in dataclasses.fields(cls):
            if f.name != "train_length" and not isinstance(control_of(f), Derived):
                assert f.name in ex.controls, (name, f.name)
    for name, cls in mv.METHODS.items():
        ex.controls["method"].value = name
        for f in dataclasses.fields(cls):
            options = getattr(ex.controls.get(f.name), "options", None)
            if f.name == "train_length" or options is None:
                continue
            ex.controls[f.name + "_auto"].value = False
            for _, value in (o if isinstance(o, tuple) else (o, o) for o in options):
                ex.controls[f.name].value = value
                assert "invalid" not in ex.message, (name, f.name, value, ex.message)
            ex.controls[f.name + "_auto"].value = True


# -- where a layout cuts a span (a passkey needle) ----------------------------------------

@pytest.mark.parametrize("T, n", [(64, 200), (128, 1000), (8192, 8704), (8192, 16384)])
def test_mesa_cuts_a_span_where_a_later_middle_chunk_starts(T, n):
    """A middle chunk sees the first chunk and itself: a span is cut where a
    middle chunk starts inside it, except the first (its predecessor is the
    first chunk, seen by all) and the last chunk (sees every key)."""
    m = resolve("mesa", n, train_length=T)
    inner = {c[0] for c in m.plan().middle[1:]}
    rng = np.random.default_rng(n)
    for a in [0, *rng.integers(0, n - 30, 40)]:
        a, b = int(a), int(a) + 30
        assert m.span_cuts(a, b) == tuple(sorted(s for s in inner if a < s < b))
    assert m.span_cuts(0, n) == tuple(sorted(inner))
    assert resolve("mesa", T, train_length=T).span_cuts(0, T) == ()     # within T: origin


@pytest.mark.parametrize("name", sorted(set(mv.METHODS) - {"mesa"}))
def test_no_other_method_cuts_a_span(name):
    """Every other method lets each token see the one before it, past T too."""
    m = resolve(name, 600, train_length=64)
    assert m.span_cuts(0, 600) == ()


@pytest.mark.parametrize("start, stop, match", [(-1, 5, "start=-1"), (5, 5, "stop=5"),
                                                (3, 2, "stop=2")])
def test_span_cuts_refuses_a_bad_span(start, stop, match):
    with pytest.raises(ValueError, match=match):
        resolve("mesa", 200, train_length=64).span_cuts(start, stop)


def test_pop_params_takes_the_methods_own_and_leaves_the_rest():
    from mesa_viz.methods import get_method, pop_params
    options = {"stair_start": 2048, "train_length": 8192, "dtype": "float32"}
    assert pop_params("mesa", options) == {"stair_start": 2048}
    assert options == {"train_length": 8192, "dtype": "float32"}
    with pytest.raises(ValueError, match="stair_width=0"):
        get_method("mesa", **pop_params("mesa", {"stair_width": 0})).resolve(64, 64)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        pop_params("nope", {})
