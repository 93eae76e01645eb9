"""What a probe asks the attention function to record (:class:`Capture`), and the
signal that ends a forward once it has it (:class:`CaptureDone`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..kernels import Rope
from ..methods import Method

__all__ = ["Capture", "CaptureDone"]


class CaptureDone(Exception):
    """Raised inside a forward by a :class:`Capture` with ``stop=True`` once it
    holds what it asked for, so no layer past the last captured one runs; the
    probe that asked catches it (``apply`` restores the model on the way out)."""


@dataclass
class Capture:
    """What a probe asks the attention function to record.

    ``rows``: absolute query positions; ``layers``/``heads``: which to keep.
    ``logits``: keep the rows' pre-softmax logits too.  ``qk``: keep the
    un-rotated queries and keys of every position.  ``stop``: end the forward
    (:class:`CaptureDone`) once the last captured layer has seen the last
    prompt position.

    Filled: ``attention[layer] -> [head, row, k_pos]`` probabilities, rows in
    the order of ``rows`` (those seen so far; a prefill in pieces sees them
    piece by piece), ``k_pos`` up to the longest key range seen (zeros past a
    row's own keys);
    ``scores[layer] -> [head, row, k_pos]`` logits (``-inf`` where the layout
    hides the key or past a row's own keys); ``queries[layer]``, ``keys[layer] -> [head, pos,
    head_dim]`` (float32; the keys of each head's key-value head); ``rope``,
    ``scale`` and ``method`` (resolved) of the forward that filled them.
    """

    layers: list[int]
    heads: list[int]
    rows: list[int]
    logits: bool = False
    qk: bool = False
    stop: bool = False
    attention: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    queries: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)
    rope: Rope | None = None
    scale: float | None = None
    method: Method | None = None
    by_row: dict = field(default_factory=dict)

    def record_qk(self, layer: int, query, key, i0: int, rope: Rope, scale: float,
                  method: Method) -> None:
        """Keep the captured heads' queries ``i0..`` (after those of earlier
        calls) and keys ``0..kv_len-1``."""
        heads = torch.as_tensor(self.heads, device=query.device)
        rep = query.shape[1] // key.shape[1]
        q = query[0, heads].detach().float().cpu()
        prev = self.queries.get(layer)
        self.queries[layer] = q if prev is None or i0 == 0 else torch.cat((prev[:, :i0], q), 1)
        self.keys[layer] = key[0, heads // rep].detach().float().cpu()
        self.rope, self.scale, self.method = rope, scale, method

    def add(self, layer: int, rows: list[int], probs: torch.Tensor,
            logits: torch.Tensor | None = None) -> None:
        """Record ``probs`` (and ``logits``) ``[head, len(rows), k_pos]`` of
        ``rows`` at ``layer``, in the order of ``self.rows``."""
        self._put(self.attention, "attention", layer, rows, probs, 0.0)
        if logits is not None:
            self._put(self.scores, "scores", layer, rows, logits, float("-inf"))

    def _put(self, store: dict, kind: str, layer: int, rows, values, pad: float) -> None:
        got = self.by_row.setdefault((kind, layer), {})
        got.update({r: values[:, x] for x, r in enumerate(rows)})
        width = max(v.shape[-1] for v in got.values())
        store[layer] = torch.stack(
            [torch.nn.functional.pad(got[r], (0, width - got[r].shape[-1]), value=pad)
             for r in self.rows if r in got], dim=1)
