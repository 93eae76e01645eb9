"""A batch of prompts of equal token count equals the prompts run one at a time,
under every method (Mesa's presets too): the prompt's last logits and the
greedy tokens ``model.generate`` continues it with, row by row, past the
training length and below it."""

from __future__ import annotations

import pytest
import torch

import mesa_viz as mv
from mesa_viz.models import tiny_model

T = 32                       # the training length the methods are applied with
#: Parameters for a short ``T`` (the defaults assume thousands of tokens).
SHORT_T = {
    "mesa": dict(first_chunk=4, chunk_size=10, last_chunk=8),
    "stair": dict(stair_start=8, stair_width=3),
    "rerope": dict(window=10),
    "leaky-rerope": dict(window=10),
    "streaming-llm": dict(sink_tokens=4),
    "lm-infinite": dict(sink_tokens=4),
    "self-extend": dict(group_size=3, window=8),
    "dual-chunk": dict(chunk_size=20, local_window=8),
    "string": dict(shifted_offset=14, local_window=4),
    "pi": dict(factor=3.0),
    "ntk": dict(factor=3.0),
    "yarn": dict(factor=3.0),
}
#: ``(method, params, train_length, prompt length past it)``: every registered
#: method, and the presets, at a ``T`` their constants fit (Mesa's paper preset
#: needs ``T > 612``; 900 tokens make three chunks).
CASES = [(m, SHORT_T.get(m, {}), T, 2 * T + T // 2 + 1) for m in mv.METHODS] + [
    ("mesa", dict(preset="paper"), 640, 900),
    ("mesa", dict(preset="authors-code"), 640, 900),
    ("self-extend", dict(preset="authors-code", group_size=3, window=8), T, 81),
    ("dual-chunk", dict(preset="authors-code"), T, 81),
    ("leaky-rerope", dict(preset="authors-code", window=10), T, 81),
]
NEW_TOKENS = 4
TOLERANCE = 1e-5             # float32


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")[0]


def _prompts(n: int, rows: int = 3) -> torch.Tensor:
    """``rows`` different random prompts ``[rows, n]``."""
    g = torch.Generator().manual_seed(n)
    return torch.randint(3, 500, (rows, n), generator=g)


def _run(model, ids, method, params, train_length):
    """The prompt's last-position logits ``[rows, vocab]`` (the prefill's, as
    ``generate`` saw them) and greedy tokens ``[rows, NEW_TOKENS]``."""
    with torch.no_grad(), mv.apply(model, method, train_length=train_length, **params):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    return out.logits[0], out.sequences[:, ids.shape[1]:]


def _case_id(case):
    method, params = case[:2]
    return method + ("-" + params["preset"] if "preset" in params else "")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("past", [True, False], ids=["past-T", "below-T"])
def test_batch_equals_one_at_a_time(model, case, past):
    method, params, train_length, long = case
    ids = _prompts(long if past else 3 * train_length // 4)
    batch_logits, batch_tokens = _run(model, ids, method, params, train_length)
    for r in range(ids.shape[0]):
        logits, tokens = _run(model, ids[r:r + 1], method, params, train_length)
        diff = (batch_logits[r] - logits[0]).abs().max().item()
        assert diff <= TOLERANCE, f"{method} row {r}: max |logits difference| {diff:.2e}"
        assert torch.equal(batch_tokens[r], tokens[0]), f"{method} row {r}: greedy tokens"
    assert not torch.equal(batch_logits[0], batch_logits[1])      # the rows differ
