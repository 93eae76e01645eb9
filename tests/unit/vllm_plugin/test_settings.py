"""The vLLM plugin's refusals, checked without vLLM (they run before any engine
starts, in the main environment too): an unknown method or parameter, a method
the plugin does not run, an unsupported family or setting, each named with what
is allowed; and the core package never importing vLLM."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "vllm_plugin"))

from mesa_viz_vllm import settings  # noqa: E402


def _config(kind="llama", **extra):
    return AutoConfig.for_model(kind, hidden_size=64, intermediate_size=128,
                                num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=128, **extra)


def test_the_core_package_never_imports_vllm():
    hits = []
    for path in (ROOT / "mesa_viz").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            hits += [f"{path.relative_to(ROOT)}: {n}" for n in names
                     if n == "vllm" or n.startswith("vllm.")]
    assert not hits, hits


def test_the_frequency_rules_are_not_run_and_the_rest_are():
    run = settings.supported_methods()
    assert {"origin", "mesa", "rerope", "leaky-rerope", "self-extend", "dual-chunk",
            "streaming-llm", "stair"} <= set(run)
    assert not {"pi", "ntk", "yarn", "dynamic-ntk"} & set(run)


@pytest.mark.parametrize("method, params, match", [
    ("mesaa", {}, r"unknown method 'mesaa': allowed \["),
    ("mesa", {"first_chunks": 8}, r"unknown parameter\(s\) \['first_chunks'\] .* allowed"),
    ("mesa", {"first_chunk": 0}, r"first_chunk=0 is out of range: allowed in \[1, 63\]"),
    ("yarn", {}, r"method 'yarn' changes the RoPE frequencies.* allowed \['origin'"),
    ("mesa", {"preset": "paper"}, r"preset='paper' needs train_length > 512"),
])
def test_bad_methods_and_parameters_are_refused(method, params, match):
    with pytest.raises(ValueError, match=match):
        settings.check(_config(), method, 64, **params)


def test_unsupported_families_and_windows_are_refused():
    with pytest.raises(ValueError, match=r"model type 'gemma' is not supported.*allowed \["):
        settings.check(_config("gemma", head_dim=16), "mesa", 64)
    with pytest.raises(ValueError, match=r"sliding_window=32: .*\(allowed sliding_window=None\)"):
        settings.check(_config("mistral", sliding_window=32), "rerope", 64)


def test_train_length_comes_from_the_model_unless_given():
    assert settings.check(_config(), "rerope").train_length == 128
    scaled = _config(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 32})
    assert settings.check(scaled, "rerope").train_length == 32
    assert settings.check(_config(), "rerope", 64).train_length == 64


@pytest.mark.parametrize("method, params, engine, match", [
    ("mesa", {}, {"enable_prefix_caching": True}, r"enable_prefix_caching=True under method "
                                                  r"'mesa'.*allowed False"),
    ("self-extend", {}, {"enable_prefix_caching": True}, r"allowed False"),
    ("leaky-rerope", {}, {"enable_prefix_caching": True}, r"allowed False"),
    ("stair", {}, {"enable_prefix_caching": True}, r"allowed False"),
    ("dual-chunk", {"preset": "authors-code"}, {"enable_prefix_caching": True},
     r"'dual-chunk' with parameters \{'preset': 'authors-code'\}"),
    ("mesa", {}, {"enable_chunked_prefill": True}, r"enable_chunked_prefill=True under method "
                                                   r"'mesa'.*allowed False"),
    ("rerope", {}, {"kv_cache_dtype": "fp8"}, r"kv_cache_dtype='fp8'.*allowed 'auto'"),
    ("rerope", {}, {"speculative_config": {"method": "ngram"}}, r"speculative_config=.*allowed"),
    ("rerope", {}, {"pipeline_parallel_size": 2}, r"pipeline_parallel_size=2.*allowed None or 1"),
    ("rerope", {}, {"hf_overrides": {"a": 1}}, r"hf_overrides: .*allowed none"),
])
def test_engine_settings_the_method_cannot_run_are_refused(method, params, engine, match):
    spec = settings.check(_config(), method, 64, **params)
    with pytest.raises(ValueError, match=match):
        settings.check_engine(spec, engine)


def test_prefix_caching_is_kept_where_a_prompts_rows_do_not_depend_on_its_length():
    for method in ("origin", "rerope", "dual-chunk", "streaming-llm"):
        assert not settings.prompt_dependent(settings.check(_config(), method, 64).value())
    for method in ("mesa", "self-extend", "leaky-rerope", "stair"):
        assert settings.prompt_dependent(settings.check(_config(), method, 64).value())


def test_engine_defaults_follow_the_method():
    mesa = settings.check_engine(settings.check(_config(), "mesa", 64), {})
    assert mesa == {"enable_prefix_caching": False, "enable_chunked_prefill": False}
    long = settings.check_engine(settings.check(_config(), "mesa", 64), {"max_model_len": 9000})
    assert long["max_num_batched_tokens"] == 9000
    assert settings.check_engine(settings.check(_config(), "rerope", 64), {}) == {}
    dual = settings.check(_config(), "dual-chunk", 64)
    assert settings.check_engine(dual, {"enable_prefix_caching": True}) == {
        "enable_prefix_caching": True}


def test_overrides_carry_the_method_and_lift_the_length_limit():
    config = _config()
    spec = settings.check(config, "mesa", 64, first_chunk=8)
    out = settings.overrides_for(config, spec, max_model_len=512)
    assert out == {"architectures": ["MesaVizLlamaForCausalLM"],
                   "mesa_viz": {"method": "mesa", "train_length": 64,
                                "params": {"first_chunk": 8}},
                   settings.PROMPT_LENGTH_CARRIER: 1, "model_max_length": 512}
    assert "model_max_length" not in settings.overrides_for(config, spec, max_model_len=100)
    assert settings.MethodSpec.from_config(type("C", (), {"mesa_viz": out["mesa_viz"]})) == spec
    with pytest.raises(ValueError, match=r"needs a method in the model config's 'mesa_viz'"):
        settings.MethodSpec.from_config(config)
