"""A method's RoPE frequency rule as a rotary module of the model's own class:
transformers builds it from the rule's ``rope_parameters`` (so partial rotary,
Phi-3's fields and the family's own RoPE code are respected)."""

from __future__ import annotations

import copy

import torch

__all__ = ["rotary_for", "RuleRotary"]


def rotary_for(rotary, rope_parameters: dict, T: int):
    """A rotary embedding of ``rotary``'s class built by transformers from the
    model's ``rope_parameters`` updated with ``rope_parameters`` (e.g.
    ``{"rope_type": "dynamic", "factor": 2.0}``), for training length ``T``.
    A key also kept as a config attribute is set there too (transformers
    gives Phi-3's ``original_max_position_embeddings`` attribute priority)."""
    cfg = copy.copy(rotary.config)
    rp = dict(cfg.rope_parameters)
    rp.update(rope_parameters)
    cfg.rope_parameters = rp
    cfg.max_position_embeddings = T
    for key, value in rope_parameters.items():
        if key != "rope_type" and hasattr(cfg, key):
            setattr(cfg, key, value)
    new = type(rotary)(config=cfg)
    return new.to(rotary.inv_freq.device)


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
        return self.current.inv_freq

    @property
    def attention_scaling(self) -> float:
        return float(getattr(self.current, "attention_scaling", 1.0))

    @property
    def rope_type(self) -> str:
        return self.current.rope_type
