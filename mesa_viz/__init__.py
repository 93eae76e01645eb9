"""mesa_viz: Mesa-Extrapolation and its baselines on Hugging Face transformers,
with probes and figures to see what happens past the training length.

Nothing runs at import: heavy modules (torch, transformers, plotly) load on
first use of the names that need them.  The layers, top to bottom (imports run
downwards only):

* ``cli`` (``mesa-viz``), ``report``, the facades ``plots`` and ``widgets``;
* ``analyses/<name>``: one home per analysis (its computation, rows, figures,
  explorer, report section and command), on ``viz`` (figure and explorer
  scaffolding) and ``runs`` (results files, the resumable sweep, statistics);
* ``runtime``: ``apply()`` and the probes, the only code touching transformers'
  internals, on ``models`` (what a model is);
* ``kernels`` (torch) and ``methods`` (numpy: every method's ``relative(i, j)``).
"""

import warnings
from importlib import import_module

from .methods import METHODS, Method, get_method
from .methods.layouts import Layout, layout, layout_rows

__version__ = "0.1.0"

#: Public names -> the module that defines them (loaded on first use).
_LAZY = {
    "apply": "mesa_viz.runtime",
    "trace": "mesa_viz.runtime",
    "Trace": "mesa_viz.runtime",
    "load_model": "mesa_viz.models",
    "notebook_model": "mesa_viz.models",
    "tiny_model": "mesa_viz.models",
    "tiny_tokenizer": "mesa_viz.models",
    "find_thresholds": "mesa_viz.analyses.thresholds",
    "explain": "mesa_viz.analyses.explain",
    "Explanation": "mesa_viz.analyses.explain",
    "attention_map": "mesa_viz.analyses.attention_map",
    "AttentionMap": "mesa_viz.analyses.attention_map",
}
#: Modules reached as attributes (``mv.passkey.evaluate(...)``, ``from mesa_viz import plots``).
_MODULES = {
    "passkey": "mesa_viz.analyses.passkey",
    "perplexity": "mesa_viz.analyses.perplexity",
    "thresholds": "mesa_viz.analyses.thresholds",
    "crossings": "mesa_viz.analyses.crossings",
    "bench": "mesa_viz.analyses.bench",
    "ruler": "mesa_viz.analyses.ruler",
    "theory": "mesa_viz.analyses.theory",
    "report": "mesa_viz.report",
    "plots": "mesa_viz.plots",
    "widgets": "mesa_viz.widgets",
    "runs": "mesa_viz.runs",
    "runtime": "mesa_viz.runtime",
    "models": "mesa_viz.models",
    "kernels": "mesa_viz.kernels",
    "data": "mesa_viz.data",
}

#: Earlier module names -> where their code lives now (``docs/migration.md``): still
#: reached as attributes, with a warning naming the new place.
_MOVED = {
    "failure": "mesa_viz.analyses.crossings",
    "drilldown": "mesa_viz.analyses.explain",
    "lm_eval_model": "mesa_viz.analyses.ruler",
    "lm_eval_tasks": "mesa_viz.analyses.ruler",
    "results": "mesa_viz.runs",
    "application": "mesa_viz.runtime",
    "probes": "mesa_viz.runtime",
    "memory": "mesa_viz.runtime.memory",
    "pooling": "mesa_viz.analyses.attention_map.pooling",
}

__all__ = ["Layout", "layout", "layout_rows", "METHODS", "Method", "get_method",
           *_LAZY, *_MODULES]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name in _MODULES:
        return import_module(_MODULES[name])
    if name in _MOVED:
        warnings.warn(f"mesa_viz.{name} is now {_MOVED[name]} (docs/migration.md)",
                      DeprecationWarning, stacklevel=2)
        return import_module(_MOVED[name])
    raise AttributeError(f"module 'mesa_viz' has no attribute {name!r}")
