"""The model families mesa_viz runs exactly and those it refuses, and how each
family's RoPE pairs channels.  Read by the runtime before it changes anything."""

from __future__ import annotations

import torch

from .parts import model_type
from .sinusoid import SINUSOID_TABLE_FAMILIES, SinusoidRotary

__all__ = ["SUPPORTED_FAMILIES", "REFUSED_FAMILIES", "ALIBI_FAMILIES", "CHANNELS",
           "channel_order",
           "refuse_family", "sliding_window", "refuse_model_attention", "model_rope",
           "find_rotary", "NOPE_LAYER_TYPES", "METHOD_LAYER_TYPE", "rope_frequencies",
           "own_window_layers", "windowed_everywhere"]

#: model_type -> how its RoPE pairs channels where that is not the kernels' half
#: split of the first ``rot_dim`` channels: interleaved pairs ``(2c, 2c + 1)`` of
#: the first ``rot_dim`` channels, or the rotary block last (already half-split).
CHANNELS = {"cohere": "interleaved", "cohere2": "interleaved", "glm": "interleaved",
            "glm4": "interleaved", "deepseek_v3": "rope-last", "gptj": "interleaved"}
#: model_type -> the layer types whose attention applies no RoPE (Cohere 2's
#: full-attention layers): a method runs there with the identity rotation.
NOPE_LAYER_TYPES = {"cohere2": ("full_attention",)}
#: The layer type a method runs on in models whose rotary module keeps one set
#: of frequencies per layer type (Gemma 3, OLMo 3): the full-attention layers.
METHOD_LAYER_TYPE = "full_attention"
#: The model types the tests run (tests/tiny/models/test_families.py): exact below the
#: training length, equal to the dense reference past it.
SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi", "phi3", "gemma", "gpt_neox",
                      "olmo", "olmo2", "granite", "stablelm", "persimmon", "starcoder2",
                      "cohere", "glm", "glm4", "deepseek_v3", "gemma2", "gemma3_text", "olmo3",
                      "cohere2", "gptj")
#: ALiBi model types -> the keyword argument that hands each decoder block the
#: additive ALiBi bias (``runtime.alibi`` replaces it with the method's bias).
ALIBI_FAMILIES = {"mpt": "position_bias", "bloom": "alibi"}
#: model_type -> why apply() refuses it.
REFUSED_FAMILIES = {
    "falcon": "its attention never calls transformers' AttentionInterface (FalconAttention "
              "rotates queries and keys, then calls torch's scaled_dot_product_attention or "
              "its own softmax), so a method's kernel would not run (and the identity "
              "rotation would leave NoPE attention)",
    "gemma3": "the multimodal Gemma 3 (vision tower and text decoder) is not tested; load its "
              "text decoder alone (model type 'gemma3_text', Gemma3ForCausalLM)",
}


def channel_order(kind: str, rot: int, head_dim: int) -> list[int]:
    """The permutation of ``head_dim`` channels that puts a family's RoPE pairs
    where the kernels' half split expects them: pair ``(c, c + rot/2)`` for
    ``c < rot/2`` (``rot`` rotary channels).  ``kind``: a :data:`CHANNELS`
    value.  Scores use only ``q . k``, so the same permutation of both is exact."""
    if kind == "interleaved":
        return [*range(0, rot, 2), *range(1, rot, 2), *range(rot, head_dim)]
    if kind == "rope-last":
        return [*range(head_dim - rot, head_dim), *range(head_dim - rot)]
    raise ValueError(f"channel order {kind!r}: allowed {sorted(set(CHANNELS.values()))}")


def refuse_family(model) -> None:
    """Refuse the model types whose attention mesa_viz cannot run exactly."""
    kind = model_type(model)
    if kind in REFUSED_FAMILIES:
        raise ValueError(f"model type {kind!r} is not supported: {REFUSED_FAMILIES[kind]}; "
                         f"supported families: {', '.join(SUPPORTED_FAMILIES)}")


def sliding_window(config) -> int | None:
    """The sliding window of the model's own attention, None if it has none."""
    types = getattr(config, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    return getattr(config, "sliding_window", None)


def own_window_layers(config, train_length: int) -> bool:
    """Whether some layers run the model's own sliding-window attention under
    every method: a window ``W <= train_length`` (such a layer never sees a
    distance it was not trained on; docs/model-families.md)."""
    window = sliding_window(config)
    return window is not None and window <= train_length


def windowed_everywhere(config, train_length: int) -> bool:
    """Whether every layer runs its own window ``W <= train_length`` (Mistral-7B-v0.1,
    Phi-3-mini-4k): no layer is left for a method to change."""
    types = getattr(config, "layer_types", None)
    return own_window_layers(config, train_length) and (
        types is None or all(t == "sliding_attention" for t in types))


def refuse_model_attention(model, train_length: int) -> None:
    """Refuse attention settings the kernels cannot compute exactly: a sliding
    window or an attention logit softcap that is not a positive number."""
    cfg, kind = model.config, model_type(model)
    window = sliding_window(cfg)
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                               or window < 1):
        raise ValueError(f"model type {kind!r}: sliding_window={window!r}: allowed an integer "
                         ">= 1 or None")
    cap = getattr(cfg, "attn_logit_softcapping", None)
    if cap is not None and not cap > 0:
        raise ValueError(f"model type {kind!r}: attn_logit_softcapping={cap!r}: allowed a "
                         "positive number or None")


def model_rope(model, rotary) -> dict:
    """The model's own ``{"rope_theta", "rotary_dim", "rope_type"}``: of the
    layers a method runs on (:data:`METHOD_LAYER_TYPE` where the RoPE
    parameters are given per layer type)."""
    rp = getattr(model.config, "rope_parameters", None) or {}
    if isinstance(rp.get(METHOD_LAYER_TYPE), dict):
        rp = rp[METHOD_LAYER_TYPE]
    flat = "rope_type" in rp
    return {"rope_theta": rp.get("rope_theta") if flat else None,
            "rotary_dim": 2 * rope_frequencies(rotary, METHOD_LAYER_TYPE)[0].numel(),
            "rope_type": rp.get("rope_type") if flat else "per-layer-type"}


def rope_frequencies(rotary, layer_type: str | None = None) -> tuple[torch.Tensor, float]:
    """``(inv_freq [rot_dim/2], attention_scaling)`` of a rotary module for
    ``layer_type``: its per-layer-type buffers (``<type>_inv_freq``, Gemma 3,
    OLMo 3) where it has them, else its one ``inv_freq``."""
    frequencies = getattr(rotary, "frequencies", None)
    if frequencies is not None:                           # a method's rule (runtime.rotary)
        return frequencies(layer_type)
    if layer_type is not None and hasattr(rotary, f"{layer_type}_inv_freq"):
        return (getattr(rotary, f"{layer_type}_inv_freq"),
                float(getattr(rotary, f"{layer_type}_attention_scaling", 1.0)))
    return rotary.inv_freq, float(getattr(rotary, "attention_scaling", 1.0))


def _has_rope(mod) -> bool:
    types = getattr(mod, "layer_types", None) or ()
    return hasattr(mod, "inv_freq") or any(hasattr(mod, f"{t}_inv_freq") for t in types)


def find_rotary(model) -> tuple[torch.nn.Module, str]:
    """The model's rotary-embedding module and its attribute path; for a
    family with a fixed sin/cos table (GPT-J) the module that replaces it
    under a method (``models.sinusoid``), not yet in place."""
    table = SINUSOID_TABLE_FAMILIES.get(model_type(model))
    for name, mod in model.named_modules():
        if name.endswith("rotary_emb") and table is not None and type(mod).__name__ == table:
            return SinusoidRotary(mod), name
        if name.endswith("rotary_emb") and _has_rope(mod):
            return mod, name
    raise ValueError(
        f"{type(model).__name__} ({model_type(model)}) has no rotary position embedding "
        "(RoPE) module with inv_freq: RoPE methods cannot be applied; supported families: "
        f"{', '.join(SUPPORTED_FAMILIES)}")
