"""The frequency rules (``methods/frequency.py``) run the model's own attention,
their rotary module rebuilt by the runtime; Origin's kernel serves probes that
capture their attention rows (the rule's rotary gives the frequencies)."""

from __future__ import annotations

from ..methods.frequency import DynamicNTK, NTKAware, PositionInterpolation, YaRN
from .origin import origin
from .registry import kernel

__all__: list[str] = []

kernel(DynamicNTK, PositionInterpolation, NTKAware, YaRN, rules=None,
       linear=lambda method, kv_len: True)(origin)
