"""Two methods measured in turn: one decode step (or one prefill) of each before the
next of either, on the same weights, so a machine whose speed drifts slows both
alike; the paired ratio of each step.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time

from ...methods import check_int
from ...models.parts import model_device, train_length_of
from ...runtime import apply
from .machine import host, sdpa_choices
from .point import out_cache, prefill, random_ids, step

__all__ = ["interleaved_decode", "interleaved_prefill",
           "weight_sharing_twin", "decode_ab", "prefill_ab", "paired_ratio"]


def _applied(stack: contextlib.ExitStack, runs: dict, train_length: int | None,
             piece_tokens: int | None, method_params: dict | None = None) -> None:
    """Enter ``apply(model, method, **method_params[method])`` for every run of
    ``runs`` on ``stack``."""
    for model, method in runs.values():
        T = train_length or train_length_of(model)
        stack.enter_context(apply(model, method, train_length=T, piece_tokens=piece_tokens,
                                  **(method_params or {}).get(method, {})))


def interleaved_decode(runs: dict, length: int, steps: int, *, train_length: int | None = None,
                       seed: int = 0, piece_tokens: int | None = None,
                       method_params: dict | None = None) -> dict:
    """Greedy decode steps of several runs taken in turn, one step of each
    run before the next step of any, on caches prefilled with the same random
    prompt of ``length`` tokens: a host whose speed drifts (other processes,
    clocks) then slows every run alike, and a step's ratio pairs steps taken
    moments apart (:func:`paired_ratio`).

    ``runs``: ``{label: (model, method)}`` with one model object per run
    (``apply`` holds one method per model; :func:`weight_sharing_twin` gives
    a second one on the same weights); ``method_params``: ``{method:
    {parameter: value}}``.  Returns
    ``{label: {"seconds": [...], "tokens": [...], "sdpa": {...}}}``: per step,
    and the SDPA backends the first step's calls went to (:func:`sdpa_choices`;
    that step is left out of the medians).
    """
    import torch
    got = {label: {"seconds": [], "tokens": [], "sdpa": {}} for label in runs}
    with torch.no_grad(), contextlib.ExitStack() as stack:
        _applied(stack, runs, train_length, piece_tokens, method_params)
        state = {}
        for label, (model, _) in runs.items():
            dev = model_device(model)
            out, _ = prefill(model, random_ids(model.config.vocab_size, length, seed, dev), dev,
                             exact=False, record_sdpa=False)
            state[label] = (out_cache(out), out.logits[:, -1:].argmax(-1))
            del out
        for n in range(steps):
            for label, (model, _) in runs.items():
                cache, token = state[label]
                with sdpa_choices() if n == 0 else contextlib.nullcontext({}) as counts:
                    dt, token, cache = step(model, cache, token, model_device(model))
                got[label]["sdpa"].update(counts)
                state[label] = (cache, token)
                got[label]["seconds"].append(dt)
                got[label]["tokens"].append(int(token[0, 0]))
    return got


def interleaved_prefill(runs: dict, length: int, rounds: int, *,
                        train_length: int | None = None, seed: int = 0,
                        piece_tokens: int | None = None, progress: bool = False,
                        method_params: dict | None = None) -> dict:
    """Prefills of several runs taken in turn, one of each run a round, of the
    same random prompt of ``length`` tokens; each is timed alone (the last
    prefill's cache is freed first), on a presized cache like
    :func:`measure_point`'s.  ``runs``: as for :func:`interleaved_decode`.
    Returns ``{label: [seconds, ...]}`` (one a round)."""
    import torch
    from tqdm.auto import tqdm
    got = {label: [] for label in runs}
    ids = {label: random_ids(model.config.vocab_size, length, seed, model_device(model))
           for label, (model, _) in runs.items()}
    with torch.no_grad(), contextlib.ExitStack() as stack:
        _applied(stack, runs, train_length, piece_tokens, method_params)
        for _ in tqdm(range(rounds), desc=f"prefill A/B, {length} tokens", unit="round",
                      disable=not progress):
            for label, (model, _) in runs.items():
                out, p = prefill(model, ids[label], model_device(model), exact=False,
                                 record_sdpa=False)
                del out
                got[label].append(p.seconds)
    return got


def weight_sharing_twin(model):
    """A second model object holding the same parameter tensors (no copy of
    the weights; its own modules and buffers), so that ``apply`` can hold
    another method on it beside the first model's."""
    return copy.deepcopy(model, memo={id(p): p for p in model.parameters()})


def _ab_runs(model, methods) -> tuple[str, str, dict]:
    """``(a, b, runs)``: two different methods, ``a`` on ``model`` and ``b``
    on its :func:`weight_sharing_twin`."""
    names = list(methods)
    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(f"an A/B takes two different methods: got {names}")
    a, b = names
    return a, b, {a: (model, a), b: (weight_sharing_twin(model), b)}


def decode_ab(model, methods, lengths, steps: int, *, train_length: int | None = None,
              seed: int = 0, piece_tokens: int | None = None,
              method_params: dict | None = None):
    """Rows ``kind: decode-ab``, yielded length by length (save each as it
    comes): the two ``methods``' greedy decode, one step of each in turn
    (:func:`interleaved_decode`, the second on a :func:`weight_sharing_twin`):
    every step's milliseconds, the medians (first step left out: compiles,
    first rotations) and the median of the per-step ratios, second over first
    (:func:`paired_ratio`), the SDPA backends of each method's first step and
    each method's greedy tokens (the same tokens before and after a change to
    a kernel: it still computes the same attention)."""
    a, b, runs = _ab_runs(model, methods)
    for n in lengths:
        got = interleaved_decode(runs, n, steps, train_length=train_length, seed=seed,
                                 piece_tokens=piece_tokens, method_params=method_params)
        ms = {k: [1e3 * x for x in v["seconds"]] for k, v in got.items()}
        med = {k: statistics.median(v[1:]) for k, v in ms.items()}
        yield {"kind": "decode-ab", "length": n, "steps": steps, "methods": [a, b],
               "device": model_device(model), "ms_all": ms, "ms": med,
               "ratio_paired": paired_ratio(ms[b], ms[a]), "ratio_of_medians": med[b] / med[a],
               "sdpa_backends": {k: v["sdpa"] for k, v in got.items()},
               "tokens": {k: v["tokens"] for k, v in got.items()},
               "params": _params_of([a, b], method_params),
               "host": host(str(model_device(model))),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _params_of(methods, method_params: dict | None) -> dict:
    """``{method: {parameter: value}}`` given for the two methods (``{}`` each
    where none)."""
    return {m: dict((method_params or {}).get(m, {})) for m in methods}


def prefill_ab(model, methods, lengths, repeats: int, *, warmup: int = 1,
               train_length: int | None = None, seed: int = 0,
               piece_tokens: int | None = None, progress: bool = False,
               method_params: dict | None = None):
    """Rows ``kind: prefill-ab``, yielded length by length (save each as it
    comes): the two ``methods``' prefills taken in turn (:func:`interleaved_prefill`,
    the second on a :func:`weight_sharing_twin`), ``warmup`` rounds and then
    ``repeats`` timed ones: every prefill's seconds, the medians of the timed
    ones and the median of the per-round ratios, second over first
    (:func:`paired_ratio`): a machine whose speed drifts slows both alike."""
    check_int("repeats", repeats, 1)
    check_int("warmup", warmup, 0)
    a, b, runs = _ab_runs(model, methods)
    for n in lengths:
        s = interleaved_prefill(runs, n, warmup + repeats, train_length=train_length, seed=seed,
                                piece_tokens=piece_tokens, progress=progress,
                                method_params=method_params)
        med = {k: statistics.median(v[warmup:]) for k, v in s.items()}
        yield {"kind": "prefill-ab", "length": n, "repeats": repeats, "warmup": warmup,
               "methods": [a, b], "device": model_device(model), "s_all": s, "s": med,
               "ratio_paired": paired_ratio(s[b], s[a], skip=warmup),
               "ratio_of_medians": med[b] / med[a],
               "params": _params_of([a, b], method_params),
               "host": host(str(model_device(model))),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def paired_ratio(a: list[float], b: list[float], skip: int = 1) -> float:
    """Median over steps of ``a[i] / b[i]`` (steps taken in turn, the first
    ``skip`` left out: first calls compile and fill caches)."""
    pairs = [x / y for x, y in zip(a[skip:], b[skip:])]
    if not pairs:
        raise ValueError(f"paired_ratio needs more than skip={skip} steps: got {len(a)}")
    return statistics.median(pairs)
