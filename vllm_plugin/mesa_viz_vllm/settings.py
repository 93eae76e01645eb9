"""What a method needs inside vLLM, and every refusal made before an engine starts.

A :class:`MethodSpec` (method name, ``train_length``, parameters) travels to
vLLM's worker processes inside the model's Hugging Face config, under
:data:`CONFIG_KEY`, through ``hf_overrides`` (:func:`overrides_for`); so does
the architecture whose attention runs it (:data:`FAMILIES`).  The workers read
it back with :meth:`MethodSpec.from_config`.

The refusals (:func:`check`) reuse mesa_viz's own validation: an unknown
method or parameter is refused by ``mesa_viz.methods.get_method``, a bad
value by ``Method.resolve``, exactly as ``mesa_viz.runtime.apply`` refuses it.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass

import numpy as np

from mesa_viz.methods import METHODS, Method, get_method
from mesa_viz.models.families import sliding_window
from mesa_viz.models.parts import train_length_source

__all__ = ["FAMILIES", "ARCH_PREFIX", "CONFIG_KEY", "PROMPT_LENGTH_CARRIER", "MethodSpec",
           "supported_methods", "check", "check_engine", "prompt_dependent", "overrides_for", "architecture"]

#: model_type -> the vLLM architecture whose attention a method replaces.
FAMILIES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
            "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
#: The prefix of the architectures this plugin registers (``MesaVizLlamaForCausalLM``).
ARCH_PREFIX = "MesaViz"
#: The config key the method travels under to vLLM's workers.
CONFIG_KEY = "mesa_viz"
#: The config field that makes vLLM 0.32's model runner hand every attention backend
#: each request's prompt length (``CommonAttentionMetadata.rswa_prefix_lens``, made
#: for Reference Sliding Window Attention; read by no other part of the engine).
PROMPT_LENGTH_CARRIER = "rswa_window"
#: Engine settings refused under every method, and why (each would change attention
#: in a way the method's kernels do not reproduce, or is untested).
_REFUSED_ENGINE = {
    "speculative_config": "draft tokens are verified several per request and step, "
                          "which the method's attention is not tested with",
    "pipeline_parallel_size": "untested with the method's attention (tensor parallel is "
                              "tested)",
}


@dataclass(frozen=True)
class MethodSpec:
    """A method as the workers rebuild it: ``method`` (a name of
    ``mesa_viz.methods.METHODS``), ``train_length`` (``T``) and the method's
    own ``params`` (a plain dict)."""

    method: str
    train_length: int
    params: dict = dataclasses.field(default_factory=dict)

    def value(self) -> Method:
        """The (unresolved) method value with ``train_length`` set."""
        return get_method(self.method, **self.params, train_length=self.train_length)

    def to_dict(self) -> dict:
        return {"method": self.method, "train_length": self.train_length,
                "params": dict(self.params)}

    @classmethod
    def from_config(cls, config) -> "MethodSpec":
        """The spec a Hugging Face ``config`` carries under :data:`CONFIG_KEY`;
        ValueError saying how to set it where it carries none."""
        raw = getattr(config, CONFIG_KEY, None)
        if not isinstance(raw, dict) or "method" not in raw:
            raise ValueError(
                f"this {ARCH_PREFIX} architecture needs a method in the model config's "
                f"{CONFIG_KEY!r} field (got {raw!r}): start the engine with "
                "mesa_viz_vllm.LLM(...), or pass mesa_viz_vllm.hf_overrides(...) as "
                "hf_overrides (vllm serve --hf-overrides)")
        return cls(raw["method"], int(raw["train_length"]), dict(raw.get("params") or {}))


def supported_methods() -> tuple[str, ...]:
    """The methods this plugin runs: origin (linear positions past ``T``, through
    the same kernels) and every method that re-places positions (it has a
    kernel); not the frequency rules (PI, NTK, YaRN, Dynamic-NTK)."""
    return tuple(name for name, cls in METHODS.items() if name == "origin" or not cls.native)


def architecture(model_type: str) -> str:
    """The architecture this plugin registers for ``model_type``'s family."""
    return ARCH_PREFIX + FAMILIES[model_type]


def check(config, method: str = "mesa", train_length: int | None = None,
          **params) -> MethodSpec:
    """The spec for ``method`` on a model of Hugging Face ``config``; ValueError
    naming the bad value and what is allowed for an unknown method or parameter,
    a method this plugin does not run, an unsupported family or a model
    attention setting the kernels cannot reproduce."""
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        raise ValueError(f"model type {kind!r} is not supported by mesa_viz_vllm: allowed "
                         f"{sorted(FAMILIES)}")
    m = get_method(method, **params)                       # unknown method / parameter
    if m.name not in supported_methods():
        raise ValueError(f"method {m.name!r} changes the RoPE frequencies, which "
                         "mesa_viz_vllm does not run yet (vLLM's own rope_scaling does PI/"
                         f"YaRN/dynamic NTK): allowed {list(supported_methods())}")
    T = int(train_length) if train_length is not None else \
        train_length_source(types.SimpleNamespace(config=config))[0]
    m.resolve(T, T)                                        # bad values, as apply() refuses
    _refuse_attention(config, kind)
    return MethodSpec(m.name, T, dict(params))


def _refuse_attention(config, kind: str) -> None:
    """A sliding window or vLLM's own Dual Chunk Attention in the model config."""
    window = sliding_window(config)
    if window is not None:
        raise ValueError(f"model type {kind!r}: sliding_window={window!r}: mesa_viz_vllm "
                         "runs full-attention models only (allowed sliding_window=None); the "
                         "method's kernels do not apply the model's window")
    if getattr(config, "dual_chunk_attention_config", None):
        raise ValueError(f"model type {kind!r} carries dual_chunk_attention_config (vLLM's "
                         "own Dual Chunk Attention): allowed none; use method='dual-chunk'")


def check_engine(spec: MethodSpec, engine: dict) -> dict:
    """``engine`` (vLLM ``LLM`` keyword arguments) with the method's defaults;
    ValueError for a setting the method cannot run exactly."""
    engine = dict(engine)
    for key, why in _REFUSED_ENGINE.items():
        value = engine.get(key)
        if value not in (None, 1, {}):
            raise ValueError(f"{key}={value!r} is not supported under method "
                             f"{spec.method!r}: {why}; allowed None"
                             + (" or 1" if key.endswith("_size") else ""))
    dtype = engine.get("kv_cache_dtype", "auto")
    if dtype != "auto":
        raise ValueError(f"kv_cache_dtype={dtype!r}: mesa_viz_vllm keeps keys before RoPE in "
                         "the model's dtype; allowed 'auto'")
    if spec.value().chunked:
        if engine.get("enable_chunked_prefill"):
            raise ValueError(
                f"enable_chunked_prefill=True under method {spec.method!r}: its kernel runs a "
                "prefill in one forward or in pieces cut at its chunk plan's boundaries, "
                "which vLLM's token budget does not follow; allowed False (the default "
                "under this method: each prompt is prefilled whole, so "
                "max_num_batched_tokens must be at least max_model_len)")
        engine["enable_chunked_prefill"] = False
        if engine.get("max_model_len"):          # a whole prompt fits one step's budget
            engine.setdefault("max_num_batched_tokens", engine["max_model_len"])
    if prompt_dependent(spec.value()):
        if engine.get("enable_prefix_caching"):
            raise ValueError(
                f"enable_prefix_caching=True under method {spec.method!r} with parameters "
                f"{spec.params}: its layout depends on the prompt's length, so the keys of "
                "a cached prefix, computed under another prompt's layout, would be wrong; "
                "allowed False (the default under this method)")
        engine["enable_prefix_caching"] = False
    if "hf_overrides" in engine:
        raise ValueError("hf_overrides: mesa_viz_vllm sets the model's hf_overrides itself "
                         f"(architecture and method); allowed none, got {engine['hf_overrides']!r}")
    return engine


def prompt_dependent(method: Method) -> bool:
    """Whether the rows of a prompt's first tokens depend on how long the
    prompt is: Mesa's chunk plan and Self-Extend's group (``decode ==
    "prefill-plan"``), Dual Chunk's ``mscale``, a default fitted to the
    sequence's length (Leaky-ReRoPE's leak, Stair's width).  Read off the method:
    the rows of the first ``2T`` tokens resolved for prompts of ``2T`` and
    ``3T`` tokens.  Such a method cannot reuse a cached prefix computed for
    another prompt, nor recompute generated tokens in one forward."""
    if method.decode == "prefill-plan":
        return True
    T = method.train_length
    a, b = (method.resolve(k * T, T, prefill_length=k * T) for k in (2, 3))
    rows = np.arange(2 * T)
    i = np.unique(np.linspace(0, 2 * T - 1, 64).astype(np.int64))[:, None]
    j = rows[None]
    same_rel = all(np.array_equal(np.where(vx, x, 0), np.where(vy, y, 0)) and
                   np.array_equal(vx, vy)
                   for (x, vx), (y, vy) in [(a.relative(i, j), b.relative(i, j))])
    return not (same_rel and np.array_equal(a.query_scale(rows), b.query_scale(rows))
                and np.array_equal(a.key_scale(rows), b.key_scale(rows)))


def overrides_for(config, spec: MethodSpec, max_model_len: int | None = None) -> dict:
    """The ``hf_overrides`` that run ``spec`` on a model of ``config``: the
    plugin's architecture, the method, the prompt-length carrier
    (:data:`PROMPT_LENGTH_CARRIER`), and where ``max_model_len`` exceeds the
    model's ``max_position_embeddings``, ``model_max_length`` (so vLLM allows it
    without touching the RoPE parameters)."""
    overrides = {"architectures": [architecture(config.model_type)],
                 CONFIG_KEY: spec.to_dict(), PROMPT_LENGTH_CARRIER: 1}
    longest = getattr(config, "max_position_embeddings", None)
    if max_model_len is not None and longest is not None and max_model_len > longest:
        overrides["model_max_length"] = int(max_model_len)
    return overrides
