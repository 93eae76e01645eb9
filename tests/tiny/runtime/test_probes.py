"""trace(): attention rows and hidden states captured under a method."""

import numpy as np
import pytest
import torch

import mesa_viz as mv
from mesa_viz.models import tiny_model
from mesa_viz.runtime import Trace


def _ids(n, seed=0):
    return torch.randint(0, 500, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def eager_llama():
    return tiny_model("llama", attn_implementation="eager")[0]


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_rows_equal_eager_attention_on_short_input(family):
    model = tiny_model(family, attn_implementation="eager")[0]
    ids = _ids(40)
    with torch.no_grad():
        out = model(ids, output_attentions=True, output_hidden_states=True)
    tr = mv.trace(model, ids, "origin", query_rows=[0, 17, 39])
    for li, layer in enumerate(tr.layers):
        ref = out.attentions[layer][0][:, [0, 17, 39]].numpy()      # [head, row, k]
        assert np.abs(tr.attention[li] - ref).max() < 1e-5
    hs = torch.stack(out.hidden_states)[:, 0].numpy()                # [layer+1, pos, hidden]
    last = len(hs) - 1
    assert np.abs(tr.hidden[:last] - hs[:last]).max() < 1e-5
    assert tr.attention.shape == (model.config.num_hidden_layers, model.config.num_attention_heads,
                                  3, 40)


@pytest.mark.parametrize("method,params", [
    ("mesa", dict(first_chunk=8, chunk_size=16, last_chunk=16)),
    ("rerope", dict(window=20)), ("streaming-llm", dict(sink_tokens=4)),
    ("lm-infinite", dict(sink_tokens=4)), ("leaky-rerope", dict(window=20)),
    ("stair", dict(stair_start=10, stair_width=3)), ("dynamic-ntk", dict(factor=2.0))])
def test_rows_follow_the_method(eager_llama, method, params):
    ids = _ids(150, seed=1)
    rows = [3, 40, 100, 149]
    tr = mv.trace(eager_llama, ids, method, train_length=64, query_rows=rows, **params)
    assert np.allclose(tr.attention.sum(-1), 1.0, atol=1e-5)
    rel, vis = tr.layout_rows()
    assert (tr.attention[..., ~vis] == 0).all()                      # masked keys get nothing
    # the logits the trace ran equal apply()'s (captured rows recomputed exactly)
    with mv.apply(eager_llama, method, train_length=64, **params), torch.no_grad():
        ref = eager_llama(ids).logits[0, -1]
    with mv.apply(eager_llama, method, train_length=64,
                  capture=mv.runtime.Capture(layers=[0, 1], heads=[0], rows=rows),
                  **params), torch.no_grad():
        got = eager_llama(ids).logits[0, -1]
    assert (got - ref).abs().max() < 1e-4


def test_mesa_middle_chunk_rows_see_first_chunk_and_themselves(tiny_llama):
    ids = _ids(150, seed=2)
    tr = mv.trace(tiny_llama, ids, "mesa", train_length=64, first_chunk=8, chunk_size=16,
                  last_chunk=16, query_rows=[50])
    a, b = next(c for c in tr.chunk_plan if c[0] <= 50 < c[1])
    seen = np.flatnonzero(tr.attention[0, 0, 0] > 0)
    assert set(seen) == set(range(8)) | set(range(a, 51))


def test_model_untouched_and_hidden_dims(tiny_llama):
    ids = _ids(80, seed=3)
    before = tiny_llama(ids).logits
    tr = mv.trace(tiny_llama, ids, "mesa", train_length=32, layers=[1], heads=[2],
                  dims=[0, 5], hidden_layers=[0, 2])
    assert torch.equal(tiny_llama(ids).logits, before)
    assert tr.hidden.shape == (2, 80, 2) and tr.norms.shape == (2, 80)
    assert tr.attention.shape == (1, 1, 1, 80)


@pytest.mark.parametrize("method,params", [
    ("origin", {}), ("mesa", dict(first_chunk=8, chunk_size=16, last_chunk=16)),
    ("rerope", dict(window=20))])
def test_trace_stops_after_the_deepest_layer_asked_for(tiny_llama, method, params):
    """Hidden states up to layer 1 (the output of decoder layer 0): the layer
    above does not run, and the values equal those of the whole forward (a
    prefill in pieces included)."""
    from mesa_viz.models import decoder_layers
    ids = _ids(150, seed=4)
    layers = decoder_layers(tiny_llama)
    whole = mv.trace(tiny_llama, ids, method, train_length=64, layers=[0], query_rows=[149],
                     **params)
    ran = []
    handle = layers[-1].register_forward_hook(lambda *a: ran.append(1))
    try:
        short = mv.trace(tiny_llama, ids, method, train_length=64, layers=[],
                         hidden_layers=[0, 1], **params)
        rows = mv.trace(tiny_llama, ids, method, train_length=64, layers=[0], query_rows=[149],
                        hidden_layers=[1], **params)
    finally:
        handle.remove()
    assert ran == [] and whole.meta["seconds"] > 0
    assert np.abs(short.hidden - whole.hidden[[0, 1]]).max() < 1e-6
    assert np.abs(rows.hidden - whole.hidden[[1]]).max() < 1e-6
    assert np.abs(rows.attention[0] - whole.attention[0]).max() < 1e-6
    with pytest.raises(ValueError, match=r"count 3: allowed 0\.\.2 decoder layers"):
        with mv.runtime.first_layers(tiny_llama, 3):
            pass
    assert decoder_layers(tiny_llama) is layers                  # restored


def test_save_and_load_roundtrip(tiny_llama, tmp_path):
    tr = mv.trace(tiny_llama, _ids(60), "rerope", train_length=32, window=8, dims=[1, 2])
    tr.save(tmp_path / "t")
    back = Trace.load(tmp_path / "t")
    assert back.method == "rerope" and back.params == tr.params
    assert np.array_equal(back.attention, tr.attention) and np.array_equal(back.hidden, tr.hidden)
    assert np.array_equal(back.layout_rows()[0], tr.layout_rows()[0])


@pytest.mark.parametrize("kw,needle", [
    (dict(layers=[7]), "layer [7] out of range: allowed 0..1"),
    (dict(heads=[4]), "head [4] out of range: allowed 0..3"),
    (dict(query_rows=[20]), "query row [20] out of range: allowed 0..19"),
    (dict(dims=[64]), "dim [64] out of range: allowed 0..63"),
    (dict(hidden_layers=[3]), "hidden layer [3] out of range: allowed 0..2"),
])
def test_bad_indices(tiny_llama, kw, needle):
    with pytest.raises(ValueError) as e:
        mv.trace(tiny_llama, _ids(20), "origin", **kw)
    assert needle in str(e.value)


def test_bad_method_and_empty_input(tiny_llama):
    with pytest.raises(ValueError, match="unknown method"):
        mv.trace(tiny_llama, _ids(20), "nope")
    with pytest.raises(ValueError, match="empty input"):
        mv.trace(tiny_llama, torch.zeros(1, 0, dtype=torch.long), "mesa")
    gpt2 = tiny_model("gpt2")[0]
    with pytest.raises(ValueError, match="no rotary"):
        mv.trace(gpt2, _ids(20), "mesa")
