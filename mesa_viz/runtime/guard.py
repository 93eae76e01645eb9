"""The guard: before an application is installed, the model runs on
:data:`GUARD_TOKENS` tokens with its own attention and through the kernels
(Origin's layout: identity rotation hook, the registered attention function,
the family's channel order), and the application is refused with the measured
difference unless they agree, so no architecture, known or not, gives silently
wrong results."""

from __future__ import annotations

import dataclasses
import logging
from contextlib import ExitStack, contextmanager

import torch

from ..methods import Origin
from ..models.families import METHOD_LAYER_TYPE, rope_frequencies
from ..models.parts import model_type
from .install import install
from .rotary import rotary_for
from .state import Applied

__all__ = ["guard", "GUARD_TOKENS", "guard_ids", "judge_guard", "own_spread"]

log = logging.getLogger(__name__)

#: Tokens of the input every application is checked on (:func:`guard`).
GUARD_TOKENS = 16
#: Largest max |logit difference| the guard accepts, relative to max(1, max |logit|)
#: (half precision: to max |logit|, with the model's own spread beside it: ``judge_guard``).
_GUARD_TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-4, torch.bfloat16: 2e-2,
                    torch.float16: 1e-2}
#: Half precision: the guard also accepts this many times the model's own two attention
#: implementations' difference (:func:`own_spread`), at most ``_GUARD_CEILING`` of the scale.
_GUARD_SPREAD = 4.0
_GUARD_CEILING = 0.1


def guard(model, state: Applied, path: str) -> None:
    """Refuse an application whose kernels' path differs from the model's own
    attention on :data:`GUARD_TOKENS` tokens, with the measured difference.

    Runs the model twice (eval mode, no cache): its own attention, then the
    application's machinery with Origin's layout (identity rotation hook, the
    registered attention function with the family's channel order, the
    kernels).  The registered function must run once per layer and the
    logits must agree within ``_GUARD_TOLERANCE`` (relative to max(1, max
    |logit|)).  A method with a RoPE frequency rule must also rebuild the
    model's own rotary exactly at factor 1.  Leaves nothing behind.
    """
    ids = guard_ids(model)
    probe = Applied(dataclasses.replace(state.settings, method=Origin(), kernel=True,
                                        capture=None), told_past_train_length=True)
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), _hooks_set_aside(model):
            own = model(ids, use_cache=False).logits.float()
            floor = own_spread(model, ids, own, state.settings.backend)
            with ExitStack() as undo:
                install(undo, model, probe, path)
                got = model(ids, use_cache=False).logits.float()
    finally:
        model.train(training)
    judge_guard(model, probe.calls, own, got, floor)
    _guard_rule(model, state)


def own_spread(model, ids, own: torch.Tensor, backend: str) -> float:
    """Half precision only (else 0): max |logit difference| between the model's
    own attention and its other stock implementation (``eager``, or ``sdpa``
    for an eager model) on the guard's input: the rounding the model's own
    kernels disagree by, which compounds over the layers (a random 22-layer
    Llama in bfloat16: 0.098 on logits up to 4.3, 2.3 %)."""
    if next(model.parameters()).dtype not in (torch.bfloat16, torch.float16):
        return 0.0
    other = "sdpa" if backend == "eager" else "eager"
    try:
        model.set_attn_implementation(other)
    except (ValueError, ImportError) as exc:
        log.info("guard: no %s attention to compare with (%s)", other, exc)
        return 0.0
    try:
        return float((model(ids, use_cache=False).logits.float() - own).abs().max())
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        log.info("guard: the model's %s attention does not run (%s): no spread", other, exc)
        return 0.0
    finally:
        model.set_attn_implementation(backend)


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
               "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


@contextmanager
def _hooks_set_aside(model):
    """Within the block the model's modules carry none of the forward hooks
    they had (a caller's recorders must not see the guard's forwards); hooks
    registered inside are the block's own.  Restored on exit."""
    saved = []
    for module in model.modules():
        kept = {name: getattr(module, name) for name in _HOOK_DICTS if hasattr(module, name)}
        saved.append((module, kept))
        for name, hooks in kept.items():
            setattr(module, name, type(hooks)())
    try:
        yield
    finally:
        for module, kept in saved:
            for name, hooks in kept.items():
                setattr(module, name, hooks)


def guard_ids(model) -> torch.Tensor:
    """A fixed input of :data:`GUARD_TOKENS` token ids spread over the vocabulary."""
    emb = model.get_input_embeddings()
    ids = (torch.arange(GUARD_TOKENS) * 7919 + 17) % emb.num_embeddings
    return ids[None].to(emb.weight.device)


def judge_guard(model, calls: int, own: torch.Tensor, got: torch.Tensor,
                floor: float = 0.0) -> None:
    """Raise unless the registered function ran once per layer and the logits
    agree: within ``_GUARD_TOLERANCE`` of the logits' scale (max(1, max |logit|);
    half precision: max |logit|), or, in half precision, within
    ``_GUARD_SPREAD`` times ``floor``, the model's own two attention
    implementations' difference (:func:`own_spread`), never past
    ``_GUARD_CEILING`` of the scale.  In half precision a layout error smaller
    than the model's own rounding cannot be told from it (a tiny random GLM with
    Cohere's interleaved pairs: 1.6 times the spread); a larger one is refused
    (a tiny Cohere with GLM's half split: 37 times)."""
    kind, layers = model_type(model), int(model.config.num_hidden_layers)
    if calls != layers:
        raise ValueError(f"model type {kind!r}: the registered attention function ran {calls} "
                         f"times for {layers} layers on a {GUARD_TOKENS}-token check, so "
                         "mesa_viz kernels would not run where the model attends: not supported")
    diff, top = float((got - own).abs().max()), float(own.abs().max())
    dtype = next(model.parameters()).dtype
    half = dtype in (torch.bfloat16, torch.float16)
    scale = top if half else max(1.0, top)
    tol = _GUARD_TOLERANCE.get(dtype, 1e-2) * scale
    if half:
        tol = max(tol, min(_GUARD_SPREAD * floor, _GUARD_CEILING * scale))
    if not diff <= tol:
        spread = f"; the model's own two attentions differ by {floor:.3g}" if floor else ""
        raise ValueError(f"model type {kind!r}: mesa_viz's kernels (Origin's layout) differ "
                         f"from the model's own attention on a {GUARD_TOKENS}-token check: max "
                         f"|logit difference| {diff:.3g} (logits up to {scale:.3g}; allowed "
                         f"{tol:.3g}{spread}): its attention or RoPE layout is not supported")


def _guard_rule(model, state: Applied) -> None:
    """A frequency rule at factor 1 must rebuild the model's own rotary exactly."""
    T = state.train_length
    neutral = type(state.method)().resolve(GUARD_TOKENS, T)        # its defaults: factor 1
    rule = neutral.rope_parameters(state.settings.model_rope)
    if rule is None:
        return
    built = rotary_for(state.rotary, rule, T)
    (inv, scaling), (own, _) = (rope_frequencies(r, METHOD_LAYER_TYPE)
                                for r in (built, state.rotary))
    same = torch.allclose(inv.float(), own.float(), rtol=1e-6) and scaling == 1.0
    if not same:
        raise ValueError(f"model type {model_type(model)!r}: its rotary class does not rebuild "
                         f"its own frequencies from rope_parameters {rule}, so method "
                         f"{state.method.name!r} would change RoPE below train_length")
