"""Extrapolation methods as values: frozen dataclasses of the papers' parameters.

Pure numpy, no torch and no transformers.  A method answers ``relative(i, j)``
(:mod:`.base` holds the capability API every other module reads); one family
of methods is one file here, and the same file name in ``mesa_viz.kernels``
holds its attention kernel:

========================  ===================================================
``base``                  :class:`Method`, ``Origin``, parameter controls
``windows``               ReRoPE, Leaky-ReRoPE, STRING
``sinks``                 StreamingLLM, LM-Infinite
``grouped``               Self-Extend, Dual Chunk Attention
``stair``                 Stair PE
``mesa``, ``mesa_presets``  Mesa-Extrapolation and its paper / authors'-code presets
``frequency``             Dynamic-NTK, Position Interpolation, NTK-aware, YaRN
``registry``              :data:`METHODS`, :func:`get_method`, :func:`resolve`
``layouts``               the dense ``[q, k]`` layout of any method (drawing)
========================  ===================================================

Adding a method: ``docs/adding-a-method.md``.
"""

from __future__ import annotations

from .base import (DECODE_MODES, GPU_PIECE_TOKENS, Choice, Derived, Method, Origin, Slider,
                   Toggle, check_int, control_of, default_piece_tokens, param)
from .frequency import DynamicNTK, NTKAware, PositionInterpolation, YaRN
from .grouped import DualChunk, SelfExtend
from .mesa import STAIRS, ChunkPlan, Mesa
from .mesa_presets import MESA_PRESETS, dynamic_split
from .registry import METHODS, get_method, parameters, resolve
from .sinks import LMInfinite, StreamingLLM
from .stair import Stair, stair_position
from .windows import LeakyReRoPE, ReRoPE, String

__all__ = [
    "Method", "Origin", "Stair", "ReRoPE", "LeakyReRoPE", "DynamicNTK",
    "StreamingLLM", "LMInfinite", "Mesa", "ChunkPlan", "SelfExtend", "DualChunk",
    "String", "PositionInterpolation", "NTKAware", "YaRN", "METHODS",
    "get_method", "resolve", "stair_position", "dynamic_split", "DECODE_MODES",
    "MESA_PRESETS", "STAIRS", "GPU_PIECE_TOKENS", "default_piece_tokens", "check_int",
    "Slider", "Choice", "Toggle", "Derived", "param", "control_of", "parameters",
]
