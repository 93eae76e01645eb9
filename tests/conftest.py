"""Shared fixtures (tiny random-weight models of two RoPE families, the real
default model loaded once per session) and the test layers.

A test's layer is the folder it lives in, and files inside a layer mirror the
package (``tests/tiny/runtime/test_apply.py`` tests ``mesa_viz/runtime/apply.py``):

* ``unit``: pure code, no model (the notebooks' figures, the docs site);
* ``tiny``: tiny random-weight models, notebooks run on them;
* ``default_model``: the real default model (SmolLM2-135M-Instruct) at long lengths;
* ``browser``: headless Chromium drawing notebooks and figures;
* ``gpu``: the CUDA kernels on a GPU (skipped where there is none).

The folder's name is given to every test as a marker (``pytest -m tiny``).
Plain ``pytest`` runs ``unit`` and ``tiny`` (pyproject's ``testpaths``);
``make test`` runs every layer.  A test file outside a layer folder stops the
session.
"""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: The layer folders, fastest first.
LAYERS = ("unit", "tiny", "default_model", "browser", "gpu", "vllm")
TESTS = Path(__file__).resolve().parent


def layer_of(path) -> str | None:
    """The layer of a test file: the first folder under ``tests/``."""
    parts = Path(path).resolve().relative_to(TESTS).parts
    return parts[0] if len(parts) > 1 and parts[0] in LAYERS else None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark every test with its folder's layer; refuse a test outside one."""
    outside = []
    for item in items:
        layer = layer_of(item.path)
        if layer is None:
            outside.append(item.nodeid)
        else:
            item.add_marker(getattr(pytest.mark, layer))
    if outside:
        raise pytest.UsageError(
            f"tests must live in a layer folder of tests/ ({', '.join(LAYERS)}):\n  "
            + "\n  ".join(outside))


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
