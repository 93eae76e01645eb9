"""mesa_viz in lm-eval, the harness the field uses: the model type ``mesa-viz``.

:class:`MesaVizLM` is lm-eval's ``HFLM`` with a mesa_viz method applied
around every forward and every generation, so ``lm_eval --model mesa-viz
--model_args method=mesa,stair_start=2048 --tasks ...`` runs any lm-eval
task under any method (``pretrained`` left out: the default model).  It
never truncates: ``max_length`` is unbounded unless given, and a prompt
longer than a given one is refused rather than cut from the left.

Needs ``pip install mesa_viz[eval]`` (lm-eval 0.4.13, pinned: this module
uses its ``HFLM``, registry, ``CachingLM`` and RULER internals).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

# lm_eval.models first: registering into an empty registry would hide the built-in models
import lm_eval.models  # noqa: F401
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from ...methods import get_method, pop_params
from ...models import default_tokenizer, load_model
from ...runtime import apply

__all__ = ["MesaVizLM", "default_tokenizer_name", "LM_EVAL_VERSION", "NO_TRUNCATION",
           "HFLM_OPTIONS"]

log = logging.getLogger(__name__)


#: The lm-eval release this integration is written and tested against.
LM_EVAL_VERSION = "0.4.13"


#: ``max_length`` when none is given: no prompt is ever cut.
NO_TRUNCATION = 1 << 24


def default_tokenizer_name() -> str:
    """The default model's tokenizer as a path RULER's ``AutoTokenizer`` loads."""
    return str(default_tokenizer().name_or_path)


def _check_version() -> None:
    from importlib.metadata import version
    got = version("lm_eval")
    if got != LM_EVAL_VERSION:
        log.warning("lm-eval %s is installed; mesa_viz is tested with %s (pip install "
                    "'mesa_viz[eval]')", got, LM_EVAL_VERSION)


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
        params = pop_params(method, kwargs)
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
        with apply(self.model, method, train_length=self.train_length, **params) as state:
            T = state.train_length                               # checks the model too
        log.info("mesa-viz: method=%s %s, T=%d, max_length=%d, device=%s", method, params, T,
                 self.max_length, self.device)

    @staticmethod
    def _load(pretrained, tokenizer, device, dtype, attn_implementation):
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
