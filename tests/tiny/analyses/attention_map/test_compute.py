"""attention_map(): the whole map of one head, block by block, pooled; checked
against pooling the full matrix (the model's own eager attention for origin,
the independent dense complex-RoPE reference for the other methods past T)."""

import numpy as np
import pytest
import torch
from reference import dynamic_ntk_inv_freq, reference_probs

import mesa_viz as mv
from mesa_viz.models import decoder_layers, tiny_model
from mesa_viz.analyses.attention_map.pooling import AttentionMap

T = 64


def _ids(n, seed=0):
    return torch.randint(0, 500, (1, n), generator=torch.Generator().manual_seed(seed))


def pool_full(full: np.ndarray, q_edges, k_edges, pool: str) -> np.ndarray:
    """Pool a full ``[n, n]`` matrix into the map's cells, the plain way."""
    reduce = np.max if pool == "max" else np.mean
    return np.array([[reduce(full[a:b, c:d]) for c, d in zip(k_edges[:-1], k_edges[1:])]
                     for a, b in zip(q_edges[:-1], q_edges[1:])])


@pytest.fixture(scope="module")
def eager():
    return {f: tiny_model(f, attn_implementation="eager", max_position_embeddings=T)[0]
            for f in ("llama", "gpt_neox")}


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
@pytest.mark.parametrize("pool", ["max", "mean"])
def test_origin_map_equals_pooled_eager_attention(eager, family, pool):
    model, ids = eager[family], _ids(150)
    with torch.no_grad():
        full = model(ids, output_attentions=True).attentions[1][0, 3].numpy()      # [n, n]
    amap = mv.attention_map(model, ids, "origin", layer=1, head=3, grid=41, pool=pool,
                            progress=False)
    assert amap.values.shape == (41, 41) and amap.q_edges[-1] == amap.k_edges[-1] == 150
    assert (np.diff(amap.q_edges) >= 3).all()                    # 150 / 41: uneven cells
    np.testing.assert_allclose(amap.values, pool_full(full, amap.q_edges, amap.k_edges, pool),
                               atol=2e-6)


CASES = {
    "mesa": dict(first_chunk=8, chunk_size=16, last_chunk=16),
    "mesa-anchored": dict(first_chunk=8, chunk_size=20, last_chunk=10, stair="anchored",
                          stair_start=6, stair_width=4),
    "rerope": dict(window=20),
    "leaky-rerope": dict(window=20),
    "stair": dict(stair_start=10, stair_width=3),
    "streaming-llm": dict(sink_tokens=4),
    "dynamic-ntk": dict(factor=2.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_map_past_train_length_equals_pooled_dense_reference(eager, case):
    """Past T the map equals pooling the reference's full probabilities,
    computed independently (complex-number RoPE at ``layout(...)``'s positions)."""
    model, ids, n = eager["llama"], _ids(170, seed=1), 170
    method, params = case.split("-anchored")[0], CASES[case]
    lay = mv.layout(method, n, train_length=T, **params)
    m = mv.methods.resolve(method, n, train_length=T, **params)
    inv = None if m.rope_parameters() is None else \
        dynamic_ntk_inv_freq(model, T, m.factor, [n] * n)
    full = reference_probs(model, ids, lay.relative_positions, lay.mask, layer=1,
                           inv_freq=inv)[2].numpy()
    assert np.allclose(full.sum(-1), 1)
    for pool in ("max", "mean"):
        amap = mv.attention_map(model, ids, method, layer=1, head=2, grid=60, pool=pool,
                                train_length=T, progress=False, **params)
        np.testing.assert_allclose(amap.values, pool_full(full, amap.q_edges, amap.k_edges, pool),
                                   atol=5e-6, err_msg=f"{case} {pool}")
    if lay.chunk_plan is not None:
        assert amap.chunk_plan == [list(c) for c in lay.chunk_plan.chunks]


def test_zoom_is_exact_and_redraws_from_a_saved_map(eager, tmp_path):
    model, ids = eager["llama"], _ids(160, seed=2)
    params = CASES["mesa"]
    amap = mv.attention_map(model, ids, "mesa", layer=0, head=1, grid=32, train_length=T,
                            progress=False, **params)
    lay = mv.layout("mesa", 160, train_length=T, **params)
    full = reference_probs(model, ids, lay.relative_positions, lay.mask, layer=0)[1].numpy()
    amap.save(tmp_path / "m")
    back = AttentionMap.load(tmp_path / "m")                     # no model from here on
    assert back.method == "mesa" and back.params == amap.params and back.grid == 32
    np.testing.assert_array_equal(back.values, amap.values)
    zoom = back.zoom((120, 150, 10, 40), grid=64)                # narrower than the grid
    assert zoom.values.shape == (30, 30) and zoom.region == [120, 150, 10, 40]
    np.testing.assert_allclose(zoom.values, full[120:150, 10:40], atol=2e-6)
    coarse = back.zoom((100, 160, 0, 160), grid=16, pool="mean")
    np.testing.assert_allclose(coarse.values, pool_full(full[100:], coarse.q_edges - 100,
                                                        coarse.k_edges, "mean"), atol=2e-6)
    amap.save(tmp_path / "small", qk=False)
    with pytest.raises(ValueError, match="without its queries and keys"):
        AttentionMap.load(tmp_path / "small").zoom((0, 10, 0, 10))


def test_forward_stops_after_the_mapped_layer_and_reports_cost(eager):
    model, ids = eager["llama"], _ids(100)
    calls = []
    layers = decoder_layers(model)
    handles = [l.register_forward_hook(lambda *a, k=k: calls.append(k))
               for k, l in enumerate(layers)]
    try:
        amap = mv.attention_map(model, ids, "rerope", layer=0, head=0, grid=10, train_length=T,
                                progress=False)
    finally:
        for h in handles:
            h.remove()
    assert calls == []                   # stopped inside layer 0's attention: no layer finished
    assert set(amap.seconds) == {"forward", "map"} and amap.peak_bytes is not None
    assert amap.q.shape == (100, model.config.head_dim) and amap.k.shape == amap.q.shape
    with torch.no_grad():                            # and the model is as it was
        torch.testing.assert_close(model(ids).logits, tiny_model(
            "llama", attn_implementation="eager", max_position_embeddings=T)[0](ids).logits)


@pytest.mark.parametrize("kw, match", [
    (dict(layer=2), r"layer \[2\] out of range: allowed 0..1"),
    (dict(head=4), r"head \[4\] out of range: allowed 0..3"),
    (dict(grid=81), r"grid=81: allowed an integer in \[1, 80\]"),
    (dict(grid=0), r"grid=0: allowed an integer in \[1, 80\]"),
    (dict(pool="median"), r"pool='median': allowed \['max', 'mean'\]"),
    (dict(region=(0, 90, 0, 10)), r"region=\(0, 90, 0, 10\) is out of range: allowed 0 <= "
                                  r"q_start < q_stop <= 80"),
    (dict(region=(5, 5, 0, 10)), r"out of range"),
    (dict(region=(1, 2)), r"region=\(1, 2\): allowed \(q_start, q_stop, k_start, k_stop\)"),
])
def test_bad_input_is_refused_before_running(eager, kw, match):
    args = dict(layer=1, head=0, grid=16, progress=False) | kw
    with pytest.raises(ValueError, match=match):
        mv.attention_map(eager["llama"], _ids(80), "mesa", **args)
