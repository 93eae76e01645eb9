"""RULER data made offline by lm-eval's own RULER generators
(``lm_eval.tasks.ruler`` of lm-eval 0.4.13; nothing here re-implements them).

:func:`sampled` builds any task of :data:`mesa_viz.analyses.ruler.tasks.OFFLINE_TASKS`
with ``num_samples`` prompts per length (lm-eval fixes 500) and one RNG seeded
by task and length, so a task's prompts do not depend on the other tasks and
lengths of a run, and every method sees the same ones.  The three variants
(:func:`niah_multikey_1_noise`, :func:`niah_multivalue_noise`,
:func:`niah_multiquery_noise`) are RULER's MK-NIAH-1, MV-NIAH and MQ-NIAH
needles on the synthetic "repeat" haystack instead of Paul Graham's essays (a
hub dataset); the task YAMLs of this folder call them (lm-eval loads this file
by path through ``!function``).

Metadata read: ``max_seq_lengths`` (default lm-eval's ``[4096]``),
``num_samples`` (default 500), and the tokenizer name under ``tokenizer``,
``pretrained`` or ``model`` (lm-eval's own lookup).
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import zlib

import datasets
import numpy as np
from lm_eval.tasks.ruler import common_utils, cwe_utils, fwe_utils, niah_utils, vt_utils
from lm_eval.tasks.ruler.common_utils import (  # noqa: F401  (the YAMLs' metric functions)
    DEFAULT_SEQ_LENGTHS, aggregate_metrics, process_results)
from lm_eval.tasks.ruler.prepare_niah import generate_samples, get_haystack

log = logging.getLogger(__name__)

#: Prompts per length when metadata gives no ``num_samples`` (lm-eval's count).
NUM_SAMPLES = 500

#: Needle task -> (haystack, key type, value type, needle counts), the
#: arguments lm-eval's ``niah_utils`` passes for the stock tasks.
NIAH = {
    "niah_single_1": ("repeat", "words", "numbers", {}),
    "niah_multikey_2": ("needle", "words", "numbers", {}),
    "niah_multikey_3": ("needle", "uuids", "uuids", {}),
    "niah_multikey_1_noise": ("repeat", "words", "numbers", {"num_needle_k": 4}),
    "niah_multivalue_noise": ("repeat", "words", "numbers", {"num_needle_v": 4}),
    "niah_multiquery_noise": ("repeat", "words", "numbers", {"num_needle_q": 4}),
}


def _niah(task: str, tokenizer, length: int, n: int) -> list[dict]:
    haystack, keys, values, counts = NIAH[task]
    return generate_samples(get_haystack(type_haystack=haystack), max_seq_length=length,
                            template=niah_utils.TEMPLATE, type_haystack=haystack,
                            type_needle_k=keys, type_needle_v=values, num_samples=n,
                            TOKENIZER=tokenizer, **counts)


def _vt(task: str, tokenizer, length: int, n: int) -> list[dict]:
    """As ``vt_utils.get_dataset``: one in-context example, then ``n`` samples."""
    icl = vt_utils.sys_vartrack_w_noise_random(tokenizer=tokenizer, num_samples=1,
                                               max_seq_length=500, incremental=5)[0]
    return vt_utils.sys_vartrack_w_noise_random(tokenizer=tokenizer, num_samples=n,
                                                max_seq_length=length, icl_example=icl)


def _cwe(task: str, tokenizer, length: int, n: int) -> list[dict]:
    return cwe_utils.sys_word_pair_random(num_samples=n, max_seq_length=length,
                                          tokenizer=tokenizer)


def _fwe(task: str, tokenizer, length: int, n: int) -> list[dict]:
    return fwe_utils.sys_kwext(tokenizer=tokenizer, max_seq_length=length, num_samples=n)


_MAKERS = {**dict.fromkeys(NIAH, _niah), "ruler_vt": _vt, "ruler_cwe": _cwe, "ruler_fwe": _fwe}


@contextlib.contextmanager
def _seeded(key: str):
    """Python's, numpy's and lm-eval's CWE RNGs seeded from ``key`` inside
    the block, restored after; the generators' progress prints are dropped."""
    rngs = (random, cwe_utils.RNG)
    states = [r.getstate() for r in rngs], np.random.get_state()
    seed = zlib.crc32(key.encode())
    for r in rngs:
        r.seed(seed)
    np.random.seed(seed)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for r, s in zip(rngs, states[0]):
            r.setstate(s)
        np.random.set_state(states[1])


def sampled(task: str, **metadata) -> dict:
    """lm-eval's ``custom_dataset`` for ``task``: ``{"test": Dataset}`` of
    ``num_samples`` prompts per length, lengths in order."""
    if task not in _MAKERS:
        raise ValueError(f"task {task!r}: allowed {sorted(_MAKERS)}")
    lengths = metadata.get("max_seq_lengths", DEFAULT_SEQ_LENGTHS)
    n = int(metadata.get("num_samples", NUM_SAMPLES))
    if n < 1:
        raise ValueError(f"num_samples={n}: allowed >= 1")
    tokenizer = common_utils.get_tokenizer(common_utils.resolve_tokenizer_name(metadata))
    rows: list[dict] = []
    for length in lengths:
        with _seeded(f"{task}:{length}"):
            rows += _MAKERS[task](task, tokenizer, int(length), n)
    log.info("%s: %d prompts at lengths %s", task, len(rows), list(lengths))
    return {"test": datasets.Dataset.from_list(rows, split=datasets.Split.TEST)}


def niah_multikey_1_noise(**metadata) -> dict:
    """MK-NIAH-1 (4 keys, one asked) on the synthetic haystack."""
    return sampled("niah_multikey_1_noise", **metadata)


def niah_multivalue_noise(**metadata) -> dict:
    """MV-NIAH (4 values of one key, all asked) on the synthetic haystack."""
    return sampled("niah_multivalue_noise", **metadata)


def niah_multiquery_noise(**metadata) -> dict:
    """MQ-NIAH (4 keys, all asked) on the synthetic haystack."""
    return sampled("niah_multiquery_noise", **metadata)
