"""Shared fixtures (tiny random-weight models of two RoPE families, the real
default model loaded once per session) and the test layers.

Every test carries exactly one layer marker, given by its file's module-level
``pytestmark``: ``unit`` (pure code, no model), ``tiny`` (tiny random models,
notebooks on tiny models), ``slow`` (the real default model), ``browser``
(headless Chromium).  Collection fails for a test with none or several, so
no test falls outside ``make test-fast`` (``unit or tiny``) and ``make test``
by accident.
"""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LAYERS = ("unit", "tiny", "slow", "browser")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Refuse the session if a test lacks exactly one layer marker."""
    wrong = []
    for item in items:
        layers = sorted({m.name for m in item.iter_markers() if m.name in LAYERS})
        if len(layers) != 1:
            wrong.append(f"{item.nodeid}: {layers or 'no layer'}")
    if wrong:
        raise pytest.UsageError(
            f"tests need exactly one layer marker of {LAYERS} (a module-level "
            "`pytestmark = pytest.mark.<layer>`):\n  " + "\n  ".join(wrong))


@pytest.fixture(scope="session")
def tiny_llama():
    from mesa_viz.models import tiny_model
    return tiny_model("llama")[0]


@pytest.fixture(scope="session")
def tiny_neox():
    from mesa_viz.models import tiny_model
    return tiny_model("gpt_neox")[0]


@pytest.fixture(scope="session", params=["llama", "gpt_neox"])
def tiny(request):
    from mesa_viz.models import tiny_model
    return tiny_model(request.param)[0]


@pytest.fixture(scope="session")
def default_model():
    import mesa_viz
    return mesa_viz.load_model()
