"""The model families mesa_viz runs exactly and those it refuses, and how each
family's RoPE pairs channels.  Read by the runtime before it changes anything."""

from __future__ import annotations

import torch

from .parts import model_type

__all__ = ["SUPPORTED_FAMILIES", "REFUSED_FAMILIES", "CHANNELS", "channel_order",
           "refuse_family", "sliding_window", "refuse_model_attention", "model_rope",
           "find_rotary"]

#: model_type -> how its RoPE pairs channels where that is not the kernels' half
#: split of the first ``rot_dim`` channels: interleaved pairs ``(2c, 2c + 1)`` of
#: the first ``rot_dim`` channels, or the rotary block last (already half-split).
CHANNELS = {"cohere": "interleaved", "glm": "interleaved", "glm4": "interleaved",
            "deepseek_v3": "rope-last"}
#: The model types the tests run (tests/tiny/models/test_families.py): exact below the
#: training length, equal to the dense reference past it.
SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi", "phi3", "gemma", "gpt_neox",
                      "olmo", "olmo2", "granite", "stablelm", "persimmon", "starcoder2",
                      "cohere", "glm", "glm4", "deepseek_v3")
#: model_type -> why apply() refuses it.
REFUSED_FAMILIES = {
    "falcon": "its attention never calls transformers' AttentionInterface, so a method's "
              "kernel would not run (and the identity rotation would leave NoPE attention)",
    "gptj": "its RoPE is a fixed sin/cos table of n_positions rows rotating interleaved "
            "pairs, with no inv_freq to re-place positions with",
    "gemma2": "attention logit softcapping and sliding-window layers",
    "gemma3": "per-layer-type RoPE and sliding-window layers",
    "gemma3_text": "per-layer-type RoPE and sliding-window layers",
    "olmo3": "per-layer-type RoPE and sliding-window layers",
    "cohere2": "sliding-window layers",
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


def refuse_model_attention(model, train_length: int) -> None:
    """Refuse attention the kernels do not compute: a sliding window below the
    training length (the model's own attention is windowed there) and
    attention logit softcapping."""
    cfg, kind = model.config, model_type(model)
    window = sliding_window(cfg)
    if window is not None and window < train_length:
        raise ValueError(f"model type {kind!r} uses sliding-window attention of {window} "
                         f"tokens, below train_length={train_length}: not supported (mesa_viz "
                         "methods attend to every key); allowed sliding_window None or >= "
                         "train_length")
    cap = getattr(cfg, "attn_logit_softcapping", None)
    if cap:
        raise ValueError(f"model type {kind!r} uses attention logit softcapping ({cap}): "
                         "not supported by mesa_viz kernels")


def model_rope(model, rotary) -> dict:
    """The model's own ``{"rope_theta", "rotary_dim", "rope_type"}``."""
    rp = getattr(model.config, "rope_parameters", None) or {}
    flat = "rope_type" in rp
    return {"rope_theta": rp.get("rope_theta") if flat else None,
            "rotary_dim": 2 * rotary.inv_freq.numel(),
            "rope_type": rp.get("rope_type") if flat else "per-layer-type"}


def find_rotary(model) -> tuple[torch.nn.Module, str]:
    """The model's rotary-embedding module and its attribute path."""
    for name, mod in model.named_modules():
        if name.endswith("rotary_emb") and hasattr(mod, "inv_freq"):
            return mod, name
    raise ValueError(
        f"{type(model).__name__} ({model_type(model)}) has no rotary position embedding "
        "(RoPE) module with inv_freq: RoPE methods cannot be applied; supported families: "
        f"{', '.join(SUPPORTED_FAMILIES)}")
