"""The offline RULER tasks with vLLM as the engine: ``mesa-viz ruler``'s prompts,
scores and rows, identical in form, each method's requests answered by
lm-eval's ``vllm`` model type running the method (:class:`.harness.MethodVLLM`).

The grid, the shared prompts (made once by lm-eval's generators), the request
cache, resuming and the rows (needle spans and cuts included) are
``mesa_viz.analyses.ruler.run``'s; only the lm-eval model differs.  One engine
runs at a time: a method's engine is shut down before the next one starts.
"""

from __future__ import annotations

from pathlib import Path

from mesa_viz.analyses.ruler.run import evaluate_lms
from mesa_viz.models.parts import model_name, train_length_fields

from .engine import model_holder
from .settings import check

__all__ = ["evaluate", "DEFAULT_HEADROOM"]

#: Tokens ``max_model_len`` leaves past the longest length when none is given:
#: RULER's prompts stay below their length and its tasks generate at most 128 tokens;
#: a request past it is refused (never cut).
DEFAULT_HEADROOM = 256


def evaluate(model: str, *, methods, tasks="ruler_offline", lengths, samples: int,
             out: "str | Path", method_params: dict | None = None,
             train_length: int | None = None, gen_kwargs: dict | None = None,
             engine: dict | None = None):
    """RULER rows of every method x task x length x sample on ``model`` (a
    path), streamed, as ``mesa_viz.analyses.ruler.run.evaluate`` makes them on
    transformers.  ``engine``: ``vllm.LLM`` (and lm-eval ``VLLM``) arguments;
    ``max_model_len`` defaults to the longest length plus
    :data:`DEFAULT_HEADROOM`.  Every method is checked before any engine starts."""
    from transformers import AutoTokenizer

    from .harness import MethodVLLM, shutdown
    method_params = dict(method_params or {})
    holder = model_holder(model)
    for method in methods:                                   # refusals before any engine
        check(holder.config, method, train_length, **method_params.get(method, {}))
    fields = train_length_fields(holder, train_length)
    engine = dict(engine or {})
    engine.setdefault("max_model_len", max(int(n) for n in lengths) + DEFAULT_HEADROOM)

    def lm_for(method: str, params: dict):
        return MethodVLLM(pretrained=model, method=method, train_length=fields["train_length"],
                          **params, **engine)

    return evaluate_lms(lm_for, AutoTokenizer.from_pretrained(model), methods=methods,
                        tasks=tasks, lengths=lengths, samples=samples, out=out,
                        method_params=method_params, fields=fields, name=model_name(holder),
                        gen_kwargs=gen_kwargs, close=shutdown,
                        prompt_ids=lambda lm, text: list(lm.tok_encode(text)))
