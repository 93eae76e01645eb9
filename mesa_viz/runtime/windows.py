"""Layers that keep the model's own sliding-window attention under a method.

A layer whose window ``W`` is at most the training length never sees a
distance it was not trained on (docs/model-families.md): it runs the model's
own windowed attention at true positions, rotated with its layer type's own
RoPE (:func:`mesa_viz.kernels.own_window`), whatever the method.  A probe's
captured rows of such a layer are that attention's probabilities.
"""

from __future__ import annotations

import torch

from .. import kernels
from ..models.families import rope_frequencies
from .capture import CaptureDone

__all__ = ["own_window_attention"]


def own_window_attention(state, module, query, key, value, scale: float, window: int,
                         backend: str):
    """The attention output ``[b, q_len, h, d_v]`` of ``module``'s layer as the
    model computes it: ``query [b, h, q_len, d]`` at ``state.i0..``, ``key,
    value [b, kv_h, kv_len, d]`` ending at the last query (a sliding-window
    cache layer may hold only the last ``W - 1``), all un-rotated.
    ``state``: the live :class:`~.state.Applied`."""
    rope = own_rope(state, module)
    out = kernels.own_window(query, key, value, state.i0, rope, scale, window, backend)
    c, layer = state.settings.capture, module.layer_idx
    if c is not None and layer in c.layers:
        _capture(state, layer, query, key, rope, scale, window, backend)
        if c.stop and layer == max(c.layers) and state.i0 + query.shape[2] >= state.prefill_length:
            raise CaptureDone(f"captured layers {c.layers}")
    return out.transpose(1, 2).contiguous(), None


def own_rope(state, module) -> kernels.Rope:
    """The layer's own RoPE: its layer type's frequencies in the model's own
    rotary module (the identity for a layer type that applies none)."""
    layer_type = state.layer_type(module)
    inv_freq, scaling = rope_frequencies(state.settings.own_rotary or state.settings.rotary,
                                         layer_type)
    if layer_type in state.settings.nope_types:
        return kernels.Rope(torch.zeros_like(inv_freq), 1.0)
    return kernels.Rope(inv_freq, scaling)


def _capture(state, layer, query, key, rope, scale, window, backend) -> None:
    """A probe's rows of a windowed layer: the probabilities (and logits) of
    the model's own windowed attention, ``[head, row, k_pos]`` over keys
    ``0..`` (``-inf`` logits and 0 outside the window)."""
    c = state.settings.capture
    if c.qk:
        raise ValueError(f"capturing queries and keys of layer {layer}: it runs the model's own "
                         f"sliding-window attention (window {window} <= train_length="
                         f"{state.train_length}), not the method's positions that attention "
                         "maps pool; capture a full-attention layer")
    i0, lq, dev = state.i0, query.shape[2], query.device
    rows = [r for r in c.rows if i0 <= r < i0 + lq]
    if not rows:
        return
    end = i0 + lq
    i = torch.as_tensor(rows, device=dev)
    j = torch.arange(end - key.shape[2], end, device=dev)
    q = kernels.rotate(query[:, :, i - i0].to(torch.float32), rope, i)
    k = kernels.rotate(key.to(torch.float32), rope, j)
    k = k.repeat_interleave(query.shape[1] // key.shape[1], 1)
    logits = kernels.capped(torch.matmul(q, k.transpose(-1, -2)) * scale, backend)
    seen = (j[None, :] <= i[:, None]) & (i[:, None] - j[None, :] < window)
    logits = torch.nn.functional.pad(logits.masked_fill(~seen, float("-inf")),
                                     (end - key.shape[2], 0), value=float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    c.add(layer, rows, probs[0][c.heads].detach().cpu(),
          logits[0][c.heads].detach().cpu() if c.logits else None)
