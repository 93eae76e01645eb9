"""A method's RoPE frequency rule as a rotary module of the model's own class:
transformers builds it from the rule's ``rope_parameters`` (so partial rotary,
Phi-3's fields and the family's own RoPE code are respected)."""

from __future__ import annotations

import copy

import torch

from ..models.families import METHOD_LAYER_TYPE, rope_frequencies

__all__ = ["rotary_for", "RuleRotary"]


def rotary_for(rotary, rope_parameters: dict, T: int):
    """A rotary embedding of ``rotary``'s class built by transformers from the
    model's ``rope_parameters`` updated with ``rope_parameters`` (e.g.
    ``{"rope_type": "dynamic", "factor": 2.0}``), for training length ``T``.
    A key also kept as a config attribute is set there too (transformers
    gives Phi-3's ``original_max_position_embeddings`` attribute priority).
    RoPE parameters given per layer type (Gemma 3, OLMo 3): only the
    full-attention layers' (``METHOD_LAYER_TYPE``) change."""
    cfg = copy.copy(rotary.config)
    rp = dict(cfg.rope_parameters)
    if isinstance(rp.get(METHOD_LAYER_TYPE), dict):
        rp[METHOD_LAYER_TYPE] = {**rp[METHOD_LAYER_TYPE], **rope_parameters}
    else:
        rp.update(rope_parameters)
    cfg.rope_parameters = rp
    cfg.max_position_embeddings = T
    for key, value in rope_parameters.items():
        if key != "rope_type" and hasattr(cfg, key):
            setattr(cfg, key, value)
    new = type(rotary)(config=cfg)
    return new.to(rope_frequencies(rotary, METHOD_LAYER_TYPE)[0].device)


class RuleRotary(torch.nn.Module):
    """The model's rotary embedding under a method's RoPE frequency rule: a
    rotary module of the model's class built by transformers from the rule's
    ``rope_parameters`` (:func:`rotary_for`), rebuilt when the rule changes
    (a rule derived from the prompt length changes with each prompt).
    ``state``: the live application, which resolves the method per forward."""

    def __init__(self, original: torch.nn.Module, state):
        super().__init__()
        object.__setattr__(self, "original", original)          # not a submodule
        object.__setattr__(self, "current", original)
        self.state, self.rule = state, None

    def forward(self, x, position_ids, *args, **kwargs):
        rule = self.state.resolve_for(position_ids[0]).rope_parameters(
            self.state.settings.model_rope)
        if rule != self.rule:
            built = rotary_for(self.original, rule, self.state.train_length)
            object.__setattr__(self, "current", built)
            self.rule = rule
        return self.current(x, position_ids, *args, **kwargs)

    @property
    def inv_freq(self) -> torch.Tensor:
        return self.frequencies(METHOD_LAYER_TYPE)[0]

    def frequencies(self, layer_type: str | None = None) -> tuple[torch.Tensor, float]:
        """``(inv_freq, attention_scaling)`` of the rule's rotary for ``layer_type``."""
        return rope_frequencies(self.current, layer_type)

    @property
    def attention_scaling(self) -> float:
        return self.frequencies(METHOD_LAYER_TYPE)[1]

    @property
    def rope_type(self) -> str:
        return self.current.rope_type
