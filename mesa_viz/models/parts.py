"""What a transformers model is, read without changing it: its training length,
rotary module, decoder layers, shapes, device and dtype.  No hooks here (those
are ``mesa_viz.runtime``, which reads this)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["train_length_of", "train_length_source", "train_length_fields", "scaled_beyond",
           "decoder_stack",
           "decoder_layers", "model_type", "model_name", "model_device", "model_dtype",
           "module_parent", "ModelDims", "model_dims"]


def train_length_source(model) -> tuple[int, str]:
    """``(T, field)``: the model's training length and the config field it was
    read from: ``rope_parameters["original_max_position_embeddings"]`` (a
    scaled RoPE), ``max_position_embeddings`` or ``max_seq_len`` (MPT)."""
    cfg = model.config
    rp = getattr(cfg, "rope_parameters", None) or {}
    if rp.get("original_max_position_embeddings"):
        return int(rp["original_max_position_embeddings"]), \
            "rope_parameters['original_max_position_embeddings']"
    for field in ("max_position_embeddings", "max_seq_len"):      # max_seq_len: MPT
        T = getattr(cfg, field, None)
        if T:
            return int(T), field
    raise ValueError(f"{type(model).__name__} has no max_position_embeddings or max_seq_len "
                     "(BLOOM records no training length): pass train_length=")


def train_length_fields(model, given: int | None = None) -> dict:
    """The ``train_length`` and ``train_length_from`` fields of a result row:
    ``given`` (from ``"train_length="``, the caller's choice), else the
    model's own and the config field it was read from
    (:func:`train_length_source`)."""
    if given is not None:
        return {"train_length": int(given), "train_length_from": "train_length="}
    T, source = train_length_source(model)
    return {"train_length": T, "train_length_from": source}


def scaled_beyond(model) -> int | None:
    """``max_position_embeddings`` where a scaled RoPE's
    ``original_max_position_embeddings`` (the default ``T``) is below it (a
    model extended past its pre-training length, e.g. Llama 3.1: 8192 and
    131072), else None."""
    T, source = train_length_source(model)
    longest = getattr(model.config, "max_position_embeddings", None)
    if source == "max_position_embeddings" or not longest or int(longest) <= T:
        return None
    return int(longest)


def train_length_of(model) -> int:
    """The model's training length: ``max_position_embeddings`` (or the
    ``original_max_position_embeddings`` of a scaled RoPE)."""
    return train_length_source(model)[0]


def decoder_stack(model) -> tuple[str, torch.nn.ModuleList]:
    """``(path, layers)`` of the model's stack of decoder layers."""
    n = int(model.config.num_hidden_layers)
    for path, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return path, mod
    raise ValueError(f"cannot find the {n} decoder layers of {type(model).__name__}")


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder layers."""
    return decoder_stack(model)[1]


def model_type(model) -> str:
    """The config's ``model_type`` (``"?"`` if it has none)."""
    return str(getattr(model.config, "model_type", "?"))


def model_name(model) -> str:
    """What result rows call the model: its ``_name_or_path``, else its class."""
    return str(getattr(model.config, "_name_or_path", "") or type(model).__name__)


def model_device(model) -> str:
    """Device of the model's weights (``"cpu"`` for a model without any)."""
    try:
        return str(next(model.parameters()).device)
    except StopIteration:
        return "cpu"


def model_dtype(model):
    """``torch.dtype`` of the model's weights (float32 for a model without any)."""
    try:
        return next(model.parameters()).dtype
    except StopIteration:
        return torch.float32


def module_parent(model, path: str) -> tuple[torch.nn.Module, str]:
    """``(parent module, attribute)`` of the submodule at dotted ``path``."""
    *head, leaf = path.split(".")
    mod = model
    for part in head:
        mod = getattr(mod, part)
    return mod, leaf


@dataclass(frozen=True)
class ModelDims:
    """The shapes the memory and FLOP formulas need (from a transformers config)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    gated_mlp: bool = True           # gate/up/down (Llama) vs up/down (GPT-NeoX, GPT-2)
    max_positions: int | None = None


def _get(cfg, *names, default=None):
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def model_dims(config) -> ModelDims:
    """:class:`ModelDims` of a transformers config (Llama/Qwen/Mistral/Phi-3,
    GPT-NeoX and GPT-2 naming), or a ModelDims passed through."""
    if isinstance(config, ModelDims):
        return config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    hidden = _get(config, "hidden_size", "n_embd")
    layers = _get(config, "num_hidden_layers", "n_layer")
    heads = _get(config, "num_attention_heads", "n_head")
    if not (hidden and layers and heads):
        raise ValueError(f"config {type(config).__name__} lacks hidden size, layer or head "
                         "count: pass a ModelDims")
    kv = _get(config, "num_key_value_heads", default=heads)
    head_dim = _get(config, "head_dim", default=hidden // heads)
    inter = _get(config, "intermediate_size", "n_inner", default=4 * hidden)
    mtype = getattr(config, "model_type", "llama")
    gated = mtype not in ("gpt_neox", "gpt2", "gptj", "gpt_neo", "phi", "falcon")
    return ModelDims(layers=int(layers), hidden=int(hidden), intermediate=int(inter),
                     heads=int(heads), kv_heads=int(kv), head_dim=int(head_dim),
                     vocab=int(_get(config, "vocab_size", default=0)), gated_mlp=gated,
                     max_positions=_get(config, "max_position_embeddings", "n_positions"))
