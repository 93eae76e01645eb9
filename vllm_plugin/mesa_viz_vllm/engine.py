"""The one call: :func:`LLM`, vLLM's ``LLM`` under a mesa_viz method, and
:func:`hf_overrides`, the same method for ``vllm serve --hf-overrides``."""

from __future__ import annotations

import logging

from .pins import check_vllm
from .settings import check, check_engine, overrides_for

__all__ = ["LLM", "hf_overrides", "model_config", "model_holder"]

log = logging.getLogger(__name__)


def model_config(model: str):
    """The model's Hugging Face config (read with transformers, no engine)."""
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(model)


def model_holder(model: str):
    """What result rows read of a model without loading its weights (as
    ``mesa_viz.models.parts`` reads a loaded model): its config and generation
    config (None where the model has none)."""
    import types

    from transformers import GenerationConfig
    try:
        generation = GenerationConfig.from_pretrained(model)
    except OSError:
        generation = None
    return types.SimpleNamespace(config=model_config(model), generation_config=generation)


def hf_overrides(model: str, method: str = "mesa", train_length: int | None = None,
                 max_model_len: int | None = None, **params) -> dict:
    """The ``hf_overrides`` (a JSON-ready dict) that run ``method`` with
    ``params`` on ``model`` (a path or a name in the local Hugging Face cache),
    checked as :func:`LLM` checks them: for ``vllm serve MODEL --hf-overrides
    '<json>'`` (and ``--max-model-len`` past the model's
    ``max_position_embeddings`` when ``max_model_len`` is given)."""
    check_vllm()
    config = model_config(model)
    spec = check(config, method, train_length, **params)
    return overrides_for(config, spec, max_model_len)


def LLM(model: str, method: str = "mesa", train_length: int | None = None, *,
        engine: dict | None = None, **params):
    """vLLM's ``LLM`` for ``model`` whose attention runs ``method`` with
    ``params`` (its mesa_viz parameters; ``train_length``: ``T``, by default
    the model's own).  ``engine``: keyword arguments for ``vllm.LLM``
    (``dtype``, ``max_model_len``, ``tensor_parallel_size``,
    ``enable_prefix_caching``, ...).

    Everything is refused before the engine starts (ValueError naming the
    bad value and what is allowed): an unknown method or parameter, a method
    this plugin does not run, a model family other than Llama, Mistral,
    Qwen2, Qwen3, a sliding window, and engine settings the method cannot run
    exactly (chunked prefill under Mesa; prefix caching where the rows of a
    prompt's first tokens depend on its length: Mesa, Self-Extend,
    Leaky-ReRoPE, Stair; a quantized KV cache; speculative decoding; pipeline
    parallel).  Under those methods the defaults turn chunked prefill or prefix
    caching off (``settings.check_engine``)."""
    check_vllm()
    config = model_config(model)
    spec = check(config, method, train_length, **params)
    kwargs = check_engine(spec, engine or {})
    kwargs["hf_overrides"] = overrides_for(config, spec, kwargs.get("max_model_len"))
    from vllm import LLM as VllmLLM

    from .plugin import register
    register()
    log.info("starting vLLM on %s under %s (train_length=%d, parameters %s)", model,
             spec.method, spec.train_length, spec.params)
    return VllmLLM(model=model, **kwargs)
