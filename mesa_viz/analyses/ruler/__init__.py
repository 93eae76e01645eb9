"""RULER through lm-eval, the harness the field uses: the offline tasks
(:mod:`.tasks`), the ``mesa-viz`` model type (:mod:`.lm`), runs by method and
length (:mod:`.run`), their rows (:mod:`.rows`) and needles (:mod:`.needles`).

Importing this package needs no lm-eval; :func:`evaluate` and
:class:`MesaVizLM` do (``pip install 'mesa_viz[eval]'``) and load on first use.
"""

from importlib import import_module

from .needles import TARGET_DELIMITER, needle_fields, needle_tokens, with_needles
from .rows import ROW_FIELDS, needle_cuts, row_key, summary, task_rows
from .tasks import (GROUP, HUB_ONLY, NEEDLE_TASKS, OFFLINE_TASKS, STOCK_OFFLINE, TASK_DIR,
                    VARIANTS, check_tasks, needle_chars)

__all__ = ["evaluate", "MesaVizLM", "TASK_DIR", "GROUP", "STOCK_OFFLINE", "VARIANTS",
           "OFFLINE_TASKS", "HUB_ONLY", "NEEDLE_TASKS", "check_tasks", "needle_chars",
           "needle_cuts", "summary", "task_rows", "row_key", "ROW_FIELDS", "needle_tokens",
           "needle_fields", "with_needles", "TARGET_DELIMITER"]

#: Names that need lm-eval -> their module.
_WITH_LM_EVAL = {"evaluate": ".run", "MesaVizLM": ".lm"}


def __getattr__(name):
    if name in _WITH_LM_EVAL:
        try:
            module = import_module(_WITH_LM_EVAL[name], __name__)
        except ImportError as err:
            raise ImportError(f"mesa_viz.ruler.{name} needs lm-eval: pip install "
                              f"'mesa_viz[eval]' ({err})") from err
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
