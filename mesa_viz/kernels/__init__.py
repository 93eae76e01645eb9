"""Attention kernels: each method's position math, on keys cached *before* RoPE.

Pure torch (no transformers).  One family of methods is one file here, under
the name of its file in ``mesa_viz.methods``:

=================  =============================================================
``origin``         linear positions (and every layout that is linear at a length)
``windows``        ReRoPE, Leaky-ReRoPE, STRING (near/far rules)
``sinks``          StreamingLLM, LM-Infinite (near/far rules)
``grouped``        Self-Extend (near/far rules), Dual Chunk Attention
``stair``          Stair PE (the ``stair`` method, Mesa's last chunk)
``mesa``           Mesa's chunks
``frequency``      PI, NTK, YaRN, Dynamic-NTK (Origin's kernel on their RoPE)
``sliding``        the model's own sliding-window attention (layers a method leaves alone);
                   a method within a window above the training length
=================  =============================================================

and the machinery they share: ``registry`` (``@kernel``), ``dispatch``
(:func:`attend`), ``rules`` (near/far rules, read by ``near_far`` and the
Triton launch in ``fused/``), ``rope``, ``sets`` (one softmax over several
key sets, CPU blocks, GPU split-K), ``decode_memo`` (rotated keys kept between
decode steps), ``flash_decoding`` (a CPU decode step's key sets split over
their keys) and ``dense`` (exact rows for probes).
"""

from . import frequency, grouped, mesa, origin, sinks, stair, windows  # noqa: F401 (register)
from .decode_memo import CacheState, DecodeMemo
from .dense import dense_logits, dense_rows
from .dispatch import attend, fused_rules, use_fused
from .mesa import MESA_KV_COPIES
from .registry import KERNELS, Kernel, kernel, kernel_for
from .rope import Rope, RopeTables, rotate
from .rules import Rules
from .sets import SoftcapEager, capped, with_softcap
from .sliding import method_window, own_window
from .stair import StairGeometry

__all__ = ["Rope", "RopeTables", "rotate", "attend", "kernel", "kernel_for", "Kernel",
           "KERNELS", "StairGeometry", "dense_rows", "dense_logits", "DecodeMemo", "CacheState",
           "use_fused", "fused_rules", "Rules", "MESA_KV_COPIES",
           "own_window", "method_window", "SoftcapEager", "with_softcap", "capped"]
