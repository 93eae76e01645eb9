"""The backend when vLLM preempts a request for lack of KV cache and prefills it
again with its generated tokens: a method whose rows do not depend on the
prompt's length stays exact; Mesa, whose decode rows do, refuses the step."""

from __future__ import annotations

import gc

import pytest

from vllm_cases import NOT_HERE, check_rows, compare, prompts_of, reference, run_vllm

pytest.importorskip("vllm", reason=NOT_HERE)
mesa_viz_vllm = pytest.importorskip("mesa_viz_vllm", reason=NOT_HERE)

T, STEPS, PROMPT = 64, 80, 200
#: Room for 512 tokens (five blocks of 128, one kept by vLLM): two prompts of 200 tokens fit,
#: their decode past 256 tokens each does not.
SMALL_CACHE = dict(max_model_len=512, max_num_seqs=2)


def _tiny_cache_engine(path: str, method: str, **engine):
    """An engine whose KV cache holds ``max_model_len`` tokens and no more."""
    per_token = 2 * 2 * 2 * 16 * 4            # layers, K and V, kv heads, head_dim, float32
    return mesa_viz_vllm.LLM(path, method, train_length=T, engine=dict(
        dtype="float32", enforce_eager=True, seed=0, block_size=128,
        kv_cache_memory_bytes=640 * per_token, **SMALL_CACHE, **engine))


def _count_preemptions(monkeypatch) -> list:
    """A list that gets one item per request vLLM's scheduler preempts (the
    engine runs in this process)."""
    from vllm.v1.core.sched.scheduler import Scheduler
    seen, original = [], Scheduler._preempt_request

    def preempt(self, request, *args, **kwargs):
        seen.append(request.request_id)
        return original(self, request, *args, **kwargs)
    monkeypatch.setattr(Scheduler, "_preempt_request", preempt)
    return seen


def test_a_preempted_request_under_rerope_stays_exact(saved_models, monkeypatch):
    model, path = saved_models("llama")
    preempted = _count_preemptions(monkeypatch)
    prompts = prompts_of((PROMPT, PROMPT), seed=3)
    llm = _tiny_cache_engine(path, "rerope", enable_prefix_caching=False)
    try:
        got = run_vllm(llm, prompts, STEPS, prompt_logprobs=False)
        assert preempted, "the engine preempted no request: the test's cache is too large"
        refs = reference(model, "rerope", T, {}, prompts, STEPS)
        label = dict(family="llama", method="rerope", setting="preempted, prefilled again")
        check_rows([compare(label, p, r, g) for p, r, g in zip(prompts, refs, got)])
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def test_a_preempted_request_under_mesa_is_refused(saved_models):
    _, path = saved_models("llama")
    llm = _tiny_cache_engine(path, "mesa")
    try:
        with pytest.raises(Exception) as caught:
            run_vllm(llm, prompts_of((PROMPT, PROMPT), seed=3), STEPS, prompt_logprobs=False)
        assert "vLLM preempted it" in _messages(caught.value), _messages(caught.value)
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def _messages(error: BaseException) -> str:
    """The error's message and its causes'."""
    out = []
    while error is not None:
        out.append(str(error))
        error = error.__cause__ or error.__context__
    return " <- ".join(out)
