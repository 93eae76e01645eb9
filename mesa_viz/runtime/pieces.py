"""A prefill in pieces: a method whose layout allows it (``Method.prefill_pieces``)
runs a long prompt as several forwards of the decoder stack on one cache, so its
activations stay those of a prompt the model was trained on; the outputs the
caller asked for are joined after the last piece."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from .cache import presize

__all__ = ["Pieces", "input_of", "piece_kwargs", "run_pieces"]


@dataclass
class Pieces:
    """A prefill in pieces under way: the prompt length, what the caller asked
    for, the kept outputs of the pieces run so far, and whether the stack's
    own forward (the last piece) is running."""

    seq_len: int
    keep_cache: bool
    hidden_states: bool
    outputs: list = field(default_factory=list)
    last: bool = False

    def keep(self, out, rows_needed: bool) -> None:
        """Keep what the joined output will need of one piece's output."""
        self.outputs.append((out.last_hidden_state if rows_needed else None,
                             out.hidden_states if self.hidden_states else None))

    def joined(self, output, keep_rows: int | None):
        """The last piece's ``output`` with every position where asked for."""
        if self.outputs and self.outputs[0][0] is not None and (
                keep_rows is None or keep_rows > output.last_hidden_state.shape[1]):
            output.last_hidden_state = torch.cat(
                [h for h, _ in self.outputs] + [output.last_hidden_state], dim=1)
        if self.hidden_states:
            output.hidden_states = tuple(
                torch.cat(parts, dim=1)
                for parts in zip(*[hs for _, hs in self.outputs], output.hidden_states))
        if not self.keep_cache:
            output.cache = None
        return output


def input_of(args, kwargs):
    """``(name, tensor)`` of a decoder stack's input: ``input_ids`` or ``inputs_embeds``."""
    x = kwargs.get("input_ids", args[0] if args else None)
    return ("input_ids", x) if x is not None else ("inputs_embeds", kwargs.get("inputs_embeds"))


def piece_kwargs(kwargs: dict, key: str, a: int, b: int, cache) -> dict:
    """The decoder stack's arguments for tokens ``a..b-1`` on ``cache``."""
    x = kwargs[key]
    pos = kwargs.get("position_ids")
    pos = pos[:, a:b] if pos is not None else torch.arange(a, b, device=x.device)[None]
    mask = kwargs.get("attention_mask")
    out = {k: v for k, v in kwargs.items() if k != "past_key_values"}
    out.update({key: x[:, a:b], "position_ids": pos, "cache": cache, "use_cache": True,
                "attention_mask": mask[:, :b] if mask is not None and mask.dim() == 2 else None})
    return out


def run_pieces(state, module, kwargs: dict, key: str, pieces) -> dict:
    """Run every piece but the last through ``module`` (the decoder stack) on
    one cache (the caller's, or a new ``DynamicCache``); return the stack's
    arguments for the last piece.  ``state``: the live :class:`~.state.Applied`
    (its prompt length, kept rows and pieces under way are set here).  Refuses
    ``output_attentions`` (the kernels return no weights: use ``mesa_viz.trace``)."""
    cfg = module.config
    if kwargs.get("output_attentions", getattr(cfg, "output_attentions", False)):
        raise ValueError("output_attentions=True is not supported under mesa_viz methods "
                         f"({state.method.name}'s prefill runs in pieces): capture attention "
                         "rows with mesa_viz.trace(..., query_rows=...)")
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    use_cache = kwargs.get("use_cache")
    p = Pieces(seq_len=pieces[-1][1],
               keep_cache=cache is not None or (cfg.use_cache if use_cache is None else use_cache),
               hidden_states=bool(kwargs.get("output_hidden_states",
                                             getattr(cfg, "output_hidden_states", False))))
    cache = cache if cache is not None else DynamicCache(config=cfg)
    presize(cache, p.seq_len)
    state.prefill_length = p.seq_len
    rows_needed = state.keep_rows is None or state.keep_rows > pieces[-1][1] - pieces[-1][0]
    state.pieces = p
    try:
        for a, b in pieces[:-1]:
            p.keep(module(**piece_kwargs(kwargs, key, a, b, cache)), rows_needed)
    except BaseException:
        state.pieces = None
        raise
    p.last = True
    return piece_kwargs(kwargs, key, *pieces[-1], cache)
