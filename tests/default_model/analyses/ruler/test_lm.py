"""The literal ``lm_eval --model mesa-viz`` on the default model with
``pretrained`` left out: the model and, for RULER, its tokenizer are found
without being named (the .pth hook, run here by ``site.addsitedir``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


from mesa_viz.analyses.ruler import TASK_DIR

from repo import ROOT  # noqa: E402


def test_default_model_without_pretrained_or_tokenizer(tmp_path):
    args = ["--model", "mesa-viz", "--model_args", "method=mesa", "--include_path", str(TASK_DIR),
            "--tasks", "niah_multikey_1_noise", "--metadata",
            json.dumps({"max_seq_lengths": [1024], "num_samples": 1}),
            "--gen_kwargs", "max_gen_toks=12", "--device", "cpu",
            "--output_path", str(tmp_path), "--log_samples"]
    code = ("import site, sys; site.addsitedir(sys.argv[1]); "
            "from lm_eval.__main__ import cli_evaluate; sys.argv = ['lm_eval', *sys.argv[2:]]; "
            "cli_evaluate()")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, str(ROOT), *args], capture_output=True,
                          text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SmolLM2-135M-Instruct" in done.stderr                 # the tokenizer RULER used
    sample = json.loads(next(tmp_path.rglob("samples_*.jsonl")).read_text().splitlines()[0])
    assert sample["doc"]["max_length"] == 1024 and 900 < sample["doc"]["length"] <= 1024
    assert sample["filtered_resps"][0].strip()                     # it answered something


def test_needles_found_in_every_needle_task_on_the_default_tokenizer():
    """RULER's own prompts at 4096 tokens of the default tokenizer: one needle
    per asked value (the line holding it) and one statement per variable of
    the chain; each span's text is that needle."""
    import _mesa_viz_lm_eval as hook
    hook.install()
    from mesa_viz.analyses.ruler.lm import default_tokenizer_name
    from mesa_viz.analyses.ruler import NEEDLE_TASKS, needle_chars
    from mesa_viz.analyses.ruler.tasks import ruler_offline
    for task in NEEDLE_TASKS:
        doc = ruler_offline.sampled(task, tokenizer=default_tokenizer_name(),
                                    max_seq_lengths=[4096], num_samples=1)["test"][0]
        text = doc["input"] + doc["gen_prefix"]
        spans = needle_chars(task, text, doc["outputs"])
        assert len(spans) == len(doc["outputs"]), task
        for (a, b), answer in zip(spans, sorted(doc["outputs"], key=text.find)):
            needle = text[a:b]
            assert answer in needle and "\n" not in needle and "grass" not in needle, task
            assert needle.startswith("VAR " if task == "ruler_vt" else "One of the special"), task
