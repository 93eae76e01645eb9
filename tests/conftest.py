"""Shared fixtures: tiny random-weight models of two RoPE families and the
real default model (SmolLM2-135M-Instruct, loaded once per session)."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
