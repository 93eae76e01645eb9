"""ALiBi models (MPT, BLOOM) under a method: the family's own attention, with the
additive bias it hands each decoder block replaced, per forward, by the
method's: ``-slope_h * position(i, j)`` where ``methods.relative(i, j)`` makes
key ``j`` visible to query ``i``, ``-inf`` elsewhere.

Neither family calls transformers' ``AttentionInterface`` (both score
``q . k`` and add the bias in their own attention), so no kernel runs: the
bias is the only thing changed, through a forward pre-hook on each decoder
block that swaps the block's bias argument (``models.families.ALIBI_FAMILIES``).
The model's own bias, ``slope_h * (j - c)``, differs from ``-slope_h * (i - j)``
by a constant per query row, which softmax ignores, so Origin's bias is the
model's own attention.  The bias is dense ``[head, q_pos, k_pos]`` for each
forward (no prefill in pieces): memory grows with ``n^2``, which is what the
tiny models and CPU runs need; longer prompts are refused where
``methods.layout`` would refuse them (``MAX_DENSE_LAYOUT``).

What an additive bias cannot express is refused: a method that changes RoPE
frequencies (no RoPE here), a method that scales queries or keys, a probe's
capture and a ``piece_tokens`` setting (no kernel runs).  The guard runs the
model on :data:`.guard.GUARD_TOKENS` tokens with its own bias and with the
hooks' bias under Origin, and refuses with the measured difference, or when a
block is not called with the bias argument (a transformers version that
changed how the bias reaches attention).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..methods import Method, Origin, get_method
from ..methods.layouts import MAX_DENSE_LAYOUT
from ..models.families import ALIBI_FAMILIES
from ..models.parts import decoder_layers, model_type
from .guard import guard_ids, judge_guard
from .install import MARK, _check_inputs

__all__ = ["apply_alibi", "alibi_slopes", "AlibiApplied"]

log = logging.getLogger(__name__)


def alibi_slopes(model) -> torch.Tensor:
    """The model's ALiBi slopes ``[head]`` (float32), read from the bias its own
    code builds for two keys (``slope_h * (j - c)``: the difference of the two)."""
    base, kind = model.base_model, model_type(model)
    heads = int(model.config.num_attention_heads)
    if kind == "mpt":
        bias = base.build_mpt_alibi_tensor(heads, 2)                    # [head, 1, 2]
    elif kind == "bloom":
        bias = base.build_alibi_tensor(torch.ones(1, 2), heads, torch.float32)
    else:
        raise ValueError(f"model type {kind!r} is not an ALiBi family: allowed "
                         f"{sorted(ALIBI_FAMILIES)}")
    bias = bias.reshape(heads, -1).float()
    return (bias[:, 1] - bias[:, 0]).cpu()


@dataclass
class AlibiApplied:
    """The live state of one method on an ALiBi model: the method as given,
    ``train_length``, the model's slopes ``[head]``, the bias argument's name,
    and per forward ``resolved`` (the method resolved for the sequence),
    ``bias`` (``[head, q_pos, k_pos]``, the model's dtype) and ``calls``
    (blocks that received it: the guard's count)."""

    method: Method
    train_length: int
    slopes: torch.Tensor
    argument: str
    resolved: Method | None = None
    prefill_length: int | None = None
    bias: torch.Tensor | None = None
    calls: int = 0
    told_past_train_length: bool = False
    first: torch.nn.Module | None = None

    def on_block(self, module, args, kwargs):
        """Forward pre-hook on each decoder block: the method's bias in place
        of the model's (made at the first block of a forward)."""
        if self.argument not in kwargs:
            return None
        if module is self.first:
            self.bias = self.make_bias(args[0] if args else kwargs["hidden_states"],
                                       kwargs.get("layer_past"))
        self.calls += 1
        bias = self.bias
        if self.argument == "alibi":                                   # BLOOM: [b*h, q, k]
            batch = (args[0] if args else kwargs["hidden_states"]).shape[0]
            bias = bias.repeat(batch, 1, 1)
        return args, {**kwargs, self.argument: bias}

    def make_bias(self, hidden: torch.Tensor, cache) -> torch.Tensor:
        """``[head, q_pos, k_pos]``: ``-slope_h * position(i, j)`` for this
        forward's queries over every key, ``-inf`` where not visible."""
        i0 = int(cache.get_seq_length(0)) if cache is not None else 0
        kv = i0 + hidden.shape[1]
        if i0 == 0:
            self.prefill_length = kv
        if kv > MAX_DENSE_LAYOUT:
            raise ValueError(f"{kv} tokens on an ALiBi model: the dense bias path holds at most "
                             f"{MAX_DENSE_LAYOUT} (MAX_DENSE_LAYOUT)")
        m = self.method.resolve(kv, self.train_length, prefill_length=self.prefill_length or kv)
        self.resolved = m
        rows, cols = np.arange(i0, kv), np.arange(kv)
        _refuse_scales(m, rows, cols)
        rel, vis = m.relative(rows[:, None], cols[None, :])
        self._tell_past_train_length(kv)
        rel = torch.as_tensor(np.where(vis, rel, 0), dtype=torch.float64)
        bias = -self.slopes.double()[:, None, None] * rel
        bias = bias.masked_fill(~torch.as_tensor(vis), -torch.inf)
        return bias.to(device=hidden.device, dtype=hidden.dtype)

    def _tell_past_train_length(self, kv: int) -> None:
        if kv <= self.train_length or self.told_past_train_length:
            return
        self.told_past_train_length = True
        m = self.resolved
        log.info("%s past train_length=%d (%d tokens, ALiBi bias): %s; parameters %s", m.name,
                 self.train_length, kv, m.past_train_length or "its own layout", m.params())


def _refuse_scales(m: Method, rows, cols) -> None:
    """A method scaling queries or keys changes ``q . k`` by a factor, which an
    additive bias cannot express."""
    if not (np.all(m.query_scale(rows) == 1.0) and np.all(m.key_scale(cols) == 1.0)):
        raise ValueError(f"method {m.name!r} with parameters {m.params()} scales queries or "
                         "keys, which an ALiBi model's additive bias cannot express: allowed "
                         "its settings without query or key scaling")


def _checked(model, method, T: int, capture, piece_tokens, params) -> AlibiApplied:
    """The application's state, every refusal raised before anything changes."""
    kind = model_type(model)
    m = get_method(method, **params)
    if capture is not None or piece_tokens is not None:
        raise ValueError(f"model type {kind!r} (ALiBi) runs its own attention with the method's "
                         "bias: probes (capture) and piece_tokens need mesa_viz kernels; "
                         "allowed capture=None, piece_tokens=None")
    cfg = getattr(model.config, "attn_config", None)
    if cfg is not None and not getattr(cfg, "alibi", True):
        raise ValueError(f"model type {kind!r} with attn_config.alibi=False has no ALiBi bias "
                         "(no positions to re-place): not supported")
    if m.resolve(T, T).rope_rule() is not None:
        raise ValueError(f"method {m.name!r} changes RoPE frequencies; model type {kind!r} has "
                         "no RoPE (ALiBi): allowed methods that re-place positions (origin, "
                         "mesa, rerope, self-extend, dual-chunk, stair, streaming-llm, ...)")
    return AlibiApplied(m, T, alibi_slopes(model), ALIBI_FAMILIES[kind])


def _install(undo: ExitStack, model, state: AlibiApplied) -> None:
    setattr(model, MARK, state)
    undo.callback(delattr, model, MARK)
    handle = model.register_forward_pre_hook(_check_inputs, with_kwargs=True)
    undo.callback(handle.remove)
    layers = decoder_layers(model)
    state.first = layers[0]
    for block in layers:
        handle = block.register_forward_pre_hook(state.on_block, with_kwargs=True)
        undo.callback(handle.remove)


def _guard(model, state: AlibiApplied) -> None:
    """Refuse unless the model's own logits and the hooks' under Origin agree
    on :data:`.guard.GUARD_TOKENS` tokens, every block receiving the bias."""
    ids = guard_ids(model)
    probe = AlibiApplied(Origin(), state.train_length, state.slopes, state.argument,
                         told_past_train_length=True)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            own = model(ids, use_cache=False).logits.float()
            with ExitStack() as undo:
                _install(undo, model, probe)
                got = model(ids, use_cache=False).logits.float()
    finally:
        model.train(training)
    judge_guard(model, probe.calls, own, got)


@contextmanager
def apply_alibi(model, method: "str | Method", *, train_length: int, capture=None,
                piece_tokens: int | None = None, **params):
    """``apply()`` for an ALiBi model (``models.families.ALIBI_FAMILIES``),
    called by it once the model is checked free of another application:
    inside the block the model's own attention runs with the method's bias;
    restored on exit.  Yields the live :class:`AlibiApplied`."""
    state = _checked(model, method, train_length, capture, piece_tokens, params)
    _guard(model, state)
    with ExitStack() as undo:
        _install(undo, model, state)
        yield state
