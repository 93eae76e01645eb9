"""mesa_viz.analyses.attention_map.pooling on random tensors: block scores equal the dense per-row
scores of ``kernels.dense_logits`` for every method, any layout (separable or
not) is exact, and pooling equals pooling the full softmax matrix."""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

import mesa_viz as mv
from mesa_viz import kernels
from mesa_viz.methods import Method
from mesa_viz.analyses.attention_map.pooling import (TableRope, _key_groups, block_logits, check_grid,
                                                     check_pool, check_region, pool_attention)

N, D, T = 180, 16, 64
# partial rotary (12 of 16 channels) and a cos/sin scaling, as YaRN-like models have
ROPE = kernels.Rope(1.0 / 10000 ** (torch.arange(0, 12, 2).float() / 12), 1.3)
#: Parameters that give a method structure at ``N`` tokens; every other method of
#: ``METHODS`` runs with its defaults (a new method is covered without a change here).
PARAMS = {"mesa": dict(log_scaling=True), "mesa-anchored": dict(stair="anchored"),
          "self-extend": dict(group_size=3, window=20),
          "dual-chunk": dict(chunk_size=40, local_window=16),
          "string": dict(shifted_offset=30, local_window=8)}
CASES = list(PARAMS) + [name for name in mv.METHODS if name not in PARAMS]


def _qk(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)


def _method(case):
    name = case.split("-anchored")[0]
    return mv.methods.resolve(name, N, train_length=T, **PARAMS.get(case, {}))


def _dense(method, q, k, rows):
    return kernels.dense_logits(method, q[None, None, rows], k[None, None, :rows[-1] + 1],
                                rows, ROPE, 0.3)[0, 0]


@pytest.mark.parametrize("case", CASES)
def test_block_logits_equal_dense_rows(case):
    m, (q, k) = _method(case), _qk()
    for a, b in [(0, 30), (30, 97), (97, 180), (150, 180)]:
        got = block_logits(m, q[a:b], k[:b], a, TableRope(ROPE, N), 0.3)
        ref = _dense(m, q, k, list(range(a, b)))
        assert torch.equal(torch.isinf(got), torch.isinf(ref)), (case, a)
        fin = torch.isfinite(ref)
        assert (got[fin] - ref[fin]).abs().max() < 2e-5, (case, a)


@dataclass(frozen=True)
class Scrambled(Method):
    """A layout with no structure: scrambled relative positions and mask."""

    name: ClassVar[str] = "scrambled"

    def relative(self, i, j):
        i, j = np.broadcast_arrays(np.asarray(i), np.asarray(j))
        return (i * 7919 + j * 104729) % 97, ((i * 31 + j * 17) % 5 != 0) & (j <= i)


def test_any_layout_is_exact_even_without_separable_groups():
    m, (q, k) = Scrambled(train_length=T), _qk(1)
    got = block_logits(m, q[40:90], k[:90], 40, ROPE, 0.3)
    ref = _dense(m, q, k, list(range(40, 90)))
    fin = torch.isfinite(ref)
    assert torch.equal(fin, torch.isfinite(got))
    assert (got[fin] - ref[fin]).abs().max() < 2e-5


def test_key_groups_find_the_layout_structure():
    i, j = np.arange(100, 164)[:, None], np.arange(164)[None, :]
    groups, single = _key_groups(np.broadcast_to(i - j, (64, 164)))       # origin: one group
    assert len(groups) == 1 and single.size == 0
    stair = mv.methods.resolve("stair", 164, train_length=64, stair_start=8, stair_width=4)
    rel, _ = stair.relative(i, j)
    groups, single = _key_groups(rel[:, :80])             # far keys of every row: one per residue
    assert len(groups) == 4 and single.size == 0
    assert sorted(len(g) for g in groups) == [20] * 4
    rerope = mv.methods.resolve("rerope", 164, train_length=64, window=30)
    rel, _ = rerope.relative(i, j)
    groups, single = _key_groups(rel)                    # near, far, and the rows' crossings
    assert len(groups) == 2 and list(single) == list(range(71, 133))   # i0 - 30 < j < i1 - 30


def test_table_rope_equals_the_rope():
    table = TableRope(ROPE, 50)
    for pos in (torch.arange(-50, 51).float(), torch.tensor([0.5, 3.25]), torch.tensor([70.0])):
        for got, want in zip(table.cos_sin(pos, torch.float32), ROPE.cos_sin(pos, torch.float32)):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("pool", ["max", "mean"])
@pytest.mark.parametrize("case", ["mesa", "streaming-llm"])
def test_pooled_map_equals_pooling_the_full_matrix(case, pool):
    m, (q, k) = _method(case), _qk(2)
    full = torch.softmax(_dense(m, q, k, list(range(N))), -1).numpy()     # [n, n]
    reduce = np.max if pool == "max" else np.mean
    for region, grid in [(None, 37), ((60, 150, 5, 170), 23), ((100, 110, 20, 30), 64)]:
        values, qe, ke = pool_attention(m, q, k, ROPE, 0.3, grid=grid, pool=pool, region=region,
                                        progress=False)
        want = [[reduce(full[a:b, c:d]) for c, d in zip(ke[:-1], ke[1:])]
                for a, b in zip(qe[:-1], qe[1:])]
        np.testing.assert_allclose(values, want, atol=1e-6)
        assert len(qe) - 1 == min(grid, qe[-1] - qe[0]) and (np.diff(qe) >= 1).all()


@pytest.mark.parametrize("call, match", [
    (lambda: check_grid(0, 10), r"grid=0: allowed an integer in \[1, 10\]"),
    (lambda: check_grid(11, 10), r"grid=11: allowed an integer in \[1, 10\] \(the input has 10"),
    (lambda: check_grid(2.5, 10), r"grid=2.5"),
    (lambda: check_pool("sum"), r"pool='sum': allowed \['max', 'mean'\]"),
    (lambda: check_region((0, 11, 0, 5), 10), r"region=\(0, 11, 0, 5\) is out of range"),
    (lambda: check_region("abc", 10), r"region='abc': allowed \(q_start, q_stop, k_start"),
])
def test_checks_name_the_value_and_what_is_allowed(call, match):
    with pytest.raises(ValueError, match=match):
        call()
