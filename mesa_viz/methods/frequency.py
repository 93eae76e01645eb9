"""Frequency rules: linear positions, RoPE frequencies changed through transformers'
own rope types (Dynamic-NTK, Position Interpolation, NTK-aware, YaRN).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import math

from .base import Method, Slider, check_factor, param

__all__ = ["DynamicNTK", "PositionInterpolation", "NTKAware", "YaRN"]


@dataclass(frozen=True)
class DynamicNTK(Method):
    """Dynamic NTK: linear positions, RoPE base grown with the sequence.

    Applied through transformers' own ``rope_parameters`` (type ``dynamic``).
    """

    name: ClassVar[str] = "dynamic-ntk"
    native: ClassVar[bool] = True
    past_train_length: ClassVar[str] = (
        "linear positions; transformers' dynamic RoPE grows the base with the length")
    factor: float = param(Slider(1.0, 16.0, 0.25), 1.0)

    def _fill(self, seq_len, prefill_length):
        check_factor(self.factor)
        return self

    def rope_parameters(self, model: dict | None = None) -> dict:
        return {"rope_type": "dynamic", "factor": float(self.factor)}

    def rope_rule(self) -> str:
        return (f"for n > T={self.train_length}: base' = base * (factor*n/T - "
                f"(factor-1)) ** (d/(d-2)), factor={self.factor}; positions linear")


@dataclass(frozen=True)
class _FrequencyRule(Method):
    """Linear positions, RoPE frequencies changed by a rule with scale
    ``factor`` (``s`` in the YaRN paper), run through transformers' own rope
    types.  ``factor`` defaults to ``max(1, n / T)`` for a prompt of ``n``
    tokens, fixed for the generation after it (1, Origin, up to ``T``)."""

    native: ClassVar[bool] = True
    decode: ClassVar[str] = "prefill-plan"
    factor: float | None = param(Slider(1.0, 16.0, 0.25))

    def _fill(self, seq_len, prefill_length):
        n = seq_len if prefill_length is None else prefill_length
        f = max(1.0, n / self.train_length) if self.factor is None else self.factor
        check_factor(f)
        return dataclasses.replace(self, factor=float(f))


@dataclass(frozen=True)
class PositionInterpolation(_FrequencyRule):
    """Position Interpolation (Chen et al. 2023): positions ``× 1/factor``, i.e.
    ``inv_freq / factor`` (transformers' ``rope_type="linear"``)."""

    name: ClassVar[str] = "pi"
    past_train_length: ClassVar[str] = (
        "positions interpolated by 1/factor (factor = prompt length / train_length)")

    def rope_parameters(self, model: dict | None = None) -> dict:
        return {"rope_type": "linear", "factor": self.factor}

    def rope_rule(self) -> str:
        return f"inv_freq / factor (positions × 1/factor), factor={self.factor:g}"


@dataclass(frozen=True)
class NTKAware(_FrequencyRule):
    """Static NTK-aware scaling (bloc97 2023; YaRN paper Eq. 16): base
    ``b' = b * factor ** (d / (d - 2))`` for the rotary dim ``d``, fixed at the
    prompt (transformers' ``rope_type="default"`` with that ``rope_theta``)."""

    name: ClassVar[str] = "ntk"
    past_train_length: ClassVar[str] = (
        "linear positions; RoPE base raised to base * factor ** (d/(d-2)) at the prompt")

    def rope_parameters(self, model: dict | None = None) -> dict:
        if not model or "rope_theta" not in model or "rotary_dim" not in model:
            raise ValueError("the static NTK rule needs the model's rope_theta and "
                             f"rotary_dim, got {model!r}")
        d = model["rotary_dim"]
        return {"rope_type": "default",
                "rope_theta": float(model["rope_theta"]) * self.factor ** (d / (d - 2))}

    def rope_rule(self) -> str:
        return f"base' = base * factor ** (d/(d-2)), factor={self.factor:g}"


@dataclass(frozen=True)
class YaRN(_FrequencyRule):
    """YaRN (Peng et al. 2023): NTK-by-parts interpolation plus attention
    temperature (transformers' ``rope_type="yarn"``): dimensions whose
    wavelength fits ``T / beta_fast`` rotations keep their frequency, those
    under ``beta_slow`` rotations are interpolated by ``1/factor``, a linear
    ramp between; cos/sin scaled by ``attention_factor`` (default ``0.1 ln
    factor + 1``)."""

    name: ClassVar[str] = "yarn"
    past_train_length: ClassVar[str] = (
        "low frequencies interpolated by 1/factor, high ones kept, logits scaled "
        "(factor = prompt length / train_length)")
    beta_fast: float = param(Slider(1.0, 64.0, 1.0), 32.0)
    beta_slow: float = param(Slider(0.25, 16.0, 0.25), 1.0)
    attention_factor: float | None = param(Slider(0.5, 4.0, 0.05))

    def _fill(self, seq_len, prefill_length):
        number = (int, float)
        if not (isinstance(self.beta_fast, number) and isinstance(self.beta_slow, number)
                and self.beta_fast > self.beta_slow > 0):
            raise ValueError(f"beta_fast={self.beta_fast!r}, beta_slow={self.beta_slow!r}: "
                             "allowed numbers with beta_fast > beta_slow > 0")
        a = self.attention_factor
        if a is not None and not (isinstance(a, (int, float)) and a > 0):
            raise ValueError(f"attention_factor={a!r} must be a number > 0 (or None)")
        return _FrequencyRule._fill(self, seq_len, prefill_length)

    def rope_parameters(self, model: dict | None = None) -> dict:
        p = {"rope_type": "yarn", "factor": self.factor, "beta_fast": float(self.beta_fast),
             "beta_slow": float(self.beta_slow),
             "original_max_position_embeddings": self.train_length}
        if self.attention_factor is not None:
            p["attention_factor"] = float(self.attention_factor)
        return p

    def rope_rule(self) -> str:
        a = self.attention_factor
        a = 0.1 * math.log(self.factor) + 1 if a is None else a
        return (f"NTK-by-parts: inv_freq / factor where fewer than beta_slow="
                f"{self.beta_slow:g} rotations fit in T, kept where more than beta_fast="
                f"{self.beta_fast:g}, a ramp between; cos/sin × {a:.4g}; factor={self.factor:g}")
