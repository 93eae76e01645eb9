"""lm-eval's ``vllm`` model type under a mesa_viz method: the model type
``mesa-viz-vllm``.

:class:`MethodVLLM` is lm-eval's own ``VLLM`` (its batching, stop strings,
generation kwargs and caching unchanged) whose engine is started with the
plugin's ``hf_overrides`` and engine defaults, so ``lm_eval --model
mesa-viz-vllm --model_args pretrained=PATH,method=mesa,max_model_len=16896
--tasks ...`` runs any lm-eval task with the method inside vLLM (the
registration comes from mesa_viz's lm-eval start-up hook; in Python, import
this module).  Every refusal of :func:`mesa_viz_vllm.LLM` is made before the
engine starts, and a prompt longer than ``max_model_len`` minus the tokens to
generate is refused rather than cut from the left (stock ``vllm`` cuts it).

Needs lm-eval (``pip install 'mesa_viz[eval]'``) beside the plugin.
"""

from __future__ import annotations

import logging

# lm_eval.models first: registering into an empty registry would hide the built-in models
import lm_eval.models  # noqa: F401
from lm_eval.api.registry import register_model
from lm_eval.models.vllm_causallms import VLLM

from mesa_viz.methods import pop_params

from .engine import model_config
from .pins import check_vllm
from .settings import check, check_engine, overrides_for

__all__ = ["MethodVLLM", "MODEL_TYPE", "shutdown"]

log = logging.getLogger(__name__)

#: The lm-eval model type this module registers.
MODEL_TYPE = "mesa-viz-vllm"


def shutdown(lm) -> None:
    """Stop the engine of a :class:`MethodVLLM` (its worker processes and
    memory), before another method's engine starts."""
    lm.model.llm_engine.engine_core.shutdown()


@register_model(MODEL_TYPE)
class MethodVLLM(VLLM):
    """lm-eval's ``VLLM`` whose engine runs ``method`` (model type
    ``mesa-viz-vllm``).

    Model args: ``pretrained`` (a path), ``method`` (default ``origin``),
    ``train_length`` (default the model's), the method's parameters
    (``stair_start=2048``, ...), ``max_model_len`` (required: lm-eval's
    default is the model's ``max_position_embeddings``, which would cut
    every prompt past ``T``), ``data_parallel_size`` 1, and ``VLLM``'s other
    options and ``vllm.LLM`` arguments (``dtype``, ``tensor_parallel_size``,
    ``enable_prefix_caching``, ...), checked as :func:`mesa_viz_vllm.LLM`
    checks them.
    """

    def __init__(self, pretrained: str, method: str = "origin",
                 train_length: int | None = None, max_model_len: int | None = None,
                 max_length: int | None = None, data_parallel_size: int = 1, **kwargs):
        check_vllm()
        longest = max_model_len if max_model_len is not None else max_length
        if longest is None:
            raise ValueError("max_model_len=None: mesa-viz-vllm needs the longest request in "
                             "tokens (lm-eval's default is the model's max_position_embeddings, "
                             "which cuts prompts past it); allowed an integer >= the longest "
                             "prompt plus the tokens to generate")
        if int(data_parallel_size) != 1:
            raise ValueError(f"data_parallel_size={data_parallel_size!r}: lm-eval starts each "
                             "replica in a Ray actor, untested with the plugin; allowed 1 "
                             "(tensor_parallel_size is supported)")
        config = model_config(str(pretrained))
        method = str(method)
        params = pop_params(method, kwargs)
        spec = check(config, method, train_length, **params)
        engine = check_engine(spec, {**kwargs, "max_model_len": int(longest)})
        engine.pop("max_model_len")
        engine["hf_overrides"] = overrides_for(config, spec, int(longest))
        from .plugin import register
        register()
        log.info("lm-eval vllm under %s (train_length=%d, parameters %s), max_model_len=%d",
                 spec.method, spec.train_length, spec.params, longest)
        super().__init__(pretrained=str(pretrained), max_model_len=int(longest), **engine)
        self.spec = spec

    def generate_until(self, requests, disable_tqdm: bool = False):
        for req in requests:
            context, gen_kwargs = req.args
            budget = self.modify_gen_kwargs(dict(gen_kwargs),
                                            default_max_gen_toks=self.max_gen_toks)[2]
            self._refuse_long(len(self.tok_encode(context)) + budget, "prompt plus max_gen_toks")
        return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False):
        for _, context, continuation in requests:
            self._refuse_long(len(context) + len(continuation), "request")
        return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm)

    def _refuse_long(self, tokens: int, what: str) -> None:
        if tokens > self.max_length:
            raise ValueError(f"a {what} of {tokens} tokens is longer than max_model_len="
                             f"{self.max_length}: mesa-viz-vllm never truncates; allowed a "
                             "larger max_model_len in --model_args")
