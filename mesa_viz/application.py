"""Apply a method to a transformers model: the only code touching its internals.

``with apply(model, "mesa"):`` installs, for the duration of the block only:

* a forward hook on the model's rotary embedding that records the positions
  and hands the attention modules the identity rotation, so queries and keys
  reach attention (and the KV cache) *before* RoPE;
* an attention function registered under a name unique to this application
  through transformers' ``AttentionInterface`` (and a mask function through
  ``AttentionMaskInterface``: the kernels build their own masks), which rotates
  q and k at the method's positions (``mesa_viz.kernels``).

Dynamic-NTK swaps in a rotary embedding built by transformers from
``rope_parameters = {"rope_type": "dynamic", ...}``.  On exit, also after an
exception, every hook, registration and attribute is put back.
"""

from __future__ import annotations

import copy
import logging
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from . import kernels
from .compat import check_transformers
from .methods import DynamicNTK, Method, Origin, get_method

__all__ = ["apply", "Applied", "Capture", "train_length_of", "find_rotary"]

log = logging.getLogger(__name__)

SUPPORTED_BACKENDS = ("sdpa", "eager")


@dataclass
class Capture:
    """What a probe asks the attention function to record.

    ``rows``: absolute query positions; ``layers``/``heads``: which to keep.
    Filled: ``attention[layer] -> [head, row, k_pos]`` probabilities.
    """

    layers: list[int]
    heads: list[int]
    rows: list[int]
    attention: dict = field(default_factory=dict)


@dataclass
class Applied:
    """The live state of one application (one model, one method)."""

    method: Method
    train_length: int
    rotary: torch.nn.Module
    backend: str
    capture: Capture | None = None
    resolved: Method | None = None
    prefill_length: int | None = None
    positions: torch.Tensor | None = None
    current_rope: kernels.Rope | None = None

    # -- hooks ------------------------------------------------------------------
    def on_rotary(self, module, args, kwargs, output):
        """Record the positions; return the identity rotation."""
        pos = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
        if pos.shape[0] > 1 and not bool((pos == pos[:1]).all()):
            raise ValueError("mesa_viz methods need the same positions in every batch "
                             "row (no left padding); pad-free equal-length batches only")
        pos = pos[0]
        i0, kv_len = int(pos[0]), int(pos[-1]) + 1
        if i0 == 0:
            self.prefill_length = kv_len
        self.positions = pos
        self.current_rope = self.rope()          # one cos/sin cache per forward pass
        self.resolved = self.method.resolve(kv_len, self.train_length,
                                            prefill_length=self.prefill_length or kv_len)
        cos, sin = output
        return torch.ones_like(cos), torch.zeros_like(sin)

    def rope(self) -> kernels.Rope:
        return kernels.Rope(self.rotary.inv_freq, float(getattr(self.rotary, "attention_scaling", 1.0)))

    def attention(self, module, query, key, value, attention_mask, scaling=None,
                  dropout=0.0, **kwargs):
        """AttentionInterface function: ``query [b, h, q_len, d]`` and cached
        ``key, value [b, kv_h, kv_len, d]``, all un-rotated."""
        if kwargs.get("sliding_window"):
            raise ValueError(f"sliding-window attention (window {kwargs['sliding_window']}) "
                             "is not supported by mesa_viz methods")
        i0 = int(self.positions[0])
        if i0 + query.shape[2] != key.shape[2]:
            raise ValueError(f"query positions {i0}..{i0 + query.shape[2] - 1} do not end at "
                             f"the cache length {key.shape[2]}: custom position_ids are "
                             "not supported under mesa_viz methods")
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        rope = self.current_rope
        out = kernels.attend(self.resolved, query, key, value, i0, rope, scale, self.backend)
        if self.capture is not None and module.layer_idx in self.capture.layers:
            out = self._capture(module.layer_idx, query, key, value, i0, rope, scale, out)
        return out.transpose(1, 2).contiguous(), None

    def _capture(self, layer, query, key, value, i0, rope, scale, out):
        """Exact probabilities of the captured rows; their outputs are recomputed
        from the stored probabilities so what is shown is what the model used."""
        c = self.capture
        rows = [r for r in c.rows if i0 <= r < i0 + query.shape[2]]
        if not rows:
            return out
        local = torch.as_tensor([r - i0 for r in rows], device=query.device)
        probs = kernels.dense_rows(self.resolved, query[:, :, local], key, rows, rope, scale)
        rep = query.shape[1] // key.shape[1]
        v = value.repeat_interleave(rep, 1).to(torch.float32)
        out = out.clone()
        out[:, :, local] = torch.matmul(probs, v).to(out.dtype)
        got = probs[0][c.heads].detach().cpu()
        prev = c.attention.get(layer)
        c.attention[layer] = got if prev is None else torch.cat((prev, got), dim=1)
        return out


def train_length_of(model) -> int:
    """The model's training length: ``max_position_embeddings`` (or the
    ``original_max_position_embeddings`` of a scaled RoPE)."""
    cfg = model.config
    rp = getattr(cfg, "rope_parameters", None) or {}
    T = rp.get("original_max_position_embeddings") or getattr(cfg, "max_position_embeddings", None)
    if not T:
        raise ValueError(f"{type(model).__name__} has no max_position_embeddings: "
                         "pass train_length=")
    return int(T)


def find_rotary(model) -> tuple[torch.nn.Module, str]:
    """The model's rotary-embedding module and its attribute path."""
    for name, mod in model.named_modules():
        if name.endswith("rotary_emb") and hasattr(mod, "inv_freq"):
            return mod, name
    raise ValueError(
        f"{type(model).__name__} ({getattr(model.config, 'model_type', '?')}) has no rotary "
        "position embedding (RoPE): RoPE methods (mesa, rerope, leaky-rerope, dynamic-ntk, "
        "streaming-llm, lm-infinite, stair) cannot be applied")


def _parent(model, path):
    *head, leaf = path.split(".")
    mod = model
    for part in head:
        mod = getattr(mod, part)
    return mod, leaf


def _dynamic_rotary(rotary, m: DynamicNTK, T: int):
    """A rotary embedding of the same class built by transformers for
    ``rope_type='dynamic'`` (``factor``) with training length ``T``."""
    cfg = copy.copy(rotary.config)
    rp = dict(cfg.rope_parameters)
    rp.update(rope_type="dynamic", factor=float(m.factor))
    cfg.rope_parameters = rp
    cfg.max_position_embeddings = T
    new = type(rotary)(config=cfg)
    return new.to(rotary.inv_freq.device)


@contextmanager
def apply(model, method: "str | Method" = "origin", *, train_length: int | None = None,
          capture: Capture | None = None, **params):
    """Run ``model`` under ``method`` inside the block; restore it on exit.

    ``params`` are the method's parameters (see ``mesa_viz.methods``);
    defaults come from the model (``train_length`` from its config).  Yields
    the live :class:`Applied` state (``.resolved`` holds the parameters of the
    last forward).  Origin and Dynamic-NTK run the model's own attention
    unless a probe captures it.
    """
    check_transformers()
    m = get_method(method, **params)
    rotary, path = find_rotary(model)
    T = int(train_length) if train_length is not None else train_length_of(model)
    m.resolve(T, T)                                      # validate early
    backend = model.config._attn_implementation
    if backend not in SUPPORTED_BACKENDS and (capture or not isinstance(m, (Origin, DynamicNTK))):
        raise ValueError(f"attention implementation {backend!r} is not supported for "
                         f"method {m.name!r}: allowed {SUPPORTED_BACKENDS} (load the model "
                         "with attn_implementation='sdpa')")
    state = Applied(method=m, train_length=T, rotary=rotary, backend=backend, capture=capture)
    parent, leaf = _parent(model, path)
    name = f"mesa_viz_{uuid.uuid4().hex[:12]}"
    handles, swapped, registered = [], False, False
    try:
        handles.append(model.register_forward_pre_hook(_check_inputs, with_kwargs=True))
        if isinstance(m, DynamicNTK):
            state.rotary = _dynamic_rotary(rotary, m, T)
            setattr(parent, leaf, state.rotary)
            swapped = True
        if capture is not None or not isinstance(m, (Origin, DynamicNTK)):
            _register(name, state)
            registered = True
            handles.append(state.rotary.register_forward_hook(state.on_rotary, with_kwargs=True))
            model.set_attn_implementation(name)
        log.debug("applied %s to %s", m.name, type(model).__name__)
        yield state
    finally:
        for h in handles:
            h.remove()
        if registered:
            model.set_attn_implementation(backend)
            _unregister(name)
        if swapped:
            setattr(parent, leaf, rotary)


def _check_inputs(module, args, kwargs):
    """Refuse inputs the kernels would silently mis-handle."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is not None and ids.shape[-1] == 0:
        raise ValueError("empty input: input_ids has 0 tokens (need >= 1)")
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2 and not bool(mask.all()):
        raise ValueError("padded batches (attention_mask with zeros) are not supported "
                         "by mesa_viz methods: run equal-length sequences")


def _no_mask(*args, **kwargs):
    """Mask function for the custom attention: the kernels build their own."""
    return None


def _register(name, state):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    AttentionInterface.register(name, state.attention)
    AttentionMaskInterface.register(name, _no_mask)


def _unregister(name):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    AttentionInterface._global_mapping.pop(name, None)
    AttentionMaskInterface._global_mapping.pop(name, None)
