"""The paper's theorems, built and run: the Appendix E constructions as torch models.

Section 3 of Mesa-Extrapolation (arXiv 2410.15859) proves its theorems by
construction. It names the weights of a one-layer (Theorem 3.1, NoPE) or a
two-layer (Theorem 3.2, relative PE ``<q_t, k_i> = q_t.k_i - (t - i)``)
transformer whose attention output ``o_t`` at hidden dimension 3 (the
*threshold dimension*) stays above a threshold ``H`` inside the window ``M``
and falls below it past ``M``. Theorem 3.3 (the ReRoPE clamp
``W(t - i) = min(t - i, N)``) and Corollary 4.1 (Stair PE) keep the same
weights and claim the value stays above ``H`` past ``M``. This module builds
those weights exactly as Appendix E states them and runs them on inputs of
any length. Use :func:`run` for one PE, and :func:`closed_form` for what the
proofs derive.

Index convention: ``pos`` is the 0-based position (``<bos>`` at 0), and
``t = pos + 1`` is the number of keys the query sees. That is the proofs'
``t``: Equ.19 to 24 give every key weight ``1/t``. The theorems' ``T`` is the
0-based position of the last token, ``T = t - 1``.

What checks numerically, and what does not (``tests/unit/analyses/theory/test_compute.py``):

* Theorem 3.1, Equ.14 to 24: exact. ``o_t = M/t - 1 + H``. It is above ``H``
  for ``t < M``, exactly ``H`` at ``t = M`` and below for ``t > M``. In the
  theorem's ``T`` the value is exactly ``H`` at ``T = M - 1``, so
  "``T < M`` gives ``o_T > H``" is off by one.
* Theorem 3.2, layer 1, Equ.25 to 32: exact.
  ``o_t = e^{-(t-1)}/S(t) = (e-1)/(e^t-1)``. The MLP that "recovers t" is
  not given (``W_1``, ``W_2`` are not stated). Here it is the exact inverse
  ``t = ln(1 + (e-1)/y)``, rounded to an integer as Appendix E.3's
  "piecewise function" does (or not: ``recovery="exact"``).
* Theorem 3.2, layer 2: **Equ.37 does not follow from Equ.34.** Those
  weights give ``q_t.k_i = tau_t - p_t p_i``, not ``tau + (t - i)``. So the
  score does not cancel the PE bias. ``<bos>`` takes almost all the weight
  and ``o_t`` tends to ``M - 1 + H``: above ``H`` at every ``t``, and the
  "below past M" half fails (``layer2="paper"``). The corrected weights
  (``layer2="corrected"``, the default) give ``q_t.k_i = p_t - p_i``:

  - ``W_Q`` row 3 reads the position and row 4 the ones;
  - ``W_K`` row 3 reads the ones and row 4 minus the position.

  With them the cancellation holds, and so does Equ.24's closed form. Equ.49
  to 51 of proof E.3 already assume this form.
* Theorem 3.3, layer 1, Equ.40 to 45: exact. The recovered position is not
  ``N + 1`` for all ``t`` (Equ.46). It is
  ``s(t) = ln(e^{N+1} + (e-1)(t-N-1))``, which rounds to ``N + 1`` only up to
  :func:`clamp_plateau_end` (about ``N + 1 + 1.03 e^N``). Inside that range
  Equ.52 is exact: ``softmax_1 = 1/(2 S(N) + (t - 2N) e^{-N})`` for
  ``t >= 2N``. Equ.56's "``softmax_1 > 1/t``" does not give ``o_t > H``. The
  exact condition is ``t < t* = 2N + e^N (M - 2 S(N))``
  (:func:`clamp_crossing`). Past the plateau the value decays like
  ``1/ln t`` and crosses ``H`` at a finite length. The clamp widens the
  window; it does not remove it.
* Corollary 4.1 (Equ.57 to 59) cannot be checked step by step (its ``C`` is
  undefined). When run, the layer-1 position follows the stair, and the
  value crosses ``H`` at a finite length that grows with ``N`` and ``E``.
  ``E = 1`` is exactly Theorem 3.2, and ``E >= length`` is exactly the clamp.

Stair PE is the project's floor form :func:`mesa_viz.methods.stair_position`
(the paper's Figure 1). Its Equ.3 prints a ceiling, which the figure does not
match. Everything is computed in float64. The ``[n, n]`` scores are formed
in blocks of query rows, so time grows as ``n^2`` and memory as ``n``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ...methods import check_int, stair_position

__all__ = ["PES", "THEOREMS", "Head", "Attention", "TheoremRun", "Statement", "embedding",
           "nope_head", "position_head", "layer2_head", "weave", "attend", "recover_position",
           "run", "S", "nope_value", "paper_layer2_value", "layer1_value", "clamp_layer1_value",
           "clamp_position", "clamp_plateau_end", "clamp_value", "clamp_crossing", "closed_form"]

#: The position encodings, each with the statement its construction is about.
THEOREMS = {"nope": "Theorem 3.1", "relative": "Theorem 3.2", "rerope": "Theorem 3.3",
            "stair": "Corollary 4.1"}
PES = tuple(THEOREMS)
LAYER2_FORMS = ("corrected", "paper")
RECOVERIES = ("round", "exact")
#: Hidden size and head size of the built models (the proofs use dims 1-4; the rest are arbitrary).
D_MODEL = D_HEAD = 5
#: Longest input whose full ``[layer, q_pos, k_pos]`` scores ``keep_attention`` may return.
MAX_KEPT = 2048
_DIM = 2           # 0-based index of the paper's third dimension (the threshold dimension)
_BLOCK = 512       # query rows scored at once
_UNDERFLOW = -746.0   # exp(x) == 0.0 in float64 below this; -inf skips exp's slow underflow path


# -- the weights (Appendix E) -----------------------------------------------------

@dataclass(frozen=True)
class Head:
    """One attention head (Appendix D): ``W_Q, W_K, W_V [h, d]``, ``W_O [d, h]``,
    float64."""

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor


def _arbitrary(shape, gen: torch.Generator | None) -> torch.Tensor:
    """Entries the proofs leave arbitrary: standard normal draws (zeros without ``gen``)."""
    if gen is None:
        return torch.zeros(shape, dtype=torch.float64)
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def embedding(length: int, d_model: int = D_MODEL, gen: torch.Generator | None = None):
    """``H^(0)`` of Equ.15, transposed: ``[pos, d]``. Dim 1 holds ones, dim 2
    the ``<bos>`` indicator and dim 3 zeros; dims 4.. are arbitrary token
    embeddings."""
    h = _arbitrary((length, d_model), gen)
    h[:, :3] = 0.0
    h[:, 0], h[0, 1] = 1.0, 1.0
    return h


def _value_output(M: float, H: float, d_model: int, d_head: int):
    """``W_V, W_O`` of Equ.16: ``v = [M * bos, 1 - H, 0, ...]``, ``o[3] = v[1] - v[2]``."""
    W_V = torch.zeros(d_head, d_model, dtype=torch.float64)
    W_V[0, 1], W_V[1, 0] = float(M), 1.0 - float(H)
    return W_V, _output(d_model, d_head)


def _output(d_model: int, d_head: int) -> torch.Tensor:
    """``W_O`` of Equ.16: only row 3 is set, to ``[1, -1, 0, ...]``."""
    W_O = torch.zeros(d_model, d_head, dtype=torch.float64)
    W_O[_DIM, 0], W_O[_DIM, 1] = 1.0, -1.0
    return W_O


def _check_sizes(d_model: int, d_head: int, min_head: int) -> None:
    check_int("d_model", d_model, 3, why="the construction writes dims 1-3")
    check_int("d_head", d_head, min_head, why="rows the construction sets")


def nope_head(M: float, H: float, d_model: int = D_MODEL, d_head: int = D_HEAD,
              gen: torch.Generator | None = None) -> Head:
    """Theorem 3.1's head (Equ.16). ``W_K`` reads dim 1 into every row, so all
    keys are equal. ``W_Q`` is arbitrary."""
    _check_sizes(d_model, d_head, 2)
    W_K = torch.zeros(d_head, d_model, dtype=torch.float64)
    W_K[:, 0] = 1.0
    return Head(_arbitrary((d_head, d_model), gen), W_K, *_value_output(M, H, d_model, d_head))


def position_head(d_model: int = D_MODEL, d_head: int = D_HEAD,
                  gen: torch.Generator | None = None) -> Head:
    """Theorem 3.2's layer-1 head (Equ.25): ``W_K = 0``, ``W_V`` row 1 reads the
    ``<bos>`` indicator, ``W_Q`` is arbitrary and ``W_O`` is Equ.16's. So
    ``o_t[3]`` is the softmax weight on ``<bos>`` (Equ.32)."""
    W_V = torch.zeros(d_head, d_model, dtype=torch.float64)
    W_V[0, 1] = 1.0
    return Head(_arbitrary((d_head, d_model), gen),
                torch.zeros(d_head, d_model, dtype=torch.float64),
                W_V, _output(d_model, d_head))


def layer2_head(M: float, H: float, form: str = "corrected", d_model: int = D_MODEL,
                d_head: int = D_HEAD, gen: torch.Generator | None = None) -> Head:
    """Theorem 3.2's layer-2 head; ``W_V, W_O`` are Equ.16's.

    ``form="paper"`` is Equ.34 as printed: ``q[3] = p_t``, ``k[3] = -p_i``, and
    rows 4..h of ``W_K`` read the ones. That gives ``q_t.k_i = tau_t - p_t p_i``.
    ``form="corrected"`` gives ``q_t.k_i = tau_t + p_t - p_i``, the
    cancellation Equ.37 claims:

    - ``q[3] = p_t``, ``q[4] = 1``;
    - ``k[3] = 1``, ``k[4] = -p_i``;
    - rows 5..h of ``W_K`` read the ones.

    In both forms the remaining rows of ``W_Q`` are arbitrary.
    """
    if form not in LAYER2_FORMS:
        raise ValueError(f"layer2={form!r}: allowed {LAYER2_FORMS}")
    _check_sizes(d_model, d_head, 3 if form == "paper" else 4)
    W_Q = _arbitrary((d_head, d_model), gen)
    W_K = torch.zeros(d_head, d_model, dtype=torch.float64)
    W_Q[:3] = 0.0
    W_Q[_DIM, _DIM] = 1.0
    if form == "paper":
        W_K[_DIM, _DIM], W_K[3:, 0] = -1.0, 1.0
    else:
        W_Q[3] = 0.0
        W_Q[3, 0], W_K[_DIM, 0], W_K[3, _DIM], W_K[4:, 0] = 1.0, 1.0, -1.0, 1.0
    return Head(W_Q, W_K, *_value_output(M, H, d_model, d_head))


# -- running a head -------------------------------------------------------------------

def weave(pe: str, distance, N: int | None = None, E: int | None = None) -> np.ndarray:
    """The PE term each score subtracts, ``W(t - i)`` (Equ.2), for ``distance = t - i``
    (an integer array). NoPE subtracts nothing. The relative PE (Thm 3.2)
    subtracts ``t - i``, the clamp (Thm 3.3) ``min(t - i, N)`` and Stair PE
    (Cor 4.1) ``stair_position(t - i, N, E)``."""
    d = np.asarray(distance)
    if pe == "nope":
        return np.zeros(d.shape)
    if pe == "relative":
        return d.astype(float)
    if pe == "rerope":
        return np.minimum(d, N).astype(float)
    if pe == "stair":
        return stair_position(d, N, E).astype(float)
    raise ValueError(f"pe={pe!r}: allowed {PES}")


@dataclass(frozen=True)
class Attention:
    """One head run over a sequence.

    ``output [pos, d]``: ``o_t`` (Equ.6). ``log_bos [pos]``: log of the softmax
    weight on ``<bos>``; it stays finite where the weight underflows.
    ``scores``/``weights`` ``[q_pos, k_pos]``: kept only on request. Masked
    keys hold ``-inf``/``0``.
    """

    output: torch.Tensor
    log_bos: torch.Tensor
    scores: np.ndarray | None = None
    weights: np.ndarray | None = None


def attend(hidden: torch.Tensor, head: Head, pe: str, N: int | None = None,
           E: int | None = None, keep: bool = False) -> Attention:
    """Run ``head`` causally over ``hidden [pos, d]`` with score
    ``q_t.k_i - W(t - i)``. Query rows go in blocks, so no ``[n, n]`` matrix
    is held unless ``keep``. Inside a block the keys run backwards
    (``b-1 .. 0``), so that the PE term is a strided view of one table."""
    n = hidden.shape[0]
    q, k, v = hidden @ head.W_Q.T, hidden @ head.W_K.T, hidden @ head.W_V.T
    table = _pe_table(pe, n, N, E)
    out, log_bos = torch.empty_like(hidden), torch.empty(n, dtype=torch.float64)
    scores = np.full((n, n), -np.inf) if keep else None
    weights = np.zeros((n, n)) if keep else None
    for a in range(0, n, _BLOCK):
        b = min(n, a + _BLOCK)
        s = torch.addmm(table.as_strided((b - a, b), (1, 1), n - b + a), q[a:b], k[:b].flip(0).T)
        if keep:
            scores[a:b, :b] = s.flip(1).numpy()
        log_bos[a:b] = _softmax_(s)
        out[a:b] = (s @ v[:b].flip(0)) @ head.W_O.T
        if keep:
            weights[a:b, :b] = s.flip(1).numpy()
    return Attention(out, log_bos, scores, weights)


def _softmax_(s: torch.Tensor) -> torch.Tensor:
    """Softmax of ``s [rows, keys]`` over keys, in place. Returns ``[rows]``,
    the log weight of the last key (``<bos>`` in :func:`attend`'s order)."""
    s.sub_(s.max(dim=1, keepdim=True).values)
    log_last = s[:, -1].clone()
    s.masked_fill_(s < _UNDERFLOW, -math.inf).exp_()      # exp underflows to 0 there anyway
    z = s.sum(dim=1, keepdim=True)
    s.div_(z)
    return log_last - z.log().squeeze(1)


def _pe_table(pe, n, N, E) -> torch.Tensor:
    """``[2n - 1]``: ``-W(d)`` for ``d = -(n-1) .. n-1``, with ``-inf`` for
    ``d < 0`` (the causal mask). Entry ``[r, c]`` of the strided view in
    :func:`attend` is ``d = (a + r) - (b - 1 - c)``."""
    return torch.cat([torch.full((n - 1,), -math.inf, dtype=torch.float64),
                      -torch.from_numpy(weave(pe, np.arange(n), N, E))])


def recover_position(log_y: torch.Tensor, recovery: str = "round") -> torch.Tensor:
    """The layer-1 MLP of Equ.33, which the paper does not give. It is the exact
    inverse of Equ.32's ``y(t) = e^{-(t-1)}/S(t) = (e-1)/(e^t - 1)``:
    ``t = ln(1 + (e-1)/y)``. It is evaluated from ``log y``, so it stays exact
    where ``y`` underflows (``t`` > about 700). ``"round"`` gives the integer
    (Appendix E.3's "piecewise function"). ``"exact"`` keeps the real value."""
    if recovery not in RECOVERIES:
        raise ValueError(f"recovery={recovery!r}: allowed {RECOVERIES}")
    s = torch.logaddexp(torch.zeros_like(log_y), math.log(math.e - 1) - log_y)
    return torch.round(s) if recovery == "round" else s


# -- one run --------------------------------------------------------------------------

@dataclass(frozen=True)
class Statement:
    """Whether a run bears out its theorem. ``holds`` is None when the run does
    not reach the positions the theorem speaks about."""

    holds: bool | None
    text: str


@dataclass(frozen=True)
class TheoremRun:
    """A construction run under one PE.

    ``value [pos]``: ``o_t`` at the threshold dimension of the last layer (the
    attention output the theorems compare with ``H``; in layer 2 the residual
    stream's dim 3 also carries the position). ``bos_weight [pos]``: that
    layer's softmax weight on ``<bos>`` (``value = M * bos_weight - 1 + H``).
    ``layer1 [pos]`` (Equ.32/45) and ``position [pos]`` (``H^(1)`` dim 3,
    Equ.33/46) are None for NoPE. ``scores``/``weights``
    ``[layer, q_pos, k_pos]`` are kept on request.
    """

    pe: str
    M: int
    H: float
    N: int | None
    E: int | None
    layer2: str | None
    recovery: str | None
    value: np.ndarray
    bos_weight: np.ndarray
    layer1: np.ndarray | None = None
    position: np.ndarray | None = None
    scores: np.ndarray | None = None
    weights: np.ndarray | None = None

    @property
    def t(self) -> np.ndarray:
        """``[pos]``: keys seen, ``pos + 1`` (the proofs' ``t``)."""
        return np.arange(1, len(self.value) + 1)

    @property
    def tol(self) -> float:
        """Values within ``tol`` of ``H`` count as equal to it (float64 rounding)."""
        return 1e-9 * max(1.0, abs(self.H), self.M)

    def crossing(self) -> int | None:
        """The first ``t > M`` whose value is below ``H``, or None."""
        below = (self.t > self.M) & (self.value < self.H - self.tol)
        return int(self.t[np.argmax(below)]) if below.any() else None

    def statement(self) -> Statement:
        """Check the theorem's claim on this run's positions."""
        name = _pe_label(self.pe, self.N, self.E) + f" ({THEOREMS[self.pe]})"
        past = self.t > self.M
        if not past.any():
            return Statement(None, f"{name}: not tested, the input ends at t = {len(self.t)} <= M")
        if self.pe in ("nope", "relative"):
            return self._window_statement(name, past)
        first = self.crossing()
        claim = f"{name}: above H for every t > M"
        if first is None:
            return Statement(True, f"{claim}: holds up to t = {len(self.t)}")
        frac = np.mean(self.value[past] < self.H - self.tol)
        return Statement(False, f"{claim}: fails, below H from t = {first} "
                                f"({frac:.0%} of t = {self.M + 1}..{len(self.t)})")

    def _window_statement(self, name: str, past: np.ndarray) -> Statement:
        claim = f"{name}: above H for t < M, below for t > M"
        wrong = ((self.t < self.M) & (self.value <= self.H + self.tol)) | \
                (past & (self.value >= self.H - self.tol))
        if not wrong.any():
            return Statement(True, f"{claim}: holds (t <= {len(self.t)})")
        return Statement(False, f"{claim}: fails at {int(wrong.sum())} positions, "
                                f"first t = {int(self.t[np.argmax(wrong)])}")


def _pe_label(pe: str, N, E) -> str:
    return {"nope": "NoPE", "relative": "relative PE", "rerope": f"ReRoPE clamp N={N}",
            "stair": f"Stair PE N={N}, E={E}"}[pe]


def _check_run(pe, M, H, length, N, E, layer2, recovery, keep) -> None:
    if pe not in PES:
        raise ValueError(f"pe={pe!r}: allowed {PES}")
    check_int("M", M, 1, why="the window length")
    if isinstance(H, bool) or not isinstance(H, (int, float, np.number)) or not math.isfinite(H):
        raise ValueError(f"H={H!r}: allowed a finite number (the threshold)")
    check_int("length", length, 1, why="tokens including <bos>")
    if keep:
        check_int("length", length, 1, MAX_KEPT, "keep_attention holds [layer, n, n] scores")
    _check_weave_params(pe, M, N, E)
    if layer2 not in LAYER2_FORMS:
        raise ValueError(f"layer2={layer2!r}: allowed {LAYER2_FORMS}")
    if recovery not in RECOVERIES:
        raise ValueError(f"recovery={recovery!r}: allowed {RECOVERIES}")


def _check_weave_params(pe, M, N, E) -> None:
    uses = {"rerope": ("N",), "stair": ("N", "E")}.get(pe, ())
    for name, value in (("N", N), ("E", E)):
        if name not in uses and value is not None:
            raise ValueError(f"{name}={value!r} is not a parameter of pe={pe!r}: allowed None")
    if "N" in uses:
        check_int("N", N, 1, M - 1, f"the theorem needs 0 < N << M = {M}")
    if "E" in uses:
        check_int("E", E, 1, why="the stair width")


def run(pe: str, M: int, H: float, length: int, N: int | None = None, E: int | None = None,
        layer2: str = "corrected", recovery: str = "round", keep_attention: bool = False,
        seed: int | None = 0) -> TheoremRun:
    """Build the construction for ``pe`` and run it on ``length`` tokens
    (``<bos>`` plus ``length - 1`` others).

    - ``"nope"``: Theorem 3.1, one layer.
    - ``"relative"``, ``"rerope"`` (clamp at ``N``) and ``"stair"``
      (``N``, ``E``): Theorem 3.2's two layers. ``layer2`` picks Equ.34 as
      printed (``"paper"``) or the corrected weights; ``recovery`` picks how
      the MLP recovers the position.

    ``seed`` draws the entries the proofs leave arbitrary (``None``: zeros).
    The result does not depend on them.
    """
    _check_run(pe, M, H, length, N, E, layer2, recovery, keep_attention)
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    h0 = embedding(length, gen=gen)
    if pe == "nope":
        a = attend(h0, nope_head(M, H, gen=gen), pe, keep=keep_attention)
        return _result(pe, M, H, None, None, None, None, [a])
    a1 = attend(h0, position_head(gen=gen), pe, N, E, keep_attention)
    h1 = h0.clone()
    h1[:, _DIM] = recover_position(a1.log_bos, recovery)
    a2 = attend(h1, layer2_head(M, H, layer2, gen=gen), pe, N, E, keep_attention)
    return _result(pe, M, H, N, E, layer2, recovery, [a1, a2], h1[:, _DIM].numpy())


def _result(pe, M, H, N, E, layer2, recovery, layers: list, position=None) -> TheoremRun:
    last = layers[-1]
    kept = last.scores is not None
    return TheoremRun(
        pe=pe, M=M, H=float(H), N=N, E=E, layer2=layer2, recovery=recovery,
        value=last.output[:, _DIM].numpy(), bos_weight=last.log_bos.exp().numpy(),
        layer1=layers[0].output[:, _DIM].numpy() if len(layers) == 2 else None,
        position=position,
        scores=np.stack([a.scores for a in layers]) if kept else None,
        weights=np.stack([a.weights for a in layers]) if kept else None)


# -- what the proofs derive (closed forms, numpy; t = keys seen) -----------------------

def S(t) -> np.ndarray:
    """``S(t) = sum_{j=0}^{t-1} e^{-j}`` (Equ.29)."""
    return -np.expm1(-np.asarray(t, dtype=float)) / -math.expm1(-1.0)


def nope_value(M: float, H: float, t) -> np.ndarray:
    """Equ.24: ``o_t[3] = M/t - 1 + H``. This is also Thm 3.2 with the corrected layer 2."""
    return M / np.asarray(t, dtype=float) - 1.0 + H


def paper_layer2_value(M: float, H: float, t) -> np.ndarray:
    """What Equ.34's weights give under the relative PE: the layer-2 score is
    ``tau - t*i - (t - i)``, so ``softmax_1 = (1 - e^{-(t-1)})/(1 - e^{-t(t-1)})``,
    which tends to 1."""
    t = np.asarray(t, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(t > 1, np.expm1(-(t - 1)) / np.expm1(-t * (t - 1)), 1.0)
    return M * w - 1.0 + H


def layer1_value(t) -> np.ndarray:
    """Equ.32: ``e^{-(t-1)}/S(t) = (e-1)/(e^t - 1)``."""
    t = np.asarray(t, dtype=float)
    return (math.e - 1) * np.exp(-t) / -np.expm1(-t)


def clamp_layer1_value(t, N: int) -> np.ndarray:
    """Equ.45: ``e^{-N}/S#(t)`` with ``S#(t) = S(N) + (t - N) e^{-N}`` for
    ``t > N + 1``. Below that it is Equ.32, since no distance is clamped yet."""
    t = np.asarray(t, dtype=float)
    clamped = math.exp(-N) / (S(N) + (t - N) * math.exp(-N))
    return np.where(t > N + 1, clamped, layer1_value(t))


def clamp_position(t, N: int) -> np.ndarray:
    """The exact inverse of Equ.45, i.e. the position the layer-1 MLP recovers
    under the clamp: ``t`` up to ``N + 1``, then
    ``ln(e^{N+1} + (e-1)(t-N-1))`` (not the constant ``N + 1`` of Equ.46)."""
    t = np.asarray(t, dtype=float)
    grown = np.log(math.exp(N + 1) + (math.e - 1) * np.maximum(t - N - 1, 0))
    return np.where(t > N + 1, grown, t)


def clamp_plateau_end(N: int) -> int:
    """The last ``t`` whose recovered clamp position rounds to ``N + 1`` (Equ.46 holds up to it)."""
    return N + 1 + math.floor(math.exp(N + 1) * (math.sqrt(math.e) - 1) / (math.e - 1))


def clamp_value(M: float, H: float, t, N: int) -> np.ndarray:
    """Equ.52 to 56 made exact. This is layer 2 under the clamp with the
    corrected weights and rounded positions, for ``t <= clamp_plateau_end(N)``
    (NaN beyond). Then ``softmax_1 = 1/Z``:

    - ``Z = t`` for ``t <= N + 1`` (uniform);
    - ``Z = 2 S(t-N) + (2N - t) e^{N+1-t}`` for ``N + 1 <= t <= 2N``;
    - ``Z = 2 S(N) + (t - 2N) e^{-N}`` for ``t >= 2N`` (Equ.52).
    """
    t = np.asarray(t, dtype=float)
    with np.errstate(over="ignore"):
        mid = 2 * S(t - N) + (2 * N - t) * np.exp(np.minimum(N + 1 - t, 0))
    far = 2 * S(N) + (t - 2 * N) * math.exp(-N)
    Z = np.where(t <= N + 1, t, np.where(t <= 2 * N, mid, far))
    return np.where(t <= clamp_plateau_end(N), M / Z - 1.0 + H, np.nan)


def clamp_crossing(M: float, N: int) -> float:
    """Where :func:`clamp_value`'s ``t >= 2N`` branch reaches ``H``:
    ``t* = 2N + e^N (M - 2 S(N))``. It is meaningful only while
    ``t* <= clamp_plateau_end(N)``."""
    return 2 * N + math.exp(N) * (M - 2 * float(S(N)))


def closed_form(pe: str, M: int, H: float, length: int, N: int | None = None,
                layer2: str = "corrected", recovery: str = "round") -> np.ndarray:
    """``[pos]``: the value the proofs derive, where a derivation exists (NaN elsewhere).

    - ``"nope"`` and ``"relative"`` (corrected): Equ.24.
    - ``"relative"`` with ``layer2="paper"``: :func:`paper_layer2_value`.
    - ``"rerope"`` (corrected, rounded): :func:`clamp_value`.
    - The clamp's other variants and ``"stair"``: only ``t <= N + 1``, where no
      distance is woven yet.
    """
    t = np.arange(1, length + 1)
    unwoven = paper_layer2_value(M, H, t) if (layer2 == "paper" and pe != "nope") \
        else nope_value(M, H, t)
    if pe in ("nope", "relative"):
        return unwoven
    if pe == "rerope" and layer2 == "corrected" and recovery == "round":
        return clamp_value(M, H, t, N)
    return np.where(t <= N + 1, unwoven, np.nan)
