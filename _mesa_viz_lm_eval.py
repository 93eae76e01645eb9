"""Registers mesa_viz with lm-eval as the model type ``mesa-viz``; imported
at interpreter start by ``mesa_viz_lm_eval.pth`` (site-packages), so it is
standard library only and does nothing until lm-eval itself is imported.

lm-eval 0.4.13 has no plugin discovery for model types: its CLI knows
``lm_eval.models.MODEL_MAPPING`` and whatever registered itself before
``get_model``.  This hook waits for ``lm_eval.models`` to be imported (lm-eval
imports it on the first ``get_model``; registering earlier would hide every
built-in model) and registers ``mesa-viz`` as a lazy placeholder, so torch
and mesa_viz load only when the model type is used.  So
``lm_eval --model mesa-viz --model_args method=mesa ...`` works after
``pip install mesa_viz[eval]``.  Where the vLLM plugin (``mesa_viz_vllm``) is
installed too, it registers ``mesa-viz-vllm`` the same way (lm-eval's ``vllm``
model type under a method, ``mesa_viz_vllm.harness``).

It also lets RULER tasks find a tokenizer when ``pretrained`` is left out
(the default model): after ``mesa_viz.analyses.ruler.lm`` was imported in this
process (the ``mesa-viz`` model type was built), RULER's
``resolve_tokenizer_name`` falls back to that model's tokenizer instead of
failing; with any other model it is unchanged.
"""

import importlib.abc
import importlib.machinery
import sys

NAME = "mesa-viz"
PLACEHOLDER = "mesa_viz.analyses.ruler.lm:MesaVizLM"
VLLM_NAME = "mesa-viz-vllm"
VLLM_PLACEHOLDER = "mesa_viz_vllm.harness:MethodVLLM"
_MODELS = "lm_eval.models"
_RULER = "lm_eval.tasks.ruler.common_utils"
_OURS = "mesa_viz.analyses.ruler.lm"


def register() -> None:
    """Register the ``mesa-viz`` placeholder, and ``mesa-viz-vllm``'s where
    the plugin is installed (no-op for one already there)."""
    import importlib.util

    from lm_eval.api.registry import model_registry
    if NAME not in model_registry:
        model_registry.register(NAME, target=PLACEHOLDER)
    if VLLM_NAME not in model_registry and importlib.util.find_spec("mesa_viz_vllm"):
        model_registry.register(VLLM_NAME, target=VLLM_PLACEHOLDER)


def _with_default_tokenizer(resolve):
    """RULER's tokenizer lookup, falling back to the mesa-viz model's tokenizer."""
    def resolve_tokenizer_name(kwargs):
        name = resolve(kwargs)
        ours = sys.modules.get(_OURS)
        return name if name or ours is None else ours.default_tokenizer_name()
    resolve_tokenizer_name.__wrapped__ = resolve
    return resolve_tokenizer_name


def _patch_ruler(module) -> None:
    if not hasattr(module.resolve_tokenizer_name, "__wrapped__"):
        module.resolve_tokenizer_name = _with_default_tokenizer(module.resolve_tokenizer_name)


_AFTER = {_MODELS: lambda module: register(), _RULER: _patch_ruler}


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then this hook's step for the module."""

    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        _AFTER[module.__name__](module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _AFTER:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Install the hook (modules already imported get their step at once)."""
    for name, step in _AFTER.items():
        if name in sys.modules:
            step(sys.modules[name])
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
