"""vLLM model classes whose attention runs a mesa_viz method.

Each family of :data:`.settings.FAMILIES` gets a subclass of vLLM's own model
class (``MesaVizLlamaForCausalLM`` of ``LlamaForCausalLM``, ...), registered by
:func:`.plugin.register` and selected with ``hf_overrides={"architectures":
[...]}``.  Built under :func:`method_attention`, every ``Attention`` layer gets
:class:`.backend.MesaVizBackend` and the method; afterwards every rotary
embedding is replaced by :class:`NoRotation`, so queries and keys reach the
backend (and the paged cache) before RoPE, at any position: vLLM's own rotary
tables, which stop at ``max_position_embeddings``, are never read.

RoPE is applied by the kernels with the frequencies of the model's own
transformers rotary class (:func:`model_rope`): Llama 3 and YaRN scaling are
taken from the model's rules exactly as ``mesa_viz.runtime.apply`` takes them.
"""

from __future__ import annotations

import importlib
import logging
from contextlib import contextmanager

import torch
from vllm.model_executor.layers.attention.attention import Attention
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.mistral import MistralForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM

from mesa_viz.kernels import Rope
from mesa_viz.models.families import rope_frequencies

from .backend import MesaVizBackend
from .pins import check_vllm
from .settings import MethodSpec, check, check_engine

__all__ = ["MesaVizLlamaForCausalLM", "MesaVizMistralForCausalLM", "MesaVizQwen2ForCausalLM",
           "MesaVizQwen3ForCausalLM", "NoRotation", "model_rope", "method_attention",
           "engine_settings"]

log = logging.getLogger(__name__)


class NoRotation(torch.nn.Module):
    """The identity in place of vLLM's rotary embedding: ``(positions, q, k) ->
    (q, k)``, queries and keys ``[tokens, heads * head_dim]`` unchanged."""

    def forward(self, positions, query, key=None, *args, **kwargs):
        return query, key


def model_rope(config) -> Rope:
    """The model's RoPE as the kernels apply it: ``inv_freq [head_dim / 2]`` and
    cos/sin scaling of its transformers rotary class built from ``config`` (its
    ``rope_parameters``: default, Llama 3, YaRN, ...)."""
    kind = config.model_type
    module = importlib.import_module(f"transformers.models.{kind}.modeling_{kind}")
    classes = [getattr(module, n) for n in dir(module) if n.endswith("RotaryEmbedding")]
    if len(classes) != 1:
        raise ValueError(f"model type {kind!r}: expected one rotary class in "
                         f"{module.__name__}, found {[c.__name__ for c in classes]}")
    inv_freq, scaling = rope_frequencies(classes[0](config=config))
    return Rope(inv_freq.detach().to(torch.float32).cpu(), float(scaling))


@contextmanager
def method_attention(spec: MethodSpec, rope: Rope):
    """While a model is built: every ``Attention`` layer made gets
    :class:`.backend.MesaVizBackend` and ``(spec, rope)``."""
    original = Attention.__init__

    def init(self, *args, **kwargs):
        kwargs["attn_backend"] = MesaVizBackend
        kwargs["mesa_viz"] = (spec, rope)
        original(self, *args, **kwargs)

    Attention.__init__ = init
    try:
        yield
    finally:
        Attention.__init__ = original


def engine_settings(vllm_config) -> dict:
    """The engine settings :func:`.settings.check_engine` reads, as the engine
    was started (``vllm serve`` flags included)."""
    cache, parallel = vllm_config.cache_config, vllm_config.parallel_config
    return {"enable_prefix_caching": bool(cache.enable_prefix_caching),
            "enable_chunked_prefill": bool(vllm_config.scheduler_config.enable_chunked_prefill),
            "kv_cache_dtype": cache.cache_dtype,
            "pipeline_parallel_size": parallel.pipeline_parallel_size,
            "speculative_config": vllm_config.speculative_config}


def _without_rotation(model: torch.nn.Module) -> int:
    """Replace each rotary embedding next to an ``Attention`` layer by
    :class:`NoRotation`; the number replaced."""
    count = 0
    for module in model.modules():
        if isinstance(getattr(module, "attn", None), Attention) and hasattr(module, "rotary_emb"):
            module.rotary_emb = NoRotation()
            count += 1
    return count


class _MethodModel:
    """Builds the family's vLLM model with the method's attention (module doc)."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        check_vllm()
        config = vllm_config.model_config.hf_config
        spec = MethodSpec.from_config(config)
        check(config, spec.method, spec.train_length, **spec.params)  # `vllm serve` too
        check_engine(spec, engine_settings(vllm_config))
        with method_attention(spec, model_rope(config)):
            super().__init__(vllm_config=vllm_config, prefix=prefix)
        layers = sum(isinstance(m, Attention) for m in self.modules())
        replaced = _without_rotation(self)
        if replaced != layers or layers == 0:
            raise RuntimeError(f"{type(self).__name__}: replaced {replaced} rotary embeddings "
                               f"for {layers} attention layers; vLLM's model code differs "
                               "from the release mesa_viz_vllm is tested with")
        log.info("%s: method %s (train_length=%d, parameters %s) on %d attention layers",
                 type(self).__name__, spec.method, spec.train_length, spec.params, layers)


class MesaVizLlamaForCausalLM(_MethodModel, LlamaForCausalLM):
    """Llama under a mesa_viz method."""


class MesaVizMistralForCausalLM(_MethodModel, MistralForCausalLM):
    """Mistral under a mesa_viz method."""


class MesaVizQwen2ForCausalLM(_MethodModel, Qwen2ForCausalLM):
    """Qwen2 under a mesa_viz method."""


class MesaVizQwen3ForCausalLM(_MethodModel, Qwen3ForCausalLM):
    """Qwen3 under a mesa_viz method."""
