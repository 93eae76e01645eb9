"""Offline RULER runs through lm-eval for several methods on one loaded model: the
prompts are made once (``samples`` per length) and shared by every method,
finished requests are cached per method (a rerun resumes), and one JSON line per
method, task, length and sample is appended to ``out``.  Each row names its
needles' tokens and where the method's layout cuts them (:mod:`.needles`).

Needs ``pip install mesa_viz[eval]`` (lm-eval 0.4.13, pinned: this module uses
its ``CachingLM``, ``TaskManager`` and RULER internals).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from lm_eval.api.model import CachingLM
from lm_eval.evaluator import evaluate as lm_evaluate

from ...methods import get_method
from ...models.parts import model_name, train_length_fields
from ...runs.sweep import ResultsFile, sweep
from ...runs.validate import check_lengths, check_methods
from .lm import MesaVizLM
from .needles import needle_fields, tokenizer_name
from .rows import row_key, task_rows
from .tasks import TASK_DIR, VARIANTS, check_tasks

__all__ = ["evaluate", "evaluate_lms"]

log = logging.getLogger(__name__)


def evaluate(model, tokenizer, *, methods, tasks="ruler_offline", lengths, samples: int,
             out: "str | Path", method_params: dict | None = None,
             train_length: int | None = None, gen_kwargs: dict | None = None) -> Iterator[dict]:
    """RULER scores of every method x task x length x sample, streamed.

    ``tasks``: offline RULER task names or the group ``"ruler_offline"``
    (hub-only tasks are refused, see :func:`.tasks.check_tasks`); ``samples``:
    prompts per task and length, made once by lm-eval's generators and shared
    by every method; ``gen_kwargs``: lm-eval generation overrides (e.g.
    ``{"max_gen_toks": 32}``: changes the protocol, say so).  Rows
    (:func:`.rows.task_rows` plus ``params, train_length, model``) are
    appended to ``out`` per method and task; a (method, task) with every row
    there is skipped, and finished requests of an interrupted one come back
    from its cache (``<out stem>_cache/``).
    """
    method_params = dict(method_params or {})
    fields = train_length_fields(model, train_length)
    T = fields["train_length"]

    def lm_for(method: str, params: dict):
        return MesaVizLM(pretrained=model, tokenizer=tokenizer, method=method, train_length=T,
                         **params)

    return evaluate_lms(lm_for, tokenizer, methods=methods, tasks=tasks, lengths=lengths,
                        samples=samples, out=out, method_params=method_params, fields=fields,
                        name=model_name(model), gen_kwargs=gen_kwargs,
                        prompt_ids=lambda lm, text: lm.tok_batch_encode([text])[0][0].tolist())


def evaluate_lms(lm_for: Callable, tokenizer, *, methods, tasks, lengths, samples: int,
                 out: "str | Path", method_params: dict, fields: dict, name: str,
                 prompt_ids: Callable, gen_kwargs: dict | None = None,
                 close: Callable | None = None) -> Iterator[dict]:
    """:func:`evaluate` on any engine: ``lm_for(method, params)`` builds the
    lm-eval model that runs ``method`` (the transformers engine's
    :class:`.lm.MesaVizLM`, or another engine's), one at a time, ``close(lm)``
    releasing each when its method is done; ``prompt_ids(lm,
    context)``: the prompt's tokens as that model reads them for generation
    (for the rows' needle fields); ``fields``: the rows' ``train_length`` and
    ``train_length_from``; ``name``: their ``model``."""
    methods, lengths = list(methods), [int(n) for n in lengths]
    check_methods(methods, method_params)
    check_lengths(lengths)
    tasks = check_tasks(tasks)
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples={samples!r}: allowed an integer >= 1")
    results = ResultsFile(out, row_key)
    units = [(m, t) for m in methods for t in tasks]

    def keys(unit):
        m, t = unit
        return [(m, t, L, i) for L in lengths for i in range(samples)]

    todo = [u for u in units if any(k not in results for k in keys(u))]
    built = _built_tasks(tokenizer, results.path, todo, lengths, samples, gen_kwargs)
    T = fields["train_length"]
    engines = _OneAtATime(lm_for, close, results.path.with_name(results.path.stem + "_cache"),
                          name)

    def run(unit):
        method, task = unit
        params = method_params.get(method, {})
        lm = engines.get(method, params)
        res = lm_evaluate(lm=lm, task_dict=built[unit], log_samples=True, bootstrap_iters=0,
                          verbosity="WARNING")
        needles = _needle_locator(lambda text: prompt_ids(lm.lm, text), lm.tokenizer, task,
                                  get_method(method, train_length=T, **params))
        return task_rows(res["samples"][task], method, task,
                         dict(params=params, **fields, model=name), needles)

    def rows():
        try:
            yield from sweep(results, units, keys, run, desc="ruler", unit="task")
        finally:
            engines.close()

    return rows()


class _OneAtATime:
    """The lm-eval model of one method at a time, in its request cache
    (:func:`_cache_file`): the previous method's is released (``close(lm)``)
    before the next one is built, and the last by :meth:`close`."""

    def __init__(self, lm_for: Callable, close: Callable | None, folder: Path, name: str):
        self.lm_for, self.release, self.folder, self.name = lm_for, close, folder, name
        self.method, self.lm = None, None

    def get(self, method: str, params: dict) -> CachingLM:
        if method != self.method:
            self.close()
            self.lm = CachingLM(self.lm_for(method, params),
                                _cache_file(self.folder, method, params, self.name))
            self.method = method
        return self.lm

    def close(self) -> None:
        if self.lm is not None and self.release is not None:
            self.release(self.lm.lm)
        self.method, self.lm = None, None


def _needle_locator(encode: Callable, tokenizer, task: str,
                    method) -> Callable[[str, list[str]], dict]:
    """``needles(context, targets)`` for :func:`task_rows`: the prompt
    encoded as the model encodes it for generation (``encode(context)``), its
    needles placed and cut
    (:func:`needle_fields`).  Needles that cannot be placed (a prompt this
    rule does not describe, a tokenizer that adds tokens at the end) are
    logged and recorded as unknown (None), never guessed, and the scores
    the run paid for are still written."""
    def needles(context: str, targets: list[str]) -> dict:
        ids = encode(context)
        try:
            found = needle_fields(task, context, targets, ids, tokenizer, method)
        except ValueError as err:
            log.warning("%s: needles not placed, recorded as unknown: %s", task, err)
            found = dict(needle_spans=None, needle_cuts=None)
        return dict(input_tokens=len(ids), **found)
    return needles


def _built_tasks(tokenizer, out, todo, lengths, samples, gen_kwargs) -> dict:
    """``{(method, task): task_dict}``: each task built once, shared by methods."""
    names = list(dict.fromkeys(t for _, t in todo))
    if not names:
        return {}
    metadata = {"tokenizer": tokenizer_name(tokenizer, out), "max_seq_lengths": lengths,
                "num_samples": samples}
    made = _task_configs(names, metadata)
    for task in made.values():
        if gen_kwargs:
            task.set_config(key="generation_kwargs", value=dict(gen_kwargs), update=True)
    return {(m, t): {"tasks": {t: made[t]}, "groups": {}, "group_map": {}} for m, t in todo}


def _task_configs(tasks: list[str], metadata: dict):
    """lm-eval Task objects: the stock offline tasks with their data made
    by :func:`ruler_offline.sampled` (``num_samples`` per length), the
    variants from this package's YAMLs."""
    import functools

    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    from .tasks import ruler_offline
    manager = TaskManager(include_path=str(TASK_DIR), metadata=metadata)
    specs = []
    for task in tasks:
        if task in VARIANTS:
            specs.append(task)
            continue
        cfg = load_yaml(manager.task_index[task].yaml_path, resolve_func=True)
        specs.append({**cfg, "custom_dataset": functools.partial(ruler_offline.sampled, task)})
    return manager.load(specs)["tasks"]


def _cache_file(folder: Path, method: str, params: dict, model_name: str) -> str:
    """One lm-eval request cache per model, method and parameters (its keys
    hold only the request)."""
    key = json.dumps([model_name, method, params], sort_keys=True, default=str)
    return str(folder / f"{method}-{hashlib.sha256(key.encode()).hexdigest()[:12]}")
