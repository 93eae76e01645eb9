"""Probes: run a model under a method and capture what it computed.

``trace()`` is the ``run_with_cache`` of this toolkit: one forward pass under
a method, returning a plain :class:`~.trace.Trace` with attention
rows ``[layer, head, q_row, k_pos]`` exactly as the method computed them and
hidden-state values ``[hidden_layer, pos, dim]``.  Only the chosen rows are
scored densely, so a 16k-token trace never holds an ``[n, n]`` matrix.

``capture_qk()`` keeps one layer's un-rotated queries and keys from one
forward stopped after it (the whole attention map is pooled from them,
``mesa_viz.analyses.attention_map``).  ``capture_rows()`` runs one forward (or
a greedy generation) capturing a few rows' probabilities and logits at every
layer and head (``mesa_viz.explain`` uses it).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..models.parts import decoder_layers, decoder_stack, module_parent, train_length_of
from .apply import apply
from .capture import Capture, CaptureDone
from .memory import check_fits
from .trace import Trace

__all__ = ["trace", "saved_trace", "capture_qk", "capture_rows", "Captured", "CapturedQK",
           "first_layers", "as_ids", "pick"]

log = logging.getLogger(__name__)


def pick(name, values, size, default):
    """Validate indices ``values`` against ``[0, size)``; ``None`` -> default."""
    values = list(default) if values is None else [int(v) for v in np.atleast_1d(values)]
    bad = [v for v in values if not 0 <= v < size]
    if bad:
        raise ValueError(f"{name} {bad} out of range: allowed 0..{size - 1}")
    return values


def as_ids(input_ids) -> torch.Tensor:
    ids = torch.as_tensor(np.asarray(input_ids) if not torch.is_tensor(input_ids) else input_ids)
    ids = ids.reshape(1, -1) if ids.dim() == 1 else ids
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(
            f"input_ids must be one sequence [n] or [1, n], got shape {tuple(ids.shape)}")
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


@contextmanager
def first_layers(model, count: int):
    """Inside the block the model runs only its first ``count`` decoder layers
    (the final norm and head then read layer ``count``'s output); restored on
    exit.  Enter it inside :func:`apply` (whose guard runs every layer)."""
    n = int(model.config.num_hidden_layers)
    if not 0 <= count <= n:
        raise ValueError(f"count {count}: allowed 0..{n} decoder layers")
    if count == n:
        yield
        return
    path, stack = decoder_stack(model)
    parent, leaf = module_parent(model, path)
    setattr(parent, leaf, stack[:count])
    try:
        yield
    finally:
        setattr(parent, leaf, stack)


def trace(model, input_ids, method="origin", *, layers=None, heads=None, query_rows=None,
          dims=None, hidden_layers=None, tokenizer=None, train_length=None,
          check_memory=True, **params) -> Trace:
    """Run ``model`` on ``input_ids`` under ``method`` and capture it.

    ``layers``/``heads``: attention layers and heads to keep (default all);
    ``query_rows``: query positions whose attention rows are kept (default the
    last token); ``hidden_layers``: 0 = embeddings, ``l`` = output of decoder
    layer ``l - 1`` (default all); ``dims``: hidden dimensions kept (default
    all).  ``params`` are the method's parameters.  Returns a :class:`Trace`.
    Only the decoder layers up to the deepest one asked for run (hidden
    states up to layer 8 of 30: 8 layers): those above cannot change them.
    """
    ids = as_ids(input_ids)
    n, cfg = ids.shape[1], model.config
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    layers = pick("layer", layers, L, range(L))
    heads = pick("head", heads, H, range(H))
    rows = pick("query row", query_rows, n, [n - 1])
    hidden_layers = pick("hidden layer", hidden_layers, L + 1, range(L + 1))
    dims = pick("dim", dims, cfg.hidden_size, range(cfg.hidden_size))
    if check_memory:
        _check_memory(model, method, n)
    T = int(train_length) if train_length is not None else train_length_of(model)
    cap = Capture(layers=layers, heads=heads, rows=rows)
    rec = _HiddenRecorder(model, hidden_layers, dims)
    needed = max(max(layers, default=-1) + 1, max(hidden_layers, default=0))
    t0 = time.perf_counter()
    try:
        with apply(model, method, train_length=T, capture=cap, **params) as state, \
                first_layers(model, needed), torch.no_grad():
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
        chunk_plan=_chunk_plan(m),
        meta={"seconds": time.perf_counter() - t0, **_meta(model)})


def _tokens(tokenizer, ids):
    if tokenizer is None:
        return [str(int(i)) for i in ids]
    return tokenizer.convert_ids_to_tokens(ids.tolist())


def _check_memory(model, method, n):
    """Refuse a length the machine cannot hold (raises ``memory.LengthTooLong``)."""
    check_fits(model, getattr(method, "name", method), n)


# -- one layer's queries and keys, and a few rows of every head -------------------------

@dataclass
class CapturedQK:
    """What :func:`capture_qk` kept of one layer under one method: the
    ``method`` resolved, ``train_length``, ``layer``, ``heads``, un-rotated
    ``q, k [head, pos, head_dim]`` (float32; each query head's key-value head),
    the forward's ``rope`` and softmax ``scale``, ``seconds`` and ``meta``."""

    method: object
    train_length: int
    layer: int
    heads: list
    q: torch.Tensor
    k: torch.Tensor
    rope: object
    scale: float
    seconds: float
    meta: dict


def capture_qk(model, input_ids, method="origin", *, layer: int, heads=None,
               train_length=None, check_memory: bool = True, **params):
    """The un-rotated queries and keys of ``heads`` (default all) of ``layer``
    under ``method``, from one forward stopped after that layer: a
    :class:`CapturedQK` (``q, k [head, pos, head_dim]``)."""
    ids = as_ids(input_ids)
    n, cfg = ids.shape[1], model.config
    (layer,) = pick("layer", layer, cfg.num_hidden_layers, ())
    heads = pick("head", heads, cfg.num_attention_heads, range(cfg.num_attention_heads))
    if check_memory:
        _check_memory(model, method, n)
    T = int(train_length) if train_length is not None else train_length_of(model)
    cap = Capture(layers=[layer], heads=heads, rows=[], qk=True, stop=True)
    t0 = time.perf_counter()
    _forward(model, ids, method, T, cap, params)
    return CapturedQK(method=cap.method, train_length=T, layer=layer, heads=heads,
                      q=cap.queries[layer], k=cap.keys[layer], rope=cap.rope, scale=cap.scale,
                      seconds=time.perf_counter() - t0, meta=_meta(model))


def _forward(model, ids, method, T, capture, params) -> None:
    """One forward under ``method`` with ``capture`` (ended early by it)."""
    try:
        with apply(model, method, train_length=T, capture=capture, **params), torch.no_grad():
            model(ids.to(model.device), use_cache=False, logits_to_keep=1)
    except CaptureDone:
        pass


@dataclass
class Captured:
    """What :func:`capture_rows` recorded under one method: ``attention`` and
    ``logits [layer, head, q_row, k_pos]`` (logits ``-inf`` where the layout
    hides a key), the ``method`` resolved for the prefill, the generated token
    ids (none without generation) and the seconds it took."""

    method: object
    attention: np.ndarray
    logits: np.ndarray
    generated: list
    seconds: float


def capture_rows(model, input_ids, method="origin", *, rows, train_length=None,
                 max_new_tokens: int = 0, pad_token_id=None, check_memory: bool = True,
                 **params) -> Captured:
    """Probabilities and logits of query ``rows`` at every layer and head under
    ``method``, from one forward; with ``max_new_tokens``, the greedy
    generation that forward starts (the rows come from its prefill)."""
    ids = as_ids(input_ids)
    n, cfg = ids.shape[1], model.config
    rows = pick("query row", rows, n, ())
    if check_memory:
        _check_memory(model, method, n)
    T = int(train_length) if train_length is not None else train_length_of(model)
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    cap = Capture(layers=list(range(L)), heads=list(range(H)), rows=rows, logits=True)
    t0 = time.perf_counter()
    with apply(model, method, train_length=T, capture=cap, **params) as state, \
            torch.inference_mode():
        ids = ids.to(model.device)
        if max_new_tokens:
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad_token_id)
            generated = out[0, n:].tolist()
        else:
            model(ids, use_cache=False, logits_to_keep=1)
            generated = []
    stack = lambda store: np.stack([store[l].float().numpy() for l in range(L)])  # noqa: E731
    prefill = state.method.resolve(n, state.train_length, prefill_length=n)
    return Captured(method=prefill, attention=stack(cap.attention),
                    logits=stack(cap.scores), generated=generated,
                    seconds=time.perf_counter() - t0)


def _chunk_plan(m):
    return [list(c) for c in m.plan().chunks] if m.chunked else None


def saved_trace(path, model, ids, *, train_length: int | None = None, params: dict | None = None,
                **fields) -> Trace | None:
    """The trace saved at ``path`` (:meth:`Trace.save`) if it was run by the same
    model (name and dtype, :func:`_meta`) on ``ids``, with ``train_length`` and
    ``params`` (where given) and every field of ``fields`` (e.g. ``layers``,
    ``hidden_layers``, ``dims``) equal; else None (absent or stale: run it again)."""
    if path is None or not Path(f"{path}.json").exists():
        return None
    tr = Trace.load(path)
    meta = _meta(model)
    same = (all(tr.meta.get(k) == v for k, v in meta.items())
            and np.array_equal(tr.input_ids, np.asarray(ids).reshape(-1))
            and (train_length is None or tr.train_length == train_length)
            and all(tr.params.get(k) == v for k, v in (params or {}).items())
            and all(list(getattr(tr, k)) == list(v) for k, v in fields.items()))
    return tr if same else None


def _meta(model, **extra) -> dict:
    return {"model": getattr(model.config, "_name_or_path", ""), "dtype": str(model.dtype),
            **extra}
