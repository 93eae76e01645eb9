"""Each method inside vLLM against ``apply()`` on transformers: tiny random
models in float32 on CPU, prompts below ``T`` and at 3-8x ``T`` batched in one
``generate`` call, greedy decoding past the prompt; the same greedy tokens and
log-probabilities (of every prompt token and every generated one) within
``vllm_cases.TOLERANCE``.  One engine per (model, method, setting), reused for
all its prompts."""

from __future__ import annotations

import gc

import pytest

from vllm_cases import (KV_CACHE_BYTES, NOT_HERE, TOLERANCE, check_rows, compare, compare_only,
                        prompts_of, reference, run_vllm)

pytest.importorskip("vllm", reason=NOT_HERE)
mesa_viz_vllm = pytest.importorskip("mesa_viz_vllm", reason=NOT_HERE)

T = 64
STEPS = 6
#: Prompt lengths: below T, about 3x and 7.5x T.
LENGTHS = (40, 200, 480)
#: A prefill budget below the longer prompts: they are prefilled in chunks.
CHUNKED = dict(max_num_batched_tokens=128)
#: (model, method, train_length, parameters, setting, engine arguments, prompt lengths)
CASES = [
    ("llama", "origin", T, {}, "chunked prefill, prefix cache", CHUNKED, LENGTHS),
    ("llama", "mesa", T, {}, "whole prefill", {}, LENGTHS),
    ("llama", "rerope", T, {}, "chunked prefill, prefix cache", CHUNKED, LENGTHS),
    ("llama", "leaky-rerope", T, {}, "chunked prefill", CHUNKED, LENGTHS),
    ("llama", "self-extend", T, {}, "chunked prefill", CHUNKED, LENGTHS),
    ("llama", "dual-chunk", T, {}, "chunked prefill, prefix cache", CHUNKED, LENGTHS),
    ("llama", "streaming-llm", T, {}, "chunked prefill, prefix cache", CHUNKED, LENGTHS),
    ("llama", "stair", T, {}, "chunked prefill", CHUNKED, LENGTHS),
    ("llama", "lm-infinite", T, {}, "chunked prefill, prefix cache", CHUNKED, LENGTHS),
    ("llama", "string", T, {}, "chunked prefill, prefix cache", CHUNKED, LENGTHS),
    ("qwen3", "mesa", T, {}, "whole prefill", {}, LENGTHS),
    ("qwen3", "rerope", T, {}, "whole prefill, prefix cache", {}, LENGTHS),
    ("mistral", "mesa", T, {}, "whole prefill", {}, LENGTHS),
    ("mistral", "self-extend", T, {}, "whole prefill", {}, LENGTHS),
    ("qwen2", "stair", T, {}, "whole prefill", {}, LENGTHS),
    ("llama3-rope", "mesa", T, {}, "llama3 rope, whole prefill", {}, LENGTHS),
    ("qwen3-yarn", "rerope", T, {}, "yarn rope, whole prefill", {}, LENGTHS),
    ("llama", "mesa", 520, {"preset": "paper"}, "paper preset", {}, (300, 1600)),
    ("llama", "mesa", 520, {"preset": "authors-code"}, "authors-code preset", {},
     (300, 1600)),
]


def _engine(path: str, method: str, T: int, params: dict, engine: dict, longest: int):
    """A vLLM engine for ``method`` on the saved model at ``path``."""
    return mesa_viz_vllm.LLM(path, method, train_length=T, engine=dict(
        dtype="float32", max_model_len=longest + STEPS + 8, enforce_eager=True,
        kv_cache_memory_bytes=KV_CACHE_BYTES, seed=0, **engine), **params)


def _close(llm) -> None:
    """Shut the engine down before the next one starts."""
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


@pytest.mark.parametrize("name, method, T, params, setting, engine, lengths", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[4]}" for c in CASES])
def test_method_matches_apply(saved_models, name, method, T, params, setting, engine,
                              lengths):
    """Greedy tokens equal and log-probabilities within the tolerance for
    every prompt of a batch; with the prefix cache on, the same prompts again
    (a whole-prompt hit) and a prompt sharing only a prefix (a partial hit)."""
    model, path = saved_models(name)
    prompts = prompts_of(lengths)
    refs = reference(model, method, T, params, prompts, STEPS)
    llm = _engine(path, method, T, params, engine, max(lengths))
    try:
        label = dict(family=name, method=method + (f" ({params['preset']})" if params else ""),
                     setting=setting)
        rows = [compare(label, p, r, g)
                for p, r, g in zip(prompts, refs, run_vllm(llm, prompts, STEPS))]
        if "prefix cache" in setting:
            rows += _prefix_cache_rows(llm, model, method, T, params, prompts, refs[-1], label)
        check_rows(rows)
    finally:
        _close(llm)


def _prefix_cache_rows(llm, model, method, T, params, prompts, longest_ref,
                       label) -> list[dict]:
    """The longest prompt again (``longest_ref``: its reference) and a new
    prompt sharing its first 256 tokens: both read cached blocks (asserted),
    and match the reference."""
    longest = prompts[-1]
    shared = longest[:256] + prompts_of([100], seed=1)[0]
    again = [longest, shared]
    got = run_vllm(llm, again, STEPS, prompt_logprobs=False)
    cached = _cached_tokens(llm, again)
    assert all(c >= 256 - 128 for c in cached), f"no prefix-cache hit: cached tokens {cached}"
    label = dict(label, setting=label["setting"] + " (cache hit)")
    refs = [longest_ref, *reference(model, method, T, params, [shared], STEPS)]
    return [compare(label, p, r, g) for p, r, g in zip(again, refs, got)]


def _cached_tokens(llm, prompts) -> list[int]:
    """Tokens each prompt reads from the prefix cache (a one-token run)."""
    from vllm import SamplingParams, TokensPrompt
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                        SamplingParams(max_tokens=1), use_tqdm=False)
    return [o.num_cached_tokens or 0 for o in outs]


def test_another_methods_reference_is_told_apart(saved_models):
    """The comparison has power: ReRoPE's engine output against Origin's and
    Leaky-ReRoPE's reference differs past ``T`` (in greedy tokens or far
    beyond the tolerance), against its own it does not."""
    model, path = saved_models("llama")
    prompts = prompts_of((200, 480), seed=4)
    llm = _engine(path, "rerope", T, {}, {}, max(LENGTHS))
    try:
        got = run_vllm(llm, prompts, STEPS)
    finally:
        _close(llm)
    for method, exact in (("origin", False), ("leaky-rerope", False), ("rerope", True)):
        refs = reference(model, method, T, {}, prompts, STEPS)
        rows = [compare_only(p, r, g) for p, r, g in zip(prompts, refs, got)]
        close = [r["greedy_equal"] and r["max_logprob_diff"] <= TOLERANCE for r in rows]
        assert close == [exact] * len(prompts), (method, rows)
