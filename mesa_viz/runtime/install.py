"""Installing an application on a model, every change with its undo: the hooks of
:class:`.state.Applied`, the attention function registered through
transformers' ``AttentionInterface``, a frequency rule's rotary module, the
input checks, and the filter on transformers' length reminder."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from contextlib import ExitStack

from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from ..models.parts import module_parent
from ..models.sinusoid import SinusoidRotary
from .rotary import RuleRotary

__all__ = ["install", "MARK"]

#: The attribute marking a model that carries an application (removed on exit).
MARK = "_mesa_viz_applied"
#: The logger and the start of transformers' reminder that generation passed
#: ``max_position_embeddings`` (``generation/stopping_criteria.py``, 5.x).
_LENGTH_LOGGER = "transformers.generation.stopping_criteria"
_LENGTH_REMINDER = "This is a friendly reminder - the current text generation call has exceeded"


def install(undo: ExitStack, model, state, path: str) -> None:
    """Install the application ``state`` (:class:`.state.Applied`) on ``model``,
    whose rotary module is at ``path``; ``undo`` takes it all back."""
    setattr(model, MARK, state)
    undo.callback(delattr, model, MARK)
    handle = model.register_forward_pre_hook(_check_inputs, with_kwargs=True)
    undo.callback(handle.remove)
    _drop_length_reminder(undo)
    s = state.settings
    if isinstance(s.own_rotary, SinusoidRotary):          # GPT-J's table, replaced
        parent, leaf = module_parent(model, path)
        undo.callback(setattr, parent, leaf, getattr(parent, leaf))
        setattr(parent, leaf, s.own_rotary)
    if s.method.resolve(s.train_length, s.train_length).rope_parameters(s.model_rope) is not None:
        parent, leaf = module_parent(model, path)
        original = getattr(parent, leaf)
        state.settings = dataclasses.replace(s, rotary=RuleRotary(original, state))
        setattr(parent, leaf, state.rotary)
        undo.callback(setattr, parent, leaf, original)
    handle = state.rotary.register_forward_hook(state.on_rotary, with_kwargs=True)
    undo.callback(handle.remove)
    if state.settings.kernel:
        decoder = module_parent(model, path)[0]
        for handle in (model.register_forward_pre_hook(state.on_model, with_kwargs=True),
                       decoder.register_forward_pre_hook(state.on_decoder, with_kwargs=True),
                       decoder.register_forward_hook(state.after_decoder, with_kwargs=True)):
            undo.callback(handle.remove)
        name = f"mesa_viz_{uuid.uuid4().hex[:12]}"
        _register(name, state)
        undo.callback(_unregister, name)
        model.set_attn_implementation(name)
        undo.callback(model.set_attn_implementation, state.settings.backend)


def _check_inputs(module, args, kwargs):
    """Refuse inputs the kernels would silently mis-handle."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is not None and ids.shape[-1] == 0:
        raise ValueError("empty input: input_ids has 0 tokens (need >= 1)")
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2 and not bool(mask.all()):
        raise ValueError("padded batches (attention_mask with zeros) are not supported "
                         "by mesa_viz methods: run equal-length sequences")


def _no_mask(*args, **kwargs):
    """Mask function for the custom attention: the kernels build their own."""
    return None


def _register(name, state):
    AttentionInterface.register(name, state.attention)
    AttentionMaskInterface.register(name, _no_mask)


def _unregister(name):
    AttentionInterface._global_mapping.pop(name, None)
    AttentionMaskInterface._global_mapping.pop(name, None)


class _DropLengthReminder(logging.Filter):
    """Drops transformers' "exceeded the model's predefined maximum length"
    reminder (``apply`` logs what the method does instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_LENGTH_REMINDER)


def _dropping(logger: logging.Logger) -> bool:
    return any(isinstance(f, _DropLengthReminder) for f in logger.filters)


def _warning_once_unless_dropped(logger: logging.Logger):
    """``logger.warning_once`` that returns before transformers' process-wide
    once-cache (an ``lru_cache``) sees the reminder while an application drops
    it, so a reminder dropped inside ``apply`` is still shown once after it."""
    def warning_once(msg, *args, **kwargs):
        if _dropping(logger) and str(msg).startswith(_LENGTH_REMINDER):
            return None
        return type(logger).warning_once(logger, msg, *args, **kwargs)
    return warning_once


def _drop_length_reminder(undo: ExitStack) -> None:
    """Drop the reminder until ``undo`` closes (applications may overlap, on
    several models, and close in any order: the last one out restores)."""
    logger = logging.getLogger(_LENGTH_LOGGER)
    if not _dropping(logger):
        logger.warning_once = _warning_once_unless_dropped(logger)
    drop = _DropLengthReminder()
    logger.addFilter(drop)

    def restore():
        logger.removeFilter(drop)
        if not _dropping(logger):
            vars(logger).pop("warning_once", None)
    undo.callback(restore)
