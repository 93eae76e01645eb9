"""The live state of one application: what ``apply()`` fixes for the whole block
(:class:`Settings`) apart from what each forward replaces, and the hooks that
run the method (the forward sequence is written out in ``docs/architecture.md``).

Per forward, in order:

1. :meth:`Applied.on_model` (model pre-hook): the final rows the caller keeps;
2. :meth:`Applied.on_decoder` (decoder-stack pre-hook): the cache's decode memo
   and its :class:`~mesa_viz.kernels.CacheState`; a prefill the method splits
   runs every piece but the last here (:func:`.pieces.run_pieces`);
3. :meth:`Applied.on_rotary` (rotary forward hook): the positions, the method
   resolved for the sequence, this forward's RoPE tables, and the identity
   rotation, so queries and keys reach attention (and the cache) before RoPE;
4. :meth:`Applied.attention` (the registered ``AttentionInterface`` function),
   once per layer: the kernels (``mesa_viz.kernels.attend``), and a probe's
   capture;
5. :meth:`Applied.after_decoder` (decoder-stack hook): the pieces' outputs joined.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field

import torch

from .. import kernels
from ..methods import Method, default_piece_tokens
from ..models.families import METHOD_LAYER_TYPE, channel_order, rope_frequencies
from .cache import cache_state
from .capture import Capture, CaptureDone
from .pieces import Pieces, input_of, run_pieces
from .windows import own_window_attention

__all__ = ["Settings", "Applied", "SUPPORTED_BACKENDS"]

log = logging.getLogger(__name__)

#: Attention implementations the kernels serve (the model is loaded with one).
SUPPORTED_BACKENDS = ("sdpa", "eager", "flash_attention_2")
#: Attention keyword arguments the kernels may ignore (None or harmless values).
_IGNORED_KWARGS = ("position_ids", "cache_position", "output_attentions", "is_causal",
                   "use_cache", "past_key_values", "layer_idx", "output_hidden_states")


@dataclass(frozen=True)
class Settings:
    """What ``apply()`` fixes for its whole block.

    ``method``: as given (resolved per forward); ``train_length``: ``T``;
    ``rotary``: the rotary module the hooks read (the model's, or a method's
    frequency rule, :class:`.rotary.RuleRotary`); ``backend``: the model's
    attention implementation; ``kernel``: whether attention runs the method's
    kernel (False: the model's own attention); ``capture``: a probe's request;
    ``channels``: the family's channel order (``models.families.CHANNELS``);
    ``model_rope``: the model's own ``{"rope_theta", "rotary_dim",
    "rope_type"}``; ``piece_tokens``: the most tokens one forward of a prefill
    in pieces holds (None: the default by device); ``own_rotary``: the
    model's own rotary module (the layers that run their own sliding-window
    attention rotate with it); ``layer_types``: the model's type of each
    layer (``config.layer_types``) or None; ``nope_types``: the layer types
    that apply no RoPE (``models.families.NOPE_LAYER_TYPES``).
    """

    method: Method
    train_length: int
    rotary: torch.nn.Module
    backend: str
    kernel: bool = True
    capture: Capture | None = None
    channels: str | None = None
    model_rope: dict | None = None
    piece_tokens: int | None = None
    own_rotary: torch.nn.Module | None = None
    layer_types: tuple | None = None
    nope_types: tuple = ()


@dataclass
class Applied:
    """The live state of one application (one model, one method).

    ``settings`` never change inside the block.  Each forward replaces
    ``positions``, ``i0`` (its first position), ``resolved`` (the method
    resolved for the sequence), ``tables`` (its cos/sin tables, shared by its
    layers), ``memo`` (the decode memo of its cache) and ``keep_rows`` (its
    caller's ``logits_to_keep``); a prefill sets ``prefill_length`` (kept for
    the decode steps after it) and, in pieces, ``pieces`` (the prefill under
    way).  ``memos`` keeps one decode memo per cache object; ``calls`` counts
    attention calls (the guard's check); ``orders`` caches channel orders.
    """

    settings: Settings
    told_past_train_length: bool = False
    # -- replaced by each forward (or sequence) --------------------------------------
    prefill_length: int | None = None
    positions: torch.Tensor | None = None
    i0: int = 0
    resolved: Method | None = None
    tables: kernels.RopeTables | None = None
    memo: kernels.DecodeMemo | None = None
    layer_tables: dict = field(default_factory=dict)
    keep_rows: int | None = None
    pieces: Pieces | None = None
    # -- bookkeeping -------------------------------------------------------------------
    memos: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    calls: int = 0
    orders: dict = field(default_factory=dict)

    @property
    def method(self) -> Method:
        """The method as given to ``apply()`` (``resolved``: per forward)."""
        return self.settings.method

    @property
    def train_length(self) -> int:
        return self.settings.train_length

    @property
    def rotary(self) -> torch.nn.Module:
        return self.settings.rotary

    @property
    def capture(self) -> Capture | None:
        """The probe's request and what it recorded (``Capture``), or None."""
        return self.settings.capture

    # -- hooks ------------------------------------------------------------------
    def on_rotary(self, module, args, kwargs, output):
        """Record the positions and resolve the method; under a kernel, return
        the identity rotation (and make this forward's RoPE tables)."""
        pos = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
        if pos.shape[0] > 1 and not bool((pos == pos[:1]).all()):
            raise ValueError("mesa_viz methods need the same positions in every batch "
                             "row (no left padding); pad-free equal-length batches only")
        pos = pos[0]
        i0, kv_len = _span(pos)
        if i0 == 0 and self.pieces is None:
            self.prefill_length = kv_len
        self.positions, self.i0 = pos, i0
        self.resolved = self.resolve_for(pos, (i0, kv_len))
        self._tell_past_train_length(self.whole_length(kv_len))
        if not self.settings.kernel:
            return None
        if self.pieces is not None:
            _frequencies_of_whole_prompt(module, args, kwargs, self.pieces.seq_len)
        self.tables = kernels.RopeTables(self.rope(), self.resolved, self.memo)  # this forward's
        self.layer_tables = {}
        if getattr(module, "sin_first", False):             # (sin, cos): models.sinusoid
            return torch.zeros_like(output[0]), torch.ones_like(output[1])
        cos, sin = output
        return torch.ones_like(cos), torch.zeros_like(sin)

    def whole_length(self, kv_len: int) -> int:
        """The keys this forward stands for: ``kv_len``, or during a prefill in
        pieces the whole prompt's length."""
        return kv_len if self.pieces is None else self.pieces.seq_len

    def resolve_for(self, pos: torch.Tensor, span: tuple[int, int] | None = None) -> Method:
        """The method resolved for a forward at positions ``pos [q_len]`` (a
        forward from position 0 is a prefill: its length is the prompt's; a
        piece of a prefill in pieces resolves for the whole prompt);
        ``span``: ``(first position, last + 1)`` where already read."""
        i0, kv_len = span or _span(pos)
        seq = self.whole_length(kv_len)
        prefill = seq if i0 == 0 or self.pieces is not None else (self.prefill_length or seq)
        return self.method.resolve(seq, self.train_length, prefill_length=prefill)

    def _tell_past_train_length(self, kv_len: int) -> None:
        if kv_len <= self.train_length or self.told_past_train_length:
            return
        self.told_past_train_length = True
        m = self.resolved
        log.info("%s past train_length=%d (%d tokens): %s; parameters %s", m.name,
                 self.train_length, kv_len, m.past_train_length or "its own layout", m.params())

    def on_model(self, module, args, kwargs):
        """Forward pre-hook on the model: the final rows its caller keeps."""
        keep = kwargs.get("logits_to_keep", 0)
        self.keep_rows = keep if isinstance(keep, int) and keep > 0 else None

    def on_decoder(self, module, args, kwargs):
        """Forward pre-hook on the decoder stack: a prefill the resolved method
        splits (:meth:`Method.prefill_pieces`) runs every piece but the last
        here, each one forward of the stack over all layers on the same cache;
        the stack's own forward then runs the last piece (:func:`.pieces.run_pieces`)."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.memo = self._memo_for(cache)
        if self.memo is not None:
            self.memo.forward_starts(cache_state(cache))
        if self.pieces is not None and self.pieces.last:      # a last piece that raised
            self.pieces = None
        if self.pieces is not None or not self.settings.kernel:
            return None
        key, x = input_of(args, kwargs)
        if x is None or (cache is not None and cache.get_seq_length() > 0):
            return None                                       # not a prefill
        n = x.shape[1]
        m = self.method.resolve(n, self.train_length, prefill_length=n)
        pieces = m.prefill_pieces(n, self.settings.piece_tokens or default_piece_tokens(
            self.train_length, on_gpu=x.is_cuda))
        if len(pieces) == 1:
            return None
        if args:
            kwargs = {**kwargs, key: x}
        return (), run_pieces(self, module, kwargs, key, pieces)

    def _memo_for(self, cache) -> "kernels.DecodeMemo | None":
        """The decode memo of ``cache`` (one per cache object, new at its prefill)."""
        if cache is None:
            return None
        if cache.get_seq_length() == 0 or cache not in self.memos:
            self.memos[cache] = kernels.DecodeMemo()
        return self.memos[cache]

    def after_decoder(self, module, args, kwargs, output):
        """Forward hook on the decoder stack: after the last piece, the pieces'
        outputs joined where the caller asked for every position."""
        p = self.pieces
        if p is None or not p.last:
            return None
        self.pieces = None
        return p.joined(output, self.keep_rows)

    def rope(self, layer_type: str | None = METHOD_LAYER_TYPE) -> kernels.Rope:
        """The frequencies of this forward's rotary module for ``layer_type``
        (a method's rule changes the full-attention type's only); the
        identity rotation for a layer type that applies no RoPE."""
        inv_freq, scaling = rope_frequencies(self.settings.rotary, layer_type)
        if layer_type in self.settings.nope_types:
            return kernels.Rope(torch.zeros_like(inv_freq), 1.0)
        return kernels.Rope(inv_freq, scaling)

    def layer_type(self, module) -> str | None:
        """The type of ``module``'s layer (``config.layer_types``), or None."""
        types = self.settings.layer_types
        return None if types is None else types[module.layer_idx]

    def tables_for(self, layer_type: str | None) -> kernels.RopeTables:
        """This forward's RoPE tables for the method's layers of ``layer_type``:
        :attr:`tables` for the type a method runs on (or models with one
        rotary rule), else tables of that type's own frequencies."""
        if layer_type in (None, METHOD_LAYER_TYPE) and layer_type not in self.settings.nope_types:
            return self.tables
        if layer_type not in self.layer_tables:
            self.layer_tables[layer_type] = kernels.RopeTables(self.rope(layer_type),
                                                               self.resolved, self.memo)
        return self.layer_tables[layer_type]

    def attention(self, module, query, key, value, attention_mask, scaling=None,
                  dropout=0.0, **kwargs):
        """AttentionInterface function: ``query [b, h, q_len, d]`` and cached
        ``key, value [b, kv_h, kv_len, d]``, all un-rotated."""
        self.calls += 1
        _refuse_kwargs(module, dropout, kwargs)
        if self.settings.channels is not None:
            order = self.channel_order(query.shape[-1], query.device)
            query, key = query.index_select(-1, order), key.index_select(-1, order)
        i0 = self.i0                                     # read once a forward (a device sync)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        backend = kernels.with_softcap(self.settings.backend, kwargs.get("softcap"))
        window = kwargs.get("sliding_window")
        if window is not None and window <= self.train_length:
            return own_window_attention(self, module, query, key, value, scale, window, backend)
        if window is not None and i0 + query.shape[2] > window:
            return self._method_window(module, query, key, value, i0, scale, window, backend)
        if i0 + query.shape[2] != key.shape[2]:
            raise ValueError(f"query positions {i0}..{i0 + query.shape[2] - 1} do not end at "
                             f"the cache length {key.shape[2]}: custom position_ids are "
                             "not supported under mesa_viz methods")
        tables = self.tables_for(self.layer_type(module))
        tables.layer = module.layer_idx
        c, layer = self.settings.capture, module.layer_idx
        captured = c is not None and layer in c.layers
        if captured and c.qk:
            if kwargs.get("softcap") is not None:
                raise ValueError(f"capturing queries and keys of layer {layer}: its logits are "
                                 f"softcapped ({kwargs['softcap']}), which attention maps "
                                 "pooled from q . k do not apply; capture attention rows "
                                 "(capture_rows, trace) instead")
            c.record_qk(layer, query, key, i0, tables.rope, scale, self.resolved)
        out = kernels.attend(self.resolved, query, key, value, i0, tables, scale, backend)
        if captured:
            out = self._capture(layer, query, key, value, i0, scale, out, tables, backend)
            if c.stop and layer == max(c.layers) and key.shape[2] >= self.prefill_length:
                raise CaptureDone(f"captured layers {c.layers}")
        return out.transpose(1, 2).contiguous(), None

    def _method_window(self, module, query, key, value, i0, scale, window, backend):
        """A window above ``T`` that cuts keys off: the method within the
        window (:func:`mesa_viz.kernels.method_window`) at the method's
        positions for this layer type."""
        c = self.settings.capture
        if c is not None and module.layer_idx in c.layers:
            raise ValueError(f"capturing layer {module.layer_idx}: it runs the method within "
                             f"its sliding window ({window} > train_length={self.train_length}), "
                             "which probes do not capture; allowed layers whose window is at "
                             "most train_length, or covers every key, or that have none")
        rope = self.tables_for(self.layer_type(module)).rope
        out = kernels.method_window(self.resolved, query, key, value, i0, rope, scale, window,
                                    backend)
        return out.transpose(1, 2).contiguous(), None

    def channel_order(self, head_dim: int, device) -> torch.Tensor:
        """The family's channel permutation (``models.families.channel_order``)
        as an index tensor on ``device``, made once per head size and device."""
        key = (head_dim, str(device))
        if key not in self.orders:
            own = self.settings.own_rotary or self.settings.rotary
            rot = 2 * rope_frequencies(own, METHOD_LAYER_TYPE)[0].numel()
            self.orders[key] = torch.tensor(
                channel_order(self.settings.channels, rot, head_dim), device=device)
        return self.orders[key]

    def _capture(self, layer, query, key, value, i0, scale, out, tables, backend):
        """Exact probabilities of the captured rows; their outputs are recomputed
        from the stored probabilities so what is shown is what the model used."""
        c = self.settings.capture
        rows = [r for r in c.rows if i0 <= r < i0 + query.shape[2]]
        if not rows:
            return out
        local = torch.as_tensor([r - i0 for r in rows], device=query.device)
        logits = kernels.dense_logits(self.resolved, query[:, :, local], key, rows,
                                      tables.rope, scale)
        logits = torch.where(torch.isinf(logits), logits, kernels.capped(logits, backend))
        probs = torch.softmax(logits, dim=-1)
        rep = query.shape[1] // key.shape[1]
        v = value.repeat_interleave(rep, 1).to(torch.float32)
        out = out.clone()
        out[:, :, local] = torch.matmul(probs, v).to(out.dtype)
        c.add(layer, rows, probs[0][c.heads].detach().cpu(),
              logits[0][c.heads].detach().cpu() if c.logits else None)
        return out


def _frequencies_of_whole_prompt(rotary, args, kwargs, seq_len: int) -> None:
    """A piece of a prefill in pieces: set the rotary module's frequencies as
    for the whole prompt of ``seq_len`` tokens.  A length-dependent RoPE
    (longrope, dynamic) picks them from the longest position it is called
    with, and a piece's own positions, below the training length, would pick
    the short ones (Phi-3 longrope: 1e-2 off); hooks are not run again."""
    x = kwargs.get("x", args[0] if args else None)
    pos = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
    rest = {k: v for k, v in kwargs.items() if k not in ("x", "position_ids")}
    rotary.forward(x, torch.full_like(pos[:, :1], seq_len - 1), *args[2:], **rest)


def _span(pos: torch.Tensor) -> tuple[int, int]:
    """``(pos[0], pos[-1] + 1)`` of positions ``pos [q_len]`` in one read (one
    device sync on GPU)."""
    first, last = pos[[0, -1]].tolist()
    return int(first), int(last) + 1


def _refuse_kwargs(module, dropout, kwargs: dict) -> None:
    """Refuse attention arguments the kernels would silently ignore
    (``sliding_window`` and ``softcap`` are the caller's: :meth:`Applied.attention`)."""
    if dropout:
        raise ValueError(f"attention dropout {dropout} (a model in training mode?): mesa_viz "
                         "kernels run without dropout; call model.eval()")
    other = sorted(k for k, v in kwargs.items()
                   if v is not None and k not in ("sliding_window", "softcap")
                   and k not in _IGNORED_KWARGS)
    if other:
        raise ValueError(f"attention arguments {other} of {type(module).__name__} are not "
                         f"supported by mesa_viz kernels: allowed {list(_IGNORED_KWARGS)}, "
                         "sliding_window and softcap")
