"""The KV cache the runtime prefills into, and what a cache promises the decode memo.

:func:`presized_cache` holds a prompt's tokens in one buffer per layer
(:class:`PrefillLayer`), so a decode step appends one token in place instead of
copying every layer's keys and values.  :func:`cache_state` reads the one
contract a decode step relies on, :class:`~mesa_viz.kernels.CacheState`: a
cache keeps its keys when every layer is of a type in :data:`KEEPS_KEYS`.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, StaticLayer

from ..kernels import CacheState

__all__ = ["presized_cache", "presize", "PrefillLayer", "KEEPS_KEYS", "cache_state"]


class PrefillLayer(DynamicLayer):
    """A transformers ``DynamicLayer`` whose tokens live in one buffer of room
    for ``capacity`` tokens, allocated at the first update (``keys``/``values``
    are views of it); when full it moves to a buffer 1/8 larger (at least 256
    tokens more), so decode steps append in place.  Once its tensors were
    replaced (beam reordering) it updates as a ``DynamicLayer`` does; a
    ``crop`` keeps the buffer (the next tokens overwrite the cropped ones).
    Kept keys are never rewritten in place (:data:`KEEPS_KEYS`)."""

    def __init__(self, capacity: int, **kwargs):
        super().__init__(**kwargs)
        self.capacity, self.buf = int(capacity), None

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.buf = _room(key_states, value_states, self.capacity)
            self.keys, self.values = self.buf[0][:, :, :0], self.buf[1][:, :, :0]
        have, add = self.keys.shape[-2], key_states.shape[-2]
        buf = self.buf
        if buf is None or not _views_of(self.keys, buf[0]) \
                or self.keys.shape[:2] != key_states.shape[:2]:
            self.buf = None
            return super().update(key_states, value_states, *args, **kwargs)
        if have + add > buf[0].shape[2]:
            grown = _room(key_states, value_states, have + add + max(256, (have + add) // 8))
            grown[0][:, :, :have], grown[1][:, :, :have] = self.keys, self.values
            self.buf = buf = grown
        buf[0][:, :, have:have + add] = key_states
        buf[1][:, :, have:have + add] = value_states
        self.keys, self.values = buf[0][:, :, :have + add], buf[1][:, :, :have + add]
        return self.keys, self.values


#: Cache layer types that keep the keys they hold as written, never rewriting them in
#: place: a decode step may use keys it rotated before without checking them
#: (:class:`~mesa_viz.kernels.CacheState`).  Quantized, offloaded, sliding or unknown
#: layers are not here: the memo checks its entries against probes under them.
KEEPS_KEYS = (DynamicLayer, StaticLayer, PrefillLayer)


def cache_state(cache) -> CacheState:
    """What ``cache`` promises at the start of a forward: its length, and
    whether every layer's type is one of :data:`KEEPS_KEYS` (exact types: a
    subclass may rewrite keys)."""
    layers = getattr(cache, "layers", None)
    keeps = bool(layers) and all(type(x) in KEEPS_KEYS for x in layers)
    return CacheState(length=int(cache.get_seq_length()), keeps_keys=keeps)


def presized_cache(model, seq_len: int) -> DynamicCache:
    """A transformers ``DynamicCache`` for ``model`` whose full-attention
    layers hold ``seq_len`` tokens in one buffer each and append later tokens
    in place (:class:`PrefillLayer`): a decode step writes one token instead
    of copying every layer's keys and values (``DynamicLayer``'s ``cat``).
    Pass it as the prefill's cache (``mesa_viz.bench`` does, for every method)."""
    cache = DynamicCache(config=model.config)
    presize(cache, seq_len)
    return cache


def presize(cache, seq_len: int) -> None:
    """Give the empty ``DynamicLayer`` s of ``cache`` room for ``seq_len``
    tokens (:class:`PrefillLayer`), so the pieces of a prefill append in place
    instead of copying the whole layer at every piece."""
    layers = getattr(cache, "layers", [])
    for x, layer in enumerate(layers):
        if type(layer) is DynamicLayer and not layer.is_initialized:
            layers[x] = PrefillLayer(seq_len)


def _room(key_states, value_states, tokens: int):
    shape = key_states.shape[:2] + (tokens,)
    return (key_states.new_empty(shape + key_states.shape[3:]),
            value_states.new_empty(shape + value_states.shape[3:]))


def _views_of(x: torch.Tensor, buf: torch.Tensor) -> bool:
    """Whether ``x`` is still the leading view of ``buf`` (an empty view's
    ``data_ptr()`` is 0, so compare storages and offsets)."""
    return x.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr() \
        and x.storage_offset() == buf.storage_offset()
