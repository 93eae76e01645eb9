"""GPT-J's RoPE without its table: the rotary module mesa_viz puts in place of
``GPTJRotaryEmbedding`` while a method is applied.

``GPTJRotaryEmbedding`` holds a fixed table of ``n_positions`` rows of
``(sin, cos)`` of ``p * inv_freq`` (base 10000, interleaved pairs of the first
``rotary_dim`` channels), indexes it by position (an ``IndexError`` past
``n_positions``) and returns ``(sin, cos)``.  :class:`SinusoidRotary` computes
the same rows from ``inv_freq`` with the same float32 operations (so equal to
the table's rows bit for bit) for any position, and keeps ``inv_freq`` where
the runtime reads every family's frequencies.
"""

from __future__ import annotations

import torch

__all__ = ["SINUSOID_TABLE_FAMILIES", "SinusoidRotary"]

#: model_type -> the class name of its table rotary module that
#: :class:`SinusoidRotary` replaces under a method.
SINUSOID_TABLE_FAMILIES = {"gptj": "GPTJRotaryEmbedding"}


class SinusoidRotary(torch.nn.Module):
    """``forward(x, position_ids) -> (sin, cos)``, each ``[b, q_len, rot/2]``,
    as ``table``'s module returns them, for any position; ``sin_first``: the
    order of its output (the runtime's identity rotation follows it)."""

    sin_first = True

    def __init__(self, table: torch.nn.Module):
        super().__init__()
        dim = table.pos_embd_dim
        inv = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.int64) / dim))
        self.register_buffer("inv_freq", inv.to(table.embed_positions.device), persistent=False)
        self.attention_scaling = 1.0

    def forward(self, x: torch.Tensor, position_ids: torch.LongTensor):
        angles = position_ids.float()[..., None] * self.inv_freq
        return angles.sin().to(x.dtype), angles.cos().to(x.dtype)
