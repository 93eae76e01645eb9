"""mesa_viz: Mesa-Extrapolation and its baselines on Hugging Face transformers,
with probes and figures to see what happens past the training length.

Nothing runs at import: heavy modules (torch, transformers, plotly) load on
first use of the names that need them.
"""

from importlib import import_module

from .layouts import Layout, layout, layout_rows
from .methods import METHODS, Method, get_method

__version__ = "0.1.0"

_LAZY = {
    "apply": "mesa_viz.application",
    "load_model": "mesa_viz.models",
    "notebook_model": "mesa_viz.models",
    "tiny_model": "mesa_viz.models",
    "tiny_tokenizer": "mesa_viz.models",
    "trace": "mesa_viz.probes",
    "Trace": "mesa_viz.results",
    "find_thresholds": "mesa_viz.thresholds",
    "explain": "mesa_viz.drilldown",
    "Explanation": "mesa_viz.drilldown",
    "attention_map": "mesa_viz.probes",
    "AttentionMap": "mesa_viz.pooling",
    "perplexity": "mesa_viz.perplexity",
}

__all__ = ["Layout", "layout", "layout_rows", "METHODS", "Method", "get_method",
           *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        module = import_module(_LAZY[name])
        # a name that is also its module's name (perplexity) is the module, which is
        # callable: the same object before and after the submodule is imported
        return module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
    raise AttributeError(f"module 'mesa_viz' has no attribute {name!r}")
