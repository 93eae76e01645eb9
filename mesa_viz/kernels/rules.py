"""Near/far position rules: the one statement of a method's positions that both the
torch path (:func:`.near_far.by_rules`) and the one-launch Triton kernel
(``fused/``) read.

Keys split into two sets per query ``i``:

* near keys: ``0 <= i - j < near``, query at ``i``, key at ``j``;
* far keys: ``i - j >= near`` and ``j < far_limit`` (sinks), query at
  ``min(qa * floor((i + qo) / qg) + qb, qmax)``, key at ``ka * floor((j + ko)
  / kg) + kb`` (ReRoPE, Leaky-ReRoPE, STRING, StreamingLLM, LM-Infinite,
  Self-Extend's grouping); or
* ``stair = (s, N, E)``: per-query Stair PE for queries ``i >= s`` (Mesa's last
  chunk; ``s = 0`` for the ``stair`` method).  With ``s - N - j = E a_j + b_j``
  and query class ``r = (i - s) mod E``, step ``m = floor((i - s) / E)``
  (:class:`.stair.StairGeometry`), the key goes to ``-(N + a_j)`` and the
  query to ``m`` where ``b_j < E - r``, to ``m + 1`` elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Rules", "ALL_NEAR", "positions", "far_query_position", "far_key_position",
           "far_keys", "far_visible"]


#: ``near`` of a method without far keys (origin): every causal key is near.
ALL_NEAR = 2 ** 62


@dataclass(frozen=True)
class Rules:
    """Position rules of one launch (module doc).  ``stair``: ``(s, N, E)``
    or None; the affine-floor far rule is used when ``stair`` is None."""

    near: int
    far_limit: int = ALL_NEAR
    qa: float = 0.0
    qb: float = 0.0
    qo: int = 0
    qg: int = 1
    qmax: float = math.inf
    ka: float = 0.0
    kb: float = 0.0
    ko: int = 0
    kg: int = 1
    stair: tuple[int, int, int] | None = None


def _floor_div(x: torch.Tensor, g: int) -> torch.Tensor:
    return torch.div(x, g, rounding_mode="floor") if g != 1 else x


def positions(rules: Rules, i: torch.Tensor, j: torch.Tensor):
    """``(q_near, q_far_a, q_far_b, k_far, use_a)``: positions of queries
    ``i [M]`` and keys ``j [N]`` (float32), ``use_a [M, N]`` where the far
    score takes the query at ``q_far_a`` (else ``q_far_b``)."""
    if rules.stair is not None:
        s, N, E = rules.stair
        m = torch.div(i - s, E, rounding_mode="floor")
        r = torch.remainder(i - s, E)
        a = torch.div(s - N - j, E, rounding_mode="floor")
        b = torch.remainder(s - N - j, E)
        use_a = b[None, :] < (E - r)[:, None]
        return i.float(), m.float(), (m + 1).float(), (-(N + a)).float(), use_a
    qf = far_query_position(rules, i)
    return i.float(), qf, qf, far_key_position(rules, j), None


def far_query_position(rules: Rules, i: torch.Tensor) -> torch.Tensor:
    """Far-set query positions ``[len(i)]`` (float32) of the affine-floor rule."""
    return torch.clamp(rules.qa * _floor_div(i + rules.qo, rules.qg).double() + rules.qb,
                       max=rules.qmax).float()


def far_key_position(rules: Rules, j: torch.Tensor) -> torch.Tensor:
    """Far-set key positions ``[len(j)]`` (float32) of the affine-floor rule."""
    return (rules.ka * _floor_div(j + rules.ko, rules.kg).double() + rules.kb).float()


def far_keys(rules: Rules, i_lo: int, i_hi: int) -> tuple[int, int]:
    """``(j0, j1)``: the keys that are far for some query in ``i_lo..i_hi``
    (``i - j >= near`` and ``j < far_limit``)."""
    return 0, min(rules.far_limit, max(0, i_hi - rules.near + 1))


def far_visible(rules: Rules, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Where query ``i`` sees key ``j`` as far (broadcast)."""
    return (i - j >= rules.near) & (j < rules.far_limit)
