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

from . import base, frequency, grouped, mesa, mesa_presets, registry, sinks, stair, windows
from .base import *  # noqa: F401,F403
from .frequency import *  # noqa: F401,F403
from .grouped import *  # noqa: F401,F403
from .mesa import *  # noqa: F401,F403
from .mesa_presets import *  # noqa: F401,F403
from .registry import *  # noqa: F401,F403
from .sinks import *  # noqa: F401,F403
from .stair import *  # noqa: F401,F403
from .windows import *  # noqa: F401,F403

#: The public names of every family file (its ``__all__``): a class added to a family
#: file's ``__all__`` is exported here with no change to this file.
__all__ = [name for module in (base, windows, sinks, grouped, stair, mesa, mesa_presets,
                               frequency, registry) for name in module.__all__]
