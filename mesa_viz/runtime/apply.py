"""``apply()``: run a transformers model under a method, inside a ``with`` block.

``with apply(model, "mesa"):`` installs, for the duration of the block only:

* a forward hook on the model's rotary embedding that records the positions,
  resolves the method for the sequence and, for methods that run a mesa_viz
  kernel (``not method.native``, or a probe's capture), hands the attention
  modules the identity rotation, so queries and keys reach attention (and the
  KV cache) *before* RoPE;
* for those methods, an attention function registered under a name unique to
  this application through transformers' ``AttentionInterface`` (and a mask
  function through ``AttentionMaskInterface``: the kernels build their own
  masks), which runs the method's kernel from ``mesa_viz.kernels``' registry
  (the hooks: :mod:`.state`; installing them: :mod:`.install`);
* for a method with a RoPE frequency rule (``method.rope_parameters()``), a
  rotary embedding of the model's class built by transformers from those
  ``rope_parameters`` (Dynamic-NTK: ``{"rope_type": "dynamic", ...}``);
* a channel permutation of queries and keys for families whose RoPE pairs
  channels otherwise than the kernels' half split (interleaved pairs: Cohere,
  GLM; the rotary block last: DeepSeek-V3);
* on models with sliding-window layers whose window is at most the training
  length, those layers keep the model's own windowed attention (:mod:`.windows`)
  and every method, native ones included, runs through the kernels; a window
  above it gets the method within the window (``kernels.method_window``, once
  the window cuts keys off);
* on GPT-J, whose RoPE is a fixed sin/cos table, a rotary module computing
  the same rows for any position (``models.sinusoid``) in its place;
* a filter on transformers' generation logger that drops its "exceeded the
  model's predefined maximum length" reminder (and that logger's
  ``warning_once``, so transformers' process-wide once-cache never records the
  dropped reminder): under a method the reminder says the opposite of what
  happens, so ``apply`` logs (INFO, once) what the method does past the
  training length instead.

On exit, also after an exception, every hook, registration, filter and
attribute is put back.  Applications do not nest: a model that already carries
a method is refused.

Before anything is installed, ``apply`` refuses the families it cannot run
exactly (``models.families``: refused families, a sliding window or logit
softcap that is not a positive number; a frequency rule on a model whose own
RoPE is already scaled or a fixed table) and then *guards* the application
(:mod:`.guard`), refusing with the measured difference if the kernels' path
differs from the model's own attention.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager

from .. import kernels
from ..methods import Method, get_method
from ..models.compat import check_transformers
from ..models.families import (ALIBI_FAMILIES, CHANNELS, NOPE_LAYER_TYPES, find_rotary,
                               model_rope, own_window_layers, refuse_family,
                               refuse_model_attention, windowed_everywhere)
from ..models.parts import model_type, scaled_beyond, train_length_source
from ..models.sinusoid import SinusoidRotary
from .alibi import apply_alibi
from .capture import Capture
from .guard import guard
from .install import MARK, install
from .state import SUPPORTED_BACKENDS, Applied, Settings

__all__ = ["apply"]

log = logging.getLogger(__name__)


@contextmanager
def apply(model, method: "str | Method" = "origin", *, train_length: int | None = None,
          capture: Capture | None = None, piece_tokens: int | None = None, **params):
    """Run ``model`` under ``method`` inside the block; restore it on exit.

    ``params`` are the method's parameters (see ``mesa_viz.methods``);
    defaults come from the model (``train_length`` from its config).  Yields
    the live :class:`~.state.Applied` state (``.resolved`` holds the parameters of the
    last forward).  Native methods (origin, dynamic-ntk, pi, ntk, yarn) run
    the model's own attention unless a probe captures it; every other method
    runs its kernel.  Raises ValueError before changing anything for an
    unknown method or parameter, a method without a kernel, an unsupported
    attention backend or model family, a model that already carries a
    method, or a model on which :func:`guard` finds the kernels' path
    differing from its own attention.  ALiBi models (MPT, BLOOM) run their
    own attention with the method's bias (:mod:`.alibi`).
    """
    if piece_tokens is not None and (isinstance(piece_tokens, bool) or
                                     not isinstance(piece_tokens, int) or piece_tokens < 1):
        raise ValueError(f"piece_tokens={piece_tokens!r} must be an integer >= 1 (or None)")
    if model_type(model) in ALIBI_FAMILIES:                 # MPT, BLOOM: runtime.alibi
        check_transformers()
        _refuse_nesting(model)
        with apply_alibi(model, method, train_length=_train_length(model, train_length),
                         capture=capture, piece_tokens=piece_tokens, **params) as state:
            yield state
        return
    state, path = _checked(model, method, train_length, capture, params, piece_tokens)
    guard(model, state, path)
    with ExitStack() as undo:
        install(undo, model, state, path)
        log.debug("applied %s to %s", state.method.name, type(model).__name__)
        yield state


def _refuse_nesting(model) -> None:
    """A model carries at most one application at a time."""
    prev = getattr(model, MARK, None)
    impl = str(getattr(model.config, "_attn_implementation", ""))
    if prev is None and not impl.startswith("mesa_viz_"):
        return
    name = repr(prev.method.name) if prev is not None else f"(attention {impl!r})"
    raise ValueError(f"method {name} is already applied to this {type(model).__name__}: "
                     "mesa_viz applications do not nest; leave its `with apply(...)` "
                     "block first")


def _checked(model, method, train_length, capture, params,
             piece_tokens) -> tuple[Applied, str]:
    """The state of an application (not yet installed) and the rotary module's
    path, every refusal raised before anything changes."""
    check_transformers()
    _refuse_nesting(model)
    m = get_method(method, **params)
    refuse_family(model)
    rotary, path = find_rotary(model)
    T = _train_length(model, train_length)
    refuse_model_attention(model, T)
    m.resolve(T, T)                                      # validate early
    backend = model.config._attn_implementation
    kernel = capture is not None or not m.native or own_window_layers(model.config, T)
    if windowed_everywhere(model.config, T):
        log.info("every layer of this %s attends within a sliding window of %d <= "
                 "train_length=%d: each keeps the model's own attention, so %r changes nothing",
                 model_type(model), model.config.sliding_window, T, m.name)
    if kernel:
        kernels.kernel_for(m)                            # refuse a method without a kernel
        if backend not in SUPPORTED_BACKENDS:
            why = _on_windows(m.native and capture is None)
            raise ValueError(f"attention implementation {backend!r} is not supported for "
                             f"method {m.name!r}{why}: "
                             f"allowed {SUPPORTED_BACKENDS} (load the model with "
                             "attn_implementation='sdpa')")
    types = getattr(model.config, "layer_types", None)
    settings = Settings(method=m, train_length=T, rotary=rotary, backend=backend,
                        kernel=kernel, capture=capture,
                        channels=CHANNELS.get(model_type(model)),
                        model_rope=model_rope(model, rotary), piece_tokens=piece_tokens,
                        own_rotary=rotary, layer_types=None if types is None else tuple(types),
                        nope_types=NOPE_LAYER_TYPES.get(model_type(model), ()))
    _refuse_rule_on_table(model, settings)
    _refuse_scaled_rope(model, settings)
    return Applied(settings), path


def _refuse_rule_on_table(model, settings: Settings) -> None:
    """A frequency rule on a model whose RoPE is a fixed sin/cos table (GPT-J,
    ``models.sinusoid``): refused, transformers builds no rotary of a rule for it."""
    m, T = settings.method, settings.train_length
    if isinstance(settings.own_rotary, SinusoidRotary) and m.resolve(T, T).rope_rule():
        raise ValueError(f"method {m.name!r} replaces the RoPE frequencies, but this "
                         f"{model_type(model)} model's RoPE is a fixed sin/cos table "
                         f"({type(model).__name__}: no rope_parameters for transformers to "
                         "rebuild it from); allowed the methods that re-place positions "
                         "(Mesa, ReRoPE, Self-Extend, Dual Chunk, ...), not PI, NTK, YaRN or "
                         "Dynamic-NTK")


def _on_windows(windows: bool) -> str:
    """Why a native method runs the kernels: layers of the model's own window."""
    return (" on a model with sliding-window layers (which keep the model's own attention "
            "while the others run the method)") if windows else ""


def _train_length(model, given: int | None) -> int:
    """``T``: ``given``, else the model's (logged with the config field it came from)."""
    if given is not None:
        return int(given)
    T, source = train_length_source(model)
    longest = scaled_beyond(model)
    if longest is None:
        log.info("train_length=%d from the model's %s (pass train_length= to choose another)",
                 T, source)
        return T
    log.warning("train_length=%d from the model's %s, but its max_position_embeddings is %d "
                "(a scaled %r RoPE, trained or tuned past %d): methods change attention past "
                "%d; pass train_length=%d (or the length the model really handles) to keep "
                "its own attention up to there", T, source, longest,
                model.config.rope_parameters.get("rope_type"), T, T, longest)
    return T


def _refuse_scaled_rope(model, settings: Settings) -> None:
    """A frequency rule replaces the model's RoPE parameters: refuse it on a
    model whose own RoPE is already scaled (that scaling would be dropped)."""
    T, own = settings.train_length, settings.model_rope["rope_type"]
    if own == "default":
        return
    rope = {**settings.model_rope, "rope_theta": settings.model_rope["rope_theta"] or 1.0}
    if settings.method.resolve(T, T).rope_parameters(rope) is not None:
        raise ValueError(f"method {settings.method.name!r} replaces the RoPE frequencies, but this "
                         f"{model_type(model)} model's rope_type is {own!r}, whose scaling "
                         "would be dropped: allowed on models with rope_type 'default'")
