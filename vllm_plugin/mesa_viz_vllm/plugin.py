"""The ``vllm.general_plugins`` entry point: registers the plugin's model
architectures (:mod:`.models`) with vLLM in every process that loads plugins
(the engine's workers included).  Safe to call more than once."""

from __future__ import annotations

from .settings import FAMILIES, architecture

__all__ = ["register"]


def register() -> None:
    """Register ``MesaViz<Arch>`` for each family of :data:`.settings.FAMILIES`
    (lazily, by ``module:class``: vLLM imports it only when a model uses it)."""
    from vllm import ModelRegistry

    from .pins import check_vllm
    check_vllm()
    known = set(ModelRegistry.get_supported_archs())
    for kind in FAMILIES:
        arch = architecture(kind)
        if arch not in known:
            ModelRegistry.register_model(arch, f"mesa_viz_vllm.models:{arch}")
