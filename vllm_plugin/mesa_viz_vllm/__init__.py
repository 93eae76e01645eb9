"""mesa_viz's context-extension methods inside vLLM (docs/vllm.md).

One call::

    from mesa_viz_vllm import LLM
    llm = LLM("path/to/model", method="mesa", train_length=4096)
    llm.generate(prompts, SamplingParams(...))

returns vLLM's own ``LLM`` whose attention runs the method, exactly as
``mesa_viz.runtime.apply`` runs it on transformers.  For ``vllm serve``, pass
:func:`hf_overrides` (``python -m mesa_viz_vllm overrides MODEL --method mesa``
prints it) to ``--hf-overrides``.
"""

from __future__ import annotations

from .engine import LLM, hf_overrides
from .pins import VLLM_VERSION, check_vllm
from .settings import FAMILIES, MethodSpec, supported_methods

__all__ = ["LLM", "hf_overrides", "VLLM_VERSION", "check_vllm", "FAMILIES", "MethodSpec",
           "supported_methods"]
