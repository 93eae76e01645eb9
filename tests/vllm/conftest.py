"""The vLLM layer's fixtures: tiny random-weight models saved for vLLM to load,
and the exactness table (method x family x length) written at the end of the
session, from the rows :mod:`vllm_cases` collects.

Runs only in the vLLM environment (``make test-vllm``, ``.venv-vllm``); in the
main environment every test here is skipped, saying so (``vllm_cases.NOT_HERE``).
"""

from __future__ import annotations

import os

import pytest

import vllm_cases

# the engine in this process (engine startup in seconds, not a spawned process per engine);
# test_engine_in_its_own_process runs one the default way
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory):
    """``name -> (model, path)``: each tiny model, made once and saved (weights
    and tokenizer) for vLLM to load."""
    from mesa_viz.models import tiny_model
    made = {}

    def get(name: str):
        if name not in made:
            model, tok = tiny_model(vllm_cases.tiny_family(name),
                                    **vllm_cases.FAMILY_CONFIGS[name])
            path = tmp_path_factory.mktemp(name)
            model.save_pretrained(path)
            tok.save_pretrained(path)
            made[name] = (model, str(path))
        return made[name]
    return get


def pytest_sessionfinish(session, exitstatus):
    """Write the exactness table the tests made (``vllm_cases.TABLE``)."""
    vllm_cases.write_table()
