"""Probes: run a model under a method and capture what it computed.

``trace()`` is the ``run_with_cache`` of this toolkit: one forward pass under
a method, returning a plain :class:`~mesa_viz.results.Trace` with attention
rows ``[layer, head, q_row, k_pos]`` exactly as the method computed them and
hidden-state values ``[hidden_layer, pos, dim]``.  Only the chosen rows are
scored densely, so a 16k-token trace never holds an ``[n, n]`` matrix.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from .application import Capture, apply, train_length_of
from .results import Trace

__all__ = ["trace", "decoder_layers"]

log = logging.getLogger(__name__)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder layers."""
    n = model.config.num_hidden_layers
    for mod in model.modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return mod
    raise ValueError(f"cannot find the {n} decoder layers of {type(model).__name__}")


def _pick(name, values, size, default):
    """Validate indices ``values`` against ``[0, size)``; ``None`` -> default."""
    values = list(default) if values is None else [int(v) for v in np.atleast_1d(values)]
    bad = [v for v in values if not 0 <= v < size]
    if bad:
        raise ValueError(f"{name} {bad} out of range: allowed 0..{size - 1}")
    return values


def _as_ids(input_ids) -> torch.Tensor:
    ids = torch.as_tensor(np.asarray(input_ids) if not torch.is_tensor(input_ids) else input_ids)
    ids = ids.reshape(1, -1) if ids.dim() == 1 else ids
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"input_ids must be one sequence [n] or [1, n], got shape {tuple(ids.shape)}")
    if ids.shape[1] == 0:
        raise ValueError("empty input: input_ids has 0 tokens (need >= 1)")
    return ids.long()


class _HiddenRecorder:
    """Forward hooks keeping hidden-state values at ``dims`` and norms (of
    every forward: a prefill in pieces passes its positions piece by piece)."""

    def __init__(self, model, hidden_layers, dims):
        self.hidden_layers, self.dims = hidden_layers, torch.as_tensor(dims)
        self.values, self.norms, self.handles = {}, {}, []
        modules = [model.get_input_embeddings(), *decoder_layers(model)]
        for l in hidden_layers:
            self.handles.append(modules[l].register_forward_hook(self._hook(l)))

    def _hook(self, layer):
        def hook(module, args, output):
            h = (output[0] if isinstance(output, tuple) else output)[0].detach()
            self.values.setdefault(layer, []).append(h[:, self.dims.to(h.device)].float().cpu())
            self.norms.setdefault(layer, []).append(h.float().norm(dim=-1).cpu())
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()

    def arrays(self, n):
        if not self.hidden_layers:
            return np.zeros((0, n, len(self.dims)), np.float32), np.zeros((0, n), np.float32)
        return (np.stack([torch.cat(self.values[l]).numpy() for l in self.hidden_layers]),
                np.stack([torch.cat(self.norms[l]).numpy() for l in self.hidden_layers]))


def trace(model, input_ids, method="origin", *, layers=None, heads=None, query_rows=None,
          dims=None, hidden_layers=None, tokenizer=None, train_length=None,
          check_memory=True, **params) -> Trace:
    """Run ``model`` on ``input_ids`` under ``method`` and capture it.

    ``layers``/``heads``: attention layers and heads to keep (default all);
    ``query_rows``: query positions whose attention rows are kept (default the
    last token); ``hidden_layers``: 0 = embeddings, ``l`` = output of decoder
    layer ``l - 1`` (default all); ``dims``: hidden dimensions kept (default
    all).  ``params`` are the method's parameters.  Returns a :class:`Trace`.
    """
    ids = _as_ids(input_ids)
    n, cfg = ids.shape[1], model.config
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    layers = _pick("layer", layers, L, range(L))
    heads = _pick("head", heads, H, range(H))
    rows = _pick("query row", query_rows, n, [n - 1])
    hidden_layers = _pick("hidden layer", hidden_layers, L + 1, range(L + 1))
    dims = _pick("dim", dims, cfg.hidden_size, range(cfg.hidden_size))
    if check_memory:
        _check_memory(model, method, n)
    T = int(train_length) if train_length is not None else train_length_of(model)
    cap = Capture(layers=layers, heads=heads, rows=rows)
    rec = _HiddenRecorder(model, hidden_layers, dims)
    t0 = time.perf_counter()
    try:
        with apply(model, method, train_length=T, capture=cap, **params) as state, \
                torch.no_grad():
            model(ids.to(model.device), use_cache=False, logits_to_keep=1)
    finally:
        rec.remove()
    hidden, norms = rec.arrays(n)
    attention = np.stack([cap.attention[l].numpy() for l in layers]) if layers else \
        np.zeros((0, len(heads), len(rows), n), np.float32)
    m = state.resolved
    return Trace(
        method=m.name, params=m.params(), train_length=T,
        input_ids=ids[0].cpu().numpy(), tokens=_tokens(tokenizer, ids[0]),
        layers=layers, heads=heads, query_rows=rows, attention=attention,
        hidden_layers=hidden_layers, dims=dims, hidden=hidden, norms=norms,
        chunk_plan=[list(c) for c in m.plan().chunks] if m.chunked else None,
        meta={"seconds": time.perf_counter() - t0, "model": getattr(cfg, "_name_or_path", ""),
              "dtype": str(model.dtype)})


def _tokens(tokenizer, ids):
    if tokenizer is None:
        return [str(int(i)) for i in ids]
    return tokenizer.convert_ids_to_tokens(ids.tolist())


def _check_memory(model, method, n):
    """Refuse a length the machine cannot hold (raises ``memory.LengthTooLong``)."""
    from .memory import check_fits
    check_fits(model, getattr(method, "name", method), n)
