"""mesa_viz in lm-eval, the harness the field uses: the model type
``mesa-viz`` and offline RULER runs by method and length.

:class:`MesaVizLM` is lm-eval's ``HFLM`` with a mesa_viz method applied
around every forward and every generation, so ``lm_eval --model mesa-viz
--model_args method=mesa,stair_start=2048 --tasks ...`` runs any lm-eval
task under any method (``pretrained`` left out: the default model).  It
never truncates: ``max_length`` is unbounded unless given, and a prompt
longer than a given one is refused rather than cut from the left.

:func:`evaluate` runs RULER tasks that build their data offline
(:mod:`mesa_viz.lm_eval_tasks`) for several methods on one loaded model: the
prompts are made once (``samples`` per length) and shared by every method,
finished requests are cached per method (a rerun resumes), and one JSON line
per method, task, length and sample is appended to ``out``.  Each row names
its needles' tokens and where the method's layout cuts them (a Mesa chunk
boundary inside a needle: :func:`needle_fields`); :func:`with_needles` adds
them to rows written before.

Needs ``pip install mesa_viz[eval]`` (lm-eval 0.4.13, pinned: this module
uses its ``HFLM``, registry, ``CachingLM`` and RULER internals).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import logging
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

# lm_eval.models first: registering into an empty registry would hide the built-in models
import lm_eval.models  # noqa: F401
from lm_eval.api.model import CachingLM
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from .checks import check_lengths, check_methods
from .lm_eval_tasks import NEEDLE_TASKS, TASK_DIR, VARIANTS, check_tasks, needle_chars
from .methods import get_method
from .results import append_jsonl, read_jsonl

__all__ = ["MesaVizLM", "evaluate", "default_tokenizer_name", "task_rows", "needle_tokens",
           "needle_fields", "with_needles", "LM_EVAL_VERSION", "NO_TRUNCATION", "HFLM_OPTIONS"]

log = logging.getLogger(__name__)

#: The lm-eval release this integration is written and tested against.
LM_EVAL_VERSION = "0.4.13"
#: ``max_length`` when none is given: no prompt is ever cut.
NO_TRUNCATION = 1 << 24


def default_tokenizer_name() -> str:
    """The default model's tokenizer as a path RULER's ``AutoTokenizer`` loads."""
    from .models import default_tokenizer
    return str(default_tokenizer().name_or_path)


def _check_version() -> None:
    from importlib.metadata import version
    got = version("lm_eval")
    if got != LM_EVAL_VERSION:
        log.warning("lm-eval %s is installed; mesa_viz is tested with %s (pip install "
                    "'mesa_viz[eval]')", got, LM_EVAL_VERSION)


def _split_params(method: str, kwargs: dict) -> dict:
    """Pop ``method``'s own parameters out of ``kwargs`` (model args)."""
    cls = type(get_method(method))
    names = {f.name for f in dataclasses.fields(cls)} - {"train_length"}
    params = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    get_method(method, **params)
    return params


#: HFLM options that still act when mesa-viz hands HFLM a model it loaded
#: itself (HFLM ignores the loading options, so mesa-viz refuses them).
HFLM_OPTIONS = ("backend", "truncation", "logits_cache", "softmax_dtype",
                "mixed_precision_dtype", "add_bos_token", "prefix_token_id", "think_end_token",
                "enable_thinking", "chat_template_args")


def _refuse_unknown(method: str, kwargs: dict) -> None:
    """No model arg may be silently ignored."""
    unknown = sorted(set(kwargs) - set(HFLM_OPTIONS))
    if unknown:
        fields = sorted(f.name for f in dataclasses.fields(type(get_method(method))))
        raise ValueError(f"model args {unknown} are not used by mesa-viz (method {method!r}): "
                         "allowed pretrained, tokenizer, method, train_length, device, dtype, "
                         f"attn_implementation, max_length, batch_size, the method's "
                         f"parameters {fields}, and HFLM's {list(HFLM_OPTIONS)}")


def _device(device) -> str | None:
    """``device``, or ``cpu`` with a log line when it names an absent GPU
    (lm-eval's CLI defaults to ``cuda:0``)."""
    import torch
    if device is None or str(device).startswith("cuda") and torch.cuda.is_available():
        return device
    if str(device).startswith("cuda"):
        log.warning("device=%r: CUDA is not available here; mesa-viz runs on cpu", device)
        return "cpu"
    return str(device)


@register_model("mesa-viz")
class MesaVizLM(HFLM):
    """lm-eval's HF model with a mesa_viz method applied (model type ``mesa-viz``).

    Model args: ``pretrained`` (HF id or path, or a loaded model; default
    the default model), ``tokenizer`` (name or object; default the model's),
    ``method`` (default ``origin``), ``train_length`` (default the model's),
    the method's parameters (``stair_start=2048``, ...), ``device``,
    ``dtype``, ``attn_implementation`` (default ``sdpa``), ``max_length``
    (default :data:`NO_TRUNCATION`) and HFLM's other options.  Batch size 1:
    mesa_viz runs unpadded sequences.
    """

    def __init__(self, pretrained=None, method: str = "origin",
                 train_length: int | None = None, tokenizer=None, batch_size=1,
                 max_length: int | None = None, device: str | None = None, dtype=None,
                 attn_implementation: str = "sdpa", **kwargs):
        _check_version()
        method = str(method)
        params = _split_params(method, kwargs)
        kwargs.pop("max_batch_size", None)
        _refuse_unknown(method, kwargs)
        if str(batch_size) != "1":
            raise ValueError(f"batch_size={batch_size!r}: mesa-viz runs unpadded sequences, "
                             "allowed 1")
        model, tok = self._load(pretrained, tokenizer, _device(device), dtype,
                                attn_implementation)
        super().__init__(pretrained=model, tokenizer=tok, batch_size=1,
                         max_length=int(max_length or NO_TRUNCATION), **kwargs)
        self.method, self.method_params = method, params
        self.train_length = None if train_length is None else int(train_length)
        from .application import apply
        with apply(self.model, method, train_length=self.train_length, **params) as state:
            T = state.train_length                               # checks the model too
        log.info("mesa-viz: method=%s %s, T=%d, max_length=%d, device=%s", method, params, T,
                 self.max_length, self.device)

    @staticmethod
    def _load(pretrained, tokenizer, device, dtype, attn_implementation):
        from .models import default_tokenizer, load_model
        if pretrained is None or isinstance(pretrained, (str, Path)):
            model, tok = load_model(None if pretrained is None else str(pretrained),
                                    device=device, dtype=None if dtype == "auto" else dtype,
                                    attn_implementation=attn_implementation)
        elif tokenizer is None:
            raise ValueError("pretrained is a loaded model: allowed with tokenizer= given too")
        else:
            model, tok = pretrained, None
        if isinstance(tokenizer, (str, Path)):
            tok = default_tokenizer(str(tokenizer))
        elif tokenizer is not None:
            tok = tokenizer
        return model, tok

    def _applied(self):
        from .application import apply
        return apply(self.model, self.method, train_length=self.train_length,
                     **self.method_params)

    def _model_call(self, inps, attn_mask=None, labels=None):
        with self._applied():
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        with self._applied():
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    def tok_batch_encode(self, strings, padding_side="left", left_truncate_len=None,
                         truncation=False):
        ids, mask = super().tok_batch_encode(strings, padding_side=padding_side,
                                             truncation=truncation)
        if left_truncate_len and ids.shape[1] > left_truncate_len:
            raise ValueError(f"a prompt of {ids.shape[1]} tokens is longer than max_length="
                             f"{self.max_length} minus the tokens to generate: mesa-viz never "
                             "truncates; allowed a larger max_length in --model_args")
        return ids, mask

    def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
        for _, context, continuation in requests:
            if len(context) + len(continuation) > self.max_length + 1:
                raise ValueError(f"a request of {len(context) + len(continuation)} tokens is "
                                 f"longer than max_length={self.max_length}: mesa-viz never "
                                 "truncates; allowed a larger max_length in --model_args")
        return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm,
                                             override_bs=override_bs)


# -- offline RULER runs ---------------------------------------------------------------

def _tokenizer_name(tokenizer, out: Path) -> str:
    """A path RULER's ``AutoTokenizer`` loads for ``tokenizer``: its own
    folder, or a copy saved next to ``out``."""
    name = str(getattr(tokenizer, "name_or_path", "") or "")
    if name and Path(name).is_dir():
        return name
    folder = out.with_name(out.stem + "_tokenizer")
    tokenizer.save_pretrained(folder)
    return str(folder)


def _task_configs(tasks: list[str], metadata: dict):
    """lm-eval Task objects: the stock offline tasks with their data made
    by :func:`ruler_offline.sampled` (``num_samples`` per length), the
    variants from this package's YAMLs."""
    import functools

    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    from .lm_eval_tasks import ruler_offline
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


def task_rows(samples: list[dict], method: str, task: str, extra: dict,
              needles: "Callable[[str, list[str]], dict] | None" = None) -> list[dict]:
    """Our rows from lm-eval's logged samples of one RULER task: ``method,
    task, length, sample, score, prediction, target, prompt_tokens,
    prompt_hash`` (``prompt_tokens``: RULER's count), the fields
    ``needles(context, targets)`` gives (``input_tokens``, the prompt's
    tokens as the model read them, and :func:`needle_fields`), plus
    ``extra``."""
    rows = []
    for s in samples:
        doc, length = s["doc"], int(s["doc"]["max_length"])
        found = needles(s["arguments"][0][0], list(doc["outputs"])) if needles else {}
        rows.append(dict(method=method, task=task, length=length, sample=int(doc["index"]),
                         score=float(s[str(length)]), prediction=s["filtered_resps"][0],
                         target=list(doc["outputs"]), prompt_tokens=int(doc["length"]),
                         prompt_hash=s.get("prompt_hash"), **found, **extra))
    return rows


def needle_tokens(char_spans, context: str, ids: list[int], tokenizer) -> list[list[int]]:
    """Token spans ``[start, stop)`` in ``ids`` (the prompt as the model
    reads it) of the character spans ``char_spans`` of ``context``: every
    token overlapping a span.  ``ids`` may start with special tokens the
    text has not (a BOS); ValueError when the rest is not ``context``'s
    tokenization, so a span is never placed on the wrong tokens."""
    enc = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    lead = len(ids) - len(enc["input_ids"])
    if lead < 0 or list(ids[lead:]) != list(enc["input_ids"]):
        raise ValueError(f"the prompt's {len(ids)} tokens are not its text's tokenization "
                         f"({len(enc['input_ids'])} tokens) after special tokens: cannot place "
                         "the needles")
    ends = [b for _, b in enc["offset_mapping"]]
    starts = [a for a, _ in enc["offset_mapping"]]
    return [[lead + bisect.bisect_right(ends, a), lead + bisect.bisect_left(starts, b)]
            for a, b in char_spans]


def needle_fields(task: str, context: str, targets, ids: list[int], tokenizer, method) -> dict:
    """``needle_spans`` (token spans of the needles holding the answers,
    :func:`mesa_viz.lm_eval_tasks.needle_chars`) and ``needle_cuts`` (the
    positions where ``method``, resolved for the ``len(ids)``-token prompt,
    cuts them: :meth:`~mesa_viz.methods.Method.span_cuts`); both None for a
    task without needles."""
    chars = needle_chars(task, context, targets)
    if chars is None:
        return dict(needle_spans=None, needle_cuts=None)
    spans = needle_tokens(chars, context, ids, tokenizer)
    resolved = method.resolve(len(ids), prefill_length=len(ids))
    return dict(needle_spans=spans,
                needle_cuts=sorted({i for a, b in spans for i in resolved.span_cuts(a, b)}))


#: What lm-eval puts between a RULER prompt's text and its ``gen_prefix``
#: (the tasks' ``target_delimiter``): the context is ``input + " " + gen_prefix``.
TARGET_DELIMITER = " "


def with_needles(rows: list[dict], tokenizer) -> list[dict]:
    """``rows`` of ``mesa-viz ruler`` written before the needle fields, with
    ``input_tokens``, ``needle_spans`` and ``needle_cuts`` added.  Each prompt
    is rebuilt by :func:`ruler_offline.sampled` (seeded by task and length),
    joined as lm-eval joins it (:data:`TARGET_DELIMITER`) and checked against
    the row's ``prompt_hash``; encoded with the tokenizer's defaults (as
    lm-eval's HF model does) and cut by the row's method at its ``params``
    and ``train_length``.  Tasks without needles get None (not rebuilt); rows
    that have the fields come back as they are.  ValueError when a rebuilt
    prompt is not the row's."""
    from .lm_eval_tasks import ruler_offline
    need = defaultdict(int)
    for r in rows:
        if "needle_cuts" not in r and r["task"] in NEEDLE_TASKS:
            key = (r["task"], int(r["length"]))
            need[key] = max(need[key], int(r["sample"]) + 1)
    with tempfile.TemporaryDirectory() as tmp:
        name = _tokenizer_name(tokenizer, Path(tmp) / "ruler.jsonl")
        docs = {(t, L): ruler_offline.sampled(t, tokenizer=name, max_seq_lengths=[L],
                                              num_samples=n)["test"]
                for (t, L), n in need.items()}
    return [r if "needle_cuts" in r else _needles_of(r, docs, tokenizer) for r in rows]


def _needles_of(row: dict, docs: dict, tokenizer) -> dict:
    """One row of :func:`with_needles`."""
    if row["task"] not in NEEDLE_TASKS:
        return dict(row, needle_spans=None, needle_cuts=None)
    doc = docs[row["task"], int(row["length"])][int(row["sample"])]
    context = doc["input"] + TARGET_DELIMITER + doc["gen_prefix"]
    if hashlib.sha256(context.encode("utf-8")).hexdigest() != row.get("prompt_hash"):
        raise ValueError(f"the rebuilt prompt of {row['task']} at {row['length']} sample "
                         f"{row['sample']} is not the row's (prompt_hash differs): cannot place "
                         "its needles")
    ids = tokenizer(context)["input_ids"]
    method = get_method(row["method"], train_length=int(row["train_length"]),
                        **(row.get("params") or {}))
    return dict(row, input_tokens=len(ids),
                **needle_fields(row["task"], context, list(doc["outputs"]), ids, tokenizer, method))


def _model_name(model) -> str:
    return str(getattr(model.config, "_name_or_path", "") or type(model).__name__)


def evaluate(model, tokenizer, *, methods, tasks="ruler_offline", lengths, samples: int,
             out: "str | Path", method_params: dict | None = None,
             train_length: int | None = None, gen_kwargs: dict | None = None) -> Iterator[dict]:
    """RULER scores of every method x task x length x sample, streamed.

    ``tasks``: offline RULER task names or the group ``"ruler_offline"``
    (hub-only tasks are refused, see :func:`mesa_viz.lm_eval_tasks.check_tasks`);
    ``samples``: prompts per task and length, made once by lm-eval's
    generators and shared by every method; ``gen_kwargs``: lm-eval
    generation overrides (e.g. ``{"max_gen_toks": 32}``: changes the
    protocol, say so).  Rows (:func:`task_rows` plus ``params, train_length,
    model``) are appended to ``out`` per method and task; a (method, task)
    with every row there is skipped, and finished requests of an interrupted
    one come back from its cache (``<out stem>_cache/``).
    """
    method_params = dict(method_params or {})
    methods, lengths = list(methods), [int(n) for n in lengths]
    check_methods(methods, method_params)
    check_lengths(lengths)
    tasks = check_tasks(tasks)
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples={samples!r}: allowed an integer >= 1")
    out = Path(out)
    return _stream(model, tokenizer, methods, tasks, lengths, samples, out, method_params,
                   train_length, gen_kwargs)


def _stream(model, tokenizer, methods, tasks, lengths, samples, out, method_params,
            train_length, gen_kwargs):
    from lm_eval.evaluator import evaluate as lm_evaluate

    from .application import train_length_of
    done = {(r["method"], r["task"], r["length"], r["sample"]): r for r in read_jsonl(out)}
    want = {(t, L, i) for t in tasks for L in lengths for i in range(samples)}
    todo = [(m, t) for m in methods for t in tasks
            if any((m, t, L, i) not in done for tt, L, i in want if tt == t)]
    built = _built_tasks(tokenizer, out, todo, lengths, samples, gen_kwargs)
    T = int(train_length or train_length_of(model))
    name = _model_name(model)
    for method in methods:
        params = method_params.get(method, {})
        lm = None
        for task in tasks:
            if (method, task) in built:
                lm = lm or CachingLM(
                    MesaVizLM(pretrained=model, tokenizer=tokenizer, method=method,
                              train_length=T, **params),
                    _cache_file(out.with_name(out.stem + "_cache"), method, params, name))
                res = lm_evaluate(lm=lm, task_dict=built[method, task], log_samples=True,
                                  bootstrap_iters=0, verbosity="WARNING")
                extra = dict(params=params, train_length=T, model=name)
                needles = _needle_locator(lm, task, get_method(method, train_length=T, **params))
                for row in task_rows(res["samples"][task], method, task, extra, needles):
                    key = (method, task, row["length"], row["sample"])
                    if key not in done:
                        append_jsonl(out, row)
                        done[key] = row
            yield from (done[method, task, L, i] for L in lengths for i in range(samples)
                        if (method, task, L, i) in done)


def _needle_locator(lm, task: str, method) -> Callable[[str, list[str]], dict]:
    """``needles(context, targets)`` for :func:`task_rows`: the prompt
    encoded as ``lm`` encodes it for generation, its needles placed and cut
    (:func:`needle_fields`).  Needles that cannot be placed (a prompt this
    rule does not describe, a tokenizer that adds tokens at the end) are
    logged and recorded as unknown (None), never guessed, and the scores
    the run paid for are still written."""
    def needles(context: str, targets: list[str]) -> dict:
        ids = lm.tok_batch_encode([context])[0][0].tolist()
        try:
            found = needle_fields(task, context, targets, ids, lm.tokenizer, method)
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
    metadata = {"tokenizer": _tokenizer_name(tokenizer, out), "max_seq_lengths": lengths,
                "num_samples": samples}
    made = _task_configs(names, metadata)
    for task in made.values():
        if gen_kwargs:
            task.set_config(key="generation_kwargs", value=dict(gen_kwargs), update=True)
    return {(m, t): {"tasks": {t: made[t]}, "groups": {}, "group_map": {}} for m, t in todo}
