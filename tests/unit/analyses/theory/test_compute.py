"""The paper's constructions (Appendix E of arXiv 2410.15859) run as models:
every equation checked numerically, the failing steps shown to fail, and the
runs compared with an independent numpy reference written from the scores
the proofs state (not from the weight matrices)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mesa_viz import plots
from mesa_viz.analyses.theory import compute as theory
from mesa_viz.methods import ReRoPE, Stair


RTOL = 1e-11


# -- an independent reference: the scores of Equ.28/40/49-51, row by row --------------

def _logsumexp(s):
    m = s.max()
    return m + np.log(np.exp(s - m).sum())


def _W(pe, d, N, E):
    if pe == "relative":
        return d.astype(float)
    if pe == "rerope":
        return np.where(d < N, d, N).astype(float)
    return np.where(d < N, d, N + (d - N) // E).astype(float)


def reference(pe, M, H, n, N=None, E=None, form="corrected", rounding=True):
    """Two layers: layer 1 puts weight ``e^{-W(t-i)}`` on each key; the position
    is ``ln(1 + (e-1)/y)`` of the bos weight ``y``; layer 2 scores
    ``p_t - p_i - W(t-i)`` (corrected) or ``-p_t p_i - W(t-i)`` (Equ.34)."""
    p = np.empty(n)
    for a in range(n):
        s = -_W(pe, a - np.arange(a + 1), N, E)
        log_y = s[0] - _logsumexp(s)
        p[a] = np.logaddexp(0.0, np.log(np.e - 1) - log_y)
    p = np.round(p) if rounding else p
    value = np.empty(n)
    for a in range(n):
        qk = p[a] - p[:a + 1] if form == "corrected" else -p[a] * p[:a + 1]
        s = qk - _W(pe, a - np.arange(a + 1), N, E)
        value[a] = M * np.exp(s[0] - _logsumexp(s)) - 1 + H
    return p, value


def keys_seen(n):
    return np.arange(1, n + 1)


# -- Theorem 3.1 (NoPE), Equ.14-24 ------------------------------------------------------

@pytest.mark.parametrize("M,H,n", [(16, 0.5, 64), (1, 0.0, 8), (5, -1.3, 5), (5, 2.0, 6),
                                   (200, 0.25, 300), (3, 0.7, 1), (1000, -0.1, 2500)])
def test_nope_equals_equ24_and_crosses_at_M(M, H, n):
    r = theory.run("nope", M, H, n)
    t = keys_seen(n)
    np.testing.assert_allclose(r.value, M / t - 1 + H, rtol=RTOL, atol=1e-12 * M)
    np.testing.assert_allclose(r.value, theory.closed_form("nope", M, H, n), rtol=RTOL,
                               atol=1e-12 * M)
    assert (r.value[t < M] > H + r.tol).all()
    assert (r.value[t > M] < H - r.tol).all()
    if n >= M:
        assert r.value[M - 1] == pytest.approx(H, abs=r.tol)      # t = M: exactly H


def test_theorem_3_1_statement_is_off_by_one_in_T():
    """The theorem says T < M => o_T > H, with T the 0-based position of the
    last token. At T = M - 1 (t = M keys), o_T is exactly H, not above it."""
    M, H = 12, 0.3
    r = theory.run("nope", M, H, 40)
    T = np.arange(40)
    assert not r.value[T == M - 1] > H + r.tol
    assert r.value[M - 1] == pytest.approx(H, abs=r.tol)
    assert (r.value[T < M - 1] > H).all() and (r.value[T >= M] < H).all()


def test_nope_attention_is_uniform_equ20_21():
    M, H, n = 7, 0.5, 20
    r = theory.run("nope", M, H, n, keep_attention=True, seed=3)
    scores, weights = r.scores[0], r.weights[0]
    for a in range(n):
        assert np.ptp(scores[a, :a + 1]) < 1e-12                  # Equ.20: one alpha*
        np.testing.assert_allclose(weights[a, :a + 1], 1 / (a + 1), rtol=RTOL)    # Equ.21
        assert (weights[a, a + 1:] == 0).all() and np.isneginf(scores[a, a + 1:]).all()


@pytest.mark.parametrize("pe,kw", [("nope", {}), ("relative", {}), ("rerope", {"N": 3}),
                                   ("stair", {"N": 3, "E": 2})])
def test_arbitrary_entries_do_not_matter(pe, kw):
    """W_Q rows, embedding dims 4.. and layer-2 query rows the proofs leave
    arbitrary: random draws (two seeds) and zeros give the same values."""
    runs = [theory.run(pe, 16, 0.5, 200, seed=s, **kw) for s in (0, 1, None)]
    for r in runs[1:]:
        np.testing.assert_allclose(r.value, runs[0].value, rtol=1e-10, atol=1e-12)


def test_embedding_and_heads_are_equ15_16():
    h = theory.embedding(6)
    assert h.shape == (6, theory.D_MODEL)
    assert (h[:, 0] == 1).all() and h[:, 1].tolist() == [1, 0, 0, 0, 0, 0] and (h[:, 2] == 0).all()
    head = theory.nope_head(9, 0.25)
    assert (head.W_K[:, 0] == 1).all() and (head.W_K[:, 1:] == 0).all()
    assert head.W_V[0, 1] == 9 and head.W_V[1, 0] == 0.75 and head.W_V.abs().sum() == 9.75
    assert head.W_O[2, :2].tolist() == [1, -1] and head.W_O.abs().sum() == 2


# -- Theorem 3.2, layer 1 (Equ.25-33) ----------------------------------------------------

def test_layer1_equ28_to_32_and_position_recovery():
    n = 3000
    r = theory.run("relative", 16, 0.5, n)
    t = keys_seen(n)
    direct = np.array([np.exp(-(k - 1)) / np.exp(-np.arange(k)).sum() for k in t[:700]])
    np.testing.assert_allclose(r.layer1[:700], direct, rtol=1e-10)           # Equ.32
    np.testing.assert_allclose(theory.layer1_value(t[:700]), direct, rtol=1e-10)
    assert (r.layer1[800:] == 0).all()            # e^{-(t-1)}/S underflows float64 ...
    # ... but the position is recovered exactly (Equ.33)
    np.testing.assert_array_equal(r.position, t)
    exact = theory.run("relative", 16, 0.5, n, recovery="exact").position
    np.testing.assert_allclose(exact, t, rtol=1e-12)


def test_layer1_scores_are_equ28():
    n = 12
    r = theory.run("relative", 5, 0.5, n, keep_attention=True, seed=7)
    for a in range(n):
        np.testing.assert_allclose(r.scores[0, a, :a + 1], -(a - np.arange(a + 1)), atol=1e-12)


# -- Theorem 3.2, layer 2: Equ.34 vs Equ.37 ---------------------------------------------

def test_equ37_does_not_follow_from_equ34():
    """Equ.34's weights give q_t.k_i = tau_t - t*i, not tau + (t - i). The
    layer-2 score is not constant over keys; <bos> wins; the value stays
    above H at every t, so Theorem 3.2's 'below past M' fails."""
    M, H, n = 8, 0.5, 40
    r = theory.run("relative", M, H, n, layer2="paper", keep_attention=True)
    for a in (5, 20, 39):
        t, i = a + 1, np.arange(1, a + 2)                  # 1-based, as the proofs
        qk = r.scores[1, a, :a + 1] + (t - i)              # undo the PE term -(t - i)
        np.testing.assert_allclose(qk - qk[0], -t * (i - 1), atol=1e-9)      # actual
        claimed = (t - i) - (t - 1)                                          # Equ.37
        assert np.abs((qk - qk[0]) - claimed)[1:].min() >= t - 1 - 1e-6 > 0
    np.testing.assert_allclose(r.value, theory.paper_layer2_value(M, H, keys_seen(n)), rtol=RTOL)
    assert (r.value > H).all() and r.value[-1] == pytest.approx(M - 1 + H, abs=1e-9)
    st = r.statement()
    assert st.holds is False and "first t = 9" in st.text


@pytest.mark.parametrize("M,H,n", [(16, 0.5, 200), (2, -0.4, 30), (64, 1.5, 1500), (7, 0.0, 7)])
def test_corrected_layer2_cancels_the_bias_and_gives_equ24(M, H, n):
    r = theory.run("relative", M, H, n, keep_attention=n <= theory.MAX_KEPT)
    np.testing.assert_allclose(r.value, M / keys_seen(n) - 1 + H, rtol=RTOL, atol=1e-12 * M)
    if r.scores is not None:
        for a in range(0, n, max(1, n // 17)):
            assert np.ptp(r.scores[1, a, :a + 1]) < 1e-9            # Equ.38: one alpha*
    assert r.statement().holds is (True if n > M else None)


def test_layer2_weights_are_equ34_and_the_correction():
    paper = theory.layer2_head(10, 0.5, "paper", gen=None)
    assert paper.W_Q[2, 2] == 1 and paper.W_K[2, 2] == -1 and (paper.W_K[3:, 0] == 1).all()
    fixed = theory.layer2_head(10, 0.5, "corrected", gen=None)
    p_t, p_i = 7.0, 3.0
    h_t = torch_vec([1, 0, p_t, 0, 0])
    h_i = torch_vec([1, 0, p_i, 0, 0])
    assert float((paper.W_Q @ h_t) @ (paper.W_K @ h_i)) == -p_t * p_i + 0.0
    assert float((fixed.W_Q @ h_t) @ (fixed.W_K @ h_i)) == p_t - p_i


def torch_vec(values):
    import torch
    return torch.tensor(values, dtype=torch.float64)


# -- Theorem 3.3 (the clamp), Equ.40-56 --------------------------------------------------

@pytest.mark.parametrize("N", [1, 2, 3, 5])
def test_clamp_layer1_equ40_to_46(N):
    n = theory.clamp_plateau_end(N) + 30
    r = theory.run("rerope", N + 1, 0.5, n, N=N, keep_attention=n <= theory.MAX_KEPT)
    t = keys_seen(n)
    a = 2 * N + 4
    np.testing.assert_allclose(r.scores[0, a, :a + 1], -np.minimum(a - np.arange(a + 1), N),
                               atol=1e-12)                                           # Equ.40
    S_sharp = np.array([np.exp(-np.minimum(np.arange(k), N)).sum() for k in t])
    direct = np.exp(-np.minimum(t - 1, N)) / S_sharp
    np.testing.assert_allclose(r.layer1, direct, rtol=1e-10)                          # Equ.45
    np.testing.assert_allclose(theory.clamp_layer1_value(t, N), direct, rtol=1e-10)
    far = t > N + 1                  # the inequality chain after Equ.45 holds ...
    assert (theory.layer1_value(t[far]) < r.layer1[far]).all()
    assert (r.layer1[far] < theory.layer1_value(N + 1)).all()
    # ... but the recovered position is N + 1 only up to the plateau end (not for all t)
    end = theory.clamp_plateau_end(N)
    np.testing.assert_array_equal(r.position[N:end], N + 1)
    assert r.position[end] == N + 2
    np.testing.assert_allclose(r.position, np.round(theory.clamp_position(t, N)))
    exact = theory.run("rerope", N + 1, 0.5, n, N=N, recovery="exact").position
    np.testing.assert_allclose(exact, theory.clamp_position(t, N), rtol=1e-12)


def test_clamp_position_grows_like_log_t():
    N, n = 2, 3000
    p = theory.run("rerope", 8, 0.5, n, N=N, recovery="exact").position
    assert p[-1] == pytest.approx(math.log(math.exp(N + 1) + (math.e - 1) * (n - N - 1)))
    assert p[-1] > N + 1 + 4                     # far from the N + 1 of Equ.46


@pytest.mark.parametrize("M,H,N", [(16, 0.5, 3), (64, 0.2, 5), (8, -1.0, 1), (10, 0.9, 2),
                                   (30, 0.5, 6)])
def test_clamp_layer2_equ52_to_56_inside_the_plateau(M, H, N):
    end = theory.clamp_plateau_end(N)
    n = min(end + 40, theory.MAX_KEPT)
    r = theory.run("rerope", M, H, n, N=N, keep_attention=True)
    t = keys_seen(n)
    cf = theory.clamp_value(M, H, t, N)
    inside = t <= end
    assert np.isnan(cf[~inside]).all()
    np.testing.assert_allclose(r.value[inside], cf[inside], rtol=RTOL)
    a = min(end, n) - 1                                       # a row with t >= 2N
    s = r.scores[1, a, :a + 1]
    d = a - np.arange(a + 1)
    pattern = np.where(np.arange(a + 1) < N, -np.arange(a + 1), -np.minimum(d, N))   # Equ.52
    np.testing.assert_allclose(s - s[0], pattern, atol=1e-9)


def test_clamp_crossing_inside_the_plateau_contradicts_theorem_3_3():
    """Equ.56's 'softmax_1 > 1/t' does not give o_t > H past M: the value
    crosses H at t* = 2N + e^N (M - 2 S(N)). With M = 3, N = 2 that is
    inside the plateau, and the run crosses exactly there."""
    M, H, N = 3, 0.5, 2
    t_star = theory.clamp_crossing(M, N)
    assert M < t_star < theory.clamp_plateau_end(N)
    r = theory.run("rerope", M, H, 12, N=N)
    assert r.crossing() == math.ceil(t_star)
    st = r.statement()
    assert st.holds is False and f"from t = {math.ceil(t_star)}" in st.text
    M, N = 2, 1                                                # t* = 2 exactly: H at t = 2
    r = theory.run("rerope", M, H, 6, N=N)
    assert r.value[1] == pytest.approx(H, abs=r.tol) and r.crossing() == 3


@pytest.mark.parametrize("M,N,n,crosses", [(8, 2, 700, True), (8, 6, 700, False),
                                           (16, 3, 1200, False)])
def test_clamp_past_the_plateau_matches_reference(M, N, n, crosses):
    """Past the plateau no closed form is derived; the run agrees with the
    independent reference, and the value crosses H at a finite length for
    small N (Theorem 3.3 holds on a window that grows with N, not for all T)."""
    r = theory.run("rerope", M, 0.5, n, N=N)
    p, value = reference("rerope", M, 0.5, n, N=N)
    np.testing.assert_array_equal(r.position, p)
    np.testing.assert_allclose(r.value, value, rtol=1e-9)
    first = r.crossing()
    assert (first is not None) is crosses
    if crosses:
        assert first > theory.clamp_plateau_end(N) and first > M
        assert r.value[first - 1] < 0.5 <= r.value[first - 2]


# -- Corollary 4.1 (Stair PE) ------------------------------------------------------------

@pytest.mark.parametrize("M,N,E,n", [(16, 3, 2, 300), (16, 4, 4, 400), (9, 1, 3, 200),
                                     (16, 2, 1, 100), (32, 5, 7, 500)])
def test_stair_matches_reference(M, N, E, n):
    r = theory.run("stair", M, 0.5, n, N=N, E=E)
    p, value = reference("stair", M, 0.5, n, N=N, E=E)
    np.testing.assert_array_equal(r.position, p)
    np.testing.assert_allclose(r.value, value, rtol=1e-9)
    cf = theory.closed_form("stair", M, 0.5, n, N=N)            # only t <= N + 1 is derived
    assert np.isnan(cf[N + 1:]).all()
    np.testing.assert_allclose(r.value[:N + 1], cf[:N + 1], rtol=RTOL)


def test_stair_limits_are_theorems_3_2_and_3_3():
    M, N, n = 16, 3, 400
    relative = theory.run("relative", M, 0.5, n)
    np.testing.assert_allclose(theory.run("stair", M, 0.5, n, N=N, E=1).value, relative.value,
                               rtol=RTOL)
    np.testing.assert_allclose(theory.run("stair", M, 0.5, n, N=N, E=n).value,
                               theory.run("rerope", M, 0.5, n, N=N).value, rtol=RTOL)


def test_stair_crosses_at_a_length_growing_with_E():
    """Corollary 4.1 claims o_T > H for all T > M; run, Stair PE crosses at a
    finite length that grows with the stair width (E = 1 crosses at M + 1)."""
    M, N, n = 16, 3, 600
    firsts = [theory.run("stair", M, 0.5, n, N=N, E=E).crossing() for E in (1, 2, 4, 16)]
    assert firsts[0] == M + 1
    assert all(f is not None for f in firsts[:3])
    assert firsts[0] < firsts[1] < firsts[2]
    assert firsts[3] is None or firsts[3] > firsts[2]


def test_stair_holds_where_its_window_is_wide():
    r = theory.run("stair", 16, 0.5, 1500, N=8, E=16)
    assert r.crossing() is None and r.statement().holds is True
    assert (r.value[16:] > 0.5).all()


def test_weaves_are_the_project_methods():
    """The clamp is methods.ReRoPE's rule and the stair methods.Stair's (floor form,
    Figure 1): theory and practice share one definition."""
    i, j = np.meshgrid(np.arange(30), np.arange(30), indexing="ij")
    vis = i >= j
    for N in (1, 4):
        rel, _ = ReRoPE(window=N).relative(i, j)
        np.testing.assert_array_equal(theory.weave("rerope", i - j, N)[vis], rel[vis])
        for E in (1, 2, 5):
            rel, _ = Stair(stair_start=N, stair_width=E).relative(i, j)
            np.testing.assert_array_equal(theory.weave("stair", i - j, N, E)[vis], rel[vis])
    assert theory.weave("stair", np.arange(9, -1, -1), 4,
                        2).tolist() == [6, 6, 5, 5, 4, 4, 3, 2, 1, 0]


@pytest.mark.parametrize("pe,kw", [("relative", {}), ("rerope", {"N": 2}),
                                   ("stair", {"N": 2, "E": 3})])
def test_paper_weights_never_cross(pe, kw):
    """With Equ.34 as printed every PE stays above H at every length: those
    weights cannot tell a weave PE from the plain relative PE."""
    r = theory.run(pe, 8, 0.5, 500, layer2="paper", **kw)
    assert (r.value > 0.5).all() and r.crossing() is None
    p, value = reference(pe, 8, 0.5, 500, form="paper", **kw)
    np.testing.assert_allclose(r.value, value, rtol=1e-9)


def test_exact_recovery_matches_reference():
    r = theory.run("stair", 12, 0.5, 300, N=3, E=2, recovery="exact")
    p, value = reference("stair", 12, 0.5, 300, N=3, E=2, rounding=False)
    np.testing.assert_allclose(r.position, p, rtol=1e-10)
    np.testing.assert_allclose(r.value, value, rtol=1e-8)


# -- edge cases, statements, errors ---------------------------------------------------------

def test_single_token_and_statement_states():
    r = theory.run("relative", 4, 0.5, 1)
    assert r.value.tolist() == pytest.approx([3.5]) and r.position.tolist() == [1]
    assert r.statement().holds is None and "not tested" in r.statement().text
    assert theory.run("nope", 1, 0.5, 3).value[0] == pytest.approx(0.5)
    assert theory.run("nope", 16, 0.5, 64).statement().holds is True
    assert theory.run("rerope", 16, 0.5, 300, N=3).statement().holds is True


@pytest.mark.parametrize("args,kw,match", [
    (("alibi", 8, 0.5, 10), {}, "pe='alibi'"),
    (("nope", 0, 0.5, 10), {}, "M=0"),
    (("nope", True, 0.5, 10), {}, "M=True"),
    (("nope", 8.5, 0.5, 10), {}, "M=8.5"),
    (("nope", 8, float("nan"), 10), {}, "H=nan"),
    (("nope", 8, "x", 10), {}, "H='x'"),
    (("nope", 8, 0.5, 0), {}, "length=0"),
    (("rerope", 8, 0.5, 10), {}, "N=None"),
    (("rerope", 8, 0.5, 10), {"N": 0}, "N=0"),
    (("rerope", 8, 0.5, 10), {"N": 8}, r"N=8 .*N << M = 8"),
    (("stair", 8, 0.5, 10), {"N": 2, "E": 0}, "E=0"),
    (("stair", 8, 0.5, 10), {"N": 2}, "E=None"),
    (("rerope", 8, 0.5, 10), {"N": 2, "E": 3}, "E=3 is not a parameter of pe='rerope'"),
    (("nope", 8, 0.5, 10), {"N": 2}, "N=2 is not a parameter of pe='nope'"),
    (("relative", 8, 0.5, 10), {"layer2": "x"}, "layer2='x'"),
    (("relative", 8, 0.5, 10), {"recovery": "floor"}, "recovery='floor'"),
    (("nope", 8, 0.5, theory.MAX_KEPT + 1), {"keep_attention": True}, "keep_attention"),
])
def test_bad_parameters_raise(args, kw, match):
    with pytest.raises(ValueError, match=match):
        theory.run(*args, **kw)


def test_bad_head_sizes_raise():
    with pytest.raises(ValueError, match="d_head=3"):
        theory.layer2_head(8, 0.5, "corrected", d_head=3)
    with pytest.raises(ValueError, match="d_model=2"):
        theory.nope_head(8, 0.5, d_model=2)


# -- figures -----------------------------------------------------------------------------

def test_theorem_figure_marks_H_and_M():
    runs = {pe: theory.run(pe, 16, 0.25, 100, **kw).value
            for pe, kw in (("nope", {}), ("rerope", {"N": 3}))}
    closed = {"rerope": theory.closed_form("rerope", 16, 0.25, 100, N=3)}
    fig = plots.theorem_figure(runs, 16, 0.25, closed_forms=closed)
    assert [s.name for s in fig.layout.shapes] == ["H", "M"]
    assert fig.layout.shapes[0].y0 == 0.25 and fig.layout.shapes[1].x0 == 16
    assert [t.name for t in fig.data] == ["nope", "rerope", "rerope (closed form)"]
    assert len(fig.data[2].x) == theory.clamp_plateau_end(3)          # NaN part dropped
    np.testing.assert_allclose(fig.data[0].y, runs["nope"])
    assert fig.layout.xaxis.type == "log"
    with pytest.raises(ValueError, match="shape"):
        plots.theorem_figure({"nope": np.zeros(5)}, 16, 0.25, t=np.arange(6))
    with pytest.raises(ValueError, match="empty"):
        plots.theorem_figure({}, 16, 0.25)
    pos = plots.recovered_position_figure({"rerope": theory.run("rerope", 16, 0.2, 50, N=3).position},
                                          log_x=False)
    assert [t.name for t in pos.data] == ["t (exact recovery)", "rerope"]
