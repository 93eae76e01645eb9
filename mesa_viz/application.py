"""Apply a method to a transformers model: the only code touching its internals.

``with apply(model, "mesa"):`` installs, for the duration of the block only:

* a forward hook on the model's rotary embedding that records the positions,
  resolves the method for the sequence and, for methods that run a mesa_viz
  kernel (``not method.native``, or a probe's capture), hands the attention
  modules the identity rotation, so queries and keys reach attention (and the
  KV cache) *before* RoPE;
* for those methods, an attention function registered under a name unique to
  this application through transformers' ``AttentionInterface`` (and a mask
  function through ``AttentionMaskInterface``: the kernels build their own
  masks), which runs the method's kernel from ``mesa_viz.kernels``' registry;
* for a method with a RoPE frequency rule (``method.rope_parameters()``), a
  rotary embedding of the model's class built by transformers from those
  ``rope_parameters`` (Dynamic-NTK: ``{"rope_type": "dynamic", ...}``);
* a channel permutation of queries and keys for families whose RoPE pairs
  channels otherwise than the kernels' half split (interleaved pairs: Cohere,
  GLM; the rotary block last: DeepSeek-V3);
* a filter on transformers' generation logger that drops its "exceeded the
  model's predefined maximum length" reminder (and that logger's
  ``warning_once``, so transformers' process-wide once-cache never records the
  dropped reminder): under a method the reminder says the opposite of what
  happens, so ``apply`` logs (INFO, once) what the method does past the
  training length instead.

On exit, also after an exception, every hook, registration, filter and
attribute is put back.  Applications do not nest: a model that already carries
a method is refused.

Before anything is installed, ``apply`` refuses the families it cannot run
exactly (:data:`REFUSED_FAMILIES`, sliding-window attention below the training
length, attention logit softcapping, a frequency rule on a model whose own
RoPE is already scaled) and then *guards* the application: it runs the model
on :data:`GUARD_TOKENS` tokens with its own attention and through the kernels
(Origin's layout: identity rotation hook, registered attention function,
channel permutation), checks that the registered function ran once per layer
and that the logits agree, and refuses with the measured difference if not,
so no architecture, known or not, gives silently wrong results.
"""

from __future__ import annotations

import copy
import logging
import uuid
import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch

from . import kernels
from .compat import check_transformers
from .methods import Method, Origin, default_piece_tokens, get_method

__all__ = ["apply", "Applied", "Capture", "CaptureDone", "decoder_layers", "first_layers",
           "presized_cache", "train_length_of", "find_rotary",
           "GUARD_TOKENS", "SUPPORTED_FAMILIES", "REFUSED_FAMILIES", "guard"]

log = logging.getLogger(__name__)

SUPPORTED_BACKENDS = ("sdpa", "eager", "flash_attention_2")
#: The attribute marking a model that carries an application (removed on exit).
_MARK = "_mesa_viz_applied"
#: The logger and the start of transformers' reminder that generation passed
#: ``max_position_embeddings`` (``generation/stopping_criteria.py``, 5.x).
_LENGTH_LOGGER = "transformers.generation.stopping_criteria"
_LENGTH_REMINDER = "This is a friendly reminder - the current text generation call has exceeded"

#: Tokens of the input every application is checked on (:func:`guard`).
GUARD_TOKENS = 16
#: Largest max |logit difference| the guard accepts, relative to max(1, max |logit|)
#: (half precision: to max |logit|, with the model's own spread beside it: ``_judge_guard``).
_GUARD_TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-4, torch.bfloat16: 2e-2,
                    torch.float16: 1e-2}
#: Half precision: the guard also accepts this many times the model's own two attention
#: implementations' difference (``_own_spread``), at most ``_GUARD_CEILING`` of the scale.
_GUARD_SPREAD = 4.0
_GUARD_CEILING = 0.1
#: model_type -> how its RoPE pairs channels where that is not the kernels' half
#: split of the first ``rot_dim`` channels: interleaved pairs ``(2c, 2c + 1)`` of
#: the first ``rot_dim`` channels, or the rotary block last (already half-split).
_CHANNELS = {"cohere": "interleaved", "glm": "interleaved", "glm4": "interleaved",
             "deepseek_v3": "rope-last"}
#: The model types the tests run (tests/test_families.py): exact below the
#: training length, equal to the dense reference past it.
SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi", "phi3", "gemma", "gpt_neox",
                      "olmo", "olmo2", "granite", "stablelm", "persimmon", "starcoder2",
                      "cohere", "glm", "glm4", "deepseek_v3")
#: model_type -> why apply() refuses it.
REFUSED_FAMILIES = {
    "falcon": "its attention never calls transformers' AttentionInterface, so a method's "
              "kernel would not run (and the identity rotation would leave NoPE attention)",
    "gptj": "its RoPE is a fixed sin/cos table of n_positions rows rotating interleaved "
            "pairs, with no inv_freq to re-place positions with",
    "gemma2": "attention logit softcapping and sliding-window layers",
    "gemma3": "per-layer-type RoPE and sliding-window layers",
    "gemma3_text": "per-layer-type RoPE and sliding-window layers",
    "olmo3": "per-layer-type RoPE and sliding-window layers",
    "cohere2": "sliding-window layers",
}
#: Attention keyword arguments the kernels may ignore (None or harmless values).
_IGNORED_KWARGS = ("position_ids", "cache_position", "output_attentions", "is_causal",
                   "use_cache", "past_key_values", "layer_idx", "output_hidden_states")


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
    rope: kernels.Rope | None = None
    scale: float | None = None
    method: Method | None = None

    def record_qk(self, layer: int, query, key, i0: int, rope: kernels.Rope, scale: float,
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
    by_row: dict = field(default_factory=dict)

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


@dataclass
class Applied:
    """The live state of one application (one model, one method).

    ``kernel``: whether attention runs the method's mesa_viz kernel (False: the
    model's own attention).  Per forward: ``positions``, ``resolved`` (the
    method resolved for the sequence), ``tables`` (the cos/sin tables of this
    forward, shared by its layers), ``memo`` (the decode memo of this forward's
    cache: ``memos`` holds one per cache object).  ``piece_tokens``: the most tokens one
    forward of a prefill in pieces holds (:meth:`Method.prefill_pieces`);
    ``keep_rows``: the final rows the caller's forward needs (its
    ``logits_to_keep``; None: all); ``pieces``: the prefill in pieces under
    way (:func:`_run_pieces`).
    """

    method: Method
    train_length: int
    rotary: torch.nn.Module
    backend: str
    kernel: bool = True
    capture: Capture | None = None
    channels: str | None = None
    model_rope: dict | None = None
    resolved: Method | None = None
    prefill_length: int | None = None
    positions: torch.Tensor | None = None
    i0: int = 0
    tables: kernels.RopeTables | None = None
    told_past_train_length: bool = False
    piece_tokens: int | None = None
    memo: kernels.DecodeMemo | None = None
    memos: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    keep_rows: int | None = None
    pieces: "_Pieces | None" = None
    calls: int = 0
    orders: dict = field(default_factory=dict)

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
        if not self.kernel:
            return None
        self.tables = kernels.RopeTables(self.rope(), self.resolved, self.memo)  # this forward's
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
        the stack's own forward then runs the last piece (:func:`_run_pieces`)."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.memo = self._memo_for(cache)
        if self.memo is not None:
            self.memo.forward_starts(cache.get_seq_length(), _trusted_cache(cache))
        if self.pieces is not None and self.pieces.last:      # a last piece that raised
            self.pieces = None
        if self.pieces is not None or not self.kernel:
            return None
        key, x = _input_of(args, kwargs)
        if x is None or (cache is not None and cache.get_seq_length() > 0):
            return None                                       # not a prefill
        n = x.shape[1]
        m = self.method.resolve(n, self.train_length, prefill_length=n)
        pieces = m.prefill_pieces(n, self.piece_tokens or default_piece_tokens(
            self.train_length, on_gpu=x.is_cuda))
        if len(pieces) == 1:
            return None
        if args:
            kwargs = {**kwargs, key: x}
        return (), _run_pieces(self, module, kwargs, key, pieces)

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

    def rope(self) -> kernels.Rope:
        return kernels.Rope(self.rotary.inv_freq,
                            float(getattr(self.rotary, "attention_scaling", 1.0)))

    def attention(self, module, query, key, value, attention_mask, scaling=None,
                  dropout=0.0, **kwargs):
        """AttentionInterface function: ``query [b, h, q_len, d]`` and cached
        ``key, value [b, kv_h, kv_len, d]``, all un-rotated."""
        self.calls += 1
        _refuse_kwargs(module, self.whole_length(key.shape[2]), dropout, kwargs)
        if self.channels is not None:
            order = self.channel_order(query.shape[-1], query.device)
            query, key = query.index_select(-1, order), key.index_select(-1, order)
        i0 = self.i0                                     # read once a forward (a device sync)
        if i0 + query.shape[2] != key.shape[2]:
            raise ValueError(f"query positions {i0}..{i0 + query.shape[2] - 1} do not end at "
                             f"the cache length {key.shape[2]}: custom position_ids are "
                             "not supported under mesa_viz methods")
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        self.tables.layer = module.layer_idx
        c, layer = self.capture, module.layer_idx
        captured = c is not None and layer in c.layers
        if captured and c.qk:
            c.record_qk(layer, query, key, i0, self.tables.rope, scale, self.resolved)
        out = kernels.attend(self.resolved, query, key, value, i0, self.tables, scale,
                             self.backend)
        if captured:
            out = self._capture(layer, query, key, value, i0, scale, out)
            if c.stop and layer == max(c.layers) and key.shape[2] >= self.prefill_length:
                raise CaptureDone(f"captured layers {c.layers}")
        return out.transpose(1, 2).contiguous(), None

    def channel_order(self, head_dim: int, device) -> torch.Tensor:
        """The permutation of ``head_dim`` channels that puts this family's
        RoPE pairs where the kernels' half split expects them: pair ``(c, c +
        rot/2)`` for ``c < rot/2`` (``rot = 2 len(inv_freq)``).  Scores use
        only ``q . k``, so the same permutation of both is exact."""
        key = (head_dim, str(device))
        if key not in self.orders:
            rot = 2 * self.rotary.inv_freq.numel()
            if self.channels == "interleaved":
                order = [*range(0, rot, 2), *range(1, rot, 2), *range(rot, head_dim)]
            else:                                               # "rope-last"
                order = [*range(head_dim - rot, head_dim), *range(head_dim - rot)]
            self.orders[key] = torch.tensor(order, device=device)
        return self.orders[key]

    def _capture(self, layer, query, key, value, i0, scale, out):
        """Exact probabilities of the captured rows; their outputs are recomputed
        from the stored probabilities so what is shown is what the model used."""
        c = self.capture
        rows = [r for r in c.rows if i0 <= r < i0 + query.shape[2]]
        if not rows:
            return out
        local = torch.as_tensor([r - i0 for r in rows], device=query.device)
        logits = kernels.dense_logits(self.resolved, query[:, :, local], key, rows,
                                      self.tables.rope, scale)
        probs = torch.softmax(logits, dim=-1)
        rep = query.shape[1] // key.shape[1]
        v = value.repeat_interleave(rep, 1).to(torch.float32)
        out = out.clone()
        out[:, :, local] = torch.matmul(probs, v).to(out.dtype)
        c.add(layer, rows, probs[0][c.heads].detach().cpu(),
              logits[0][c.heads].detach().cpu() if c.logits else None)
        return out


@dataclass
class _Pieces:
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


def presized_cache(model, seq_len: int):
    """A transformers ``DynamicCache`` for ``model`` whose full-attention
    layers hold ``seq_len`` tokens in one buffer each and append later tokens
    in place (:func:`_prefill_layer`): a decode step writes one token instead
    of copying every layer's keys and values (``DynamicLayer``'s ``cat``).
    Pass it as the prefill's cache (``mesa_viz.bench`` does, for every method)."""
    from transformers import DynamicCache
    cache = DynamicCache(config=model.config)
    _presize(cache, seq_len)
    return cache


def _presize(cache, seq_len: int) -> None:
    """Give the empty ``DynamicLayer`` s of ``cache`` room for ``seq_len``
    tokens (:func:`_prefill_layer`), so the pieces of a prefill append in place
    instead of copying the whole layer at every piece."""
    from transformers.cache_utils import DynamicLayer
    layers = getattr(cache, "layers", [])
    for x, layer in enumerate(layers):
        if type(layer) is DynamicLayer and not layer.is_initialized:
            layers[x] = _prefill_layer(seq_len)


def _prefill_layer(capacity: int):
    """A transformers ``DynamicLayer`` whose tokens live in one buffer of room
    for ``capacity`` tokens, allocated at the first update (``keys``/``values``
    are views of it); when full it moves to a buffer 1/8 larger (at least 256
    tokens more), so decode steps append in place.  Once its tensors were
    replaced (beam reordering) it updates as a ``DynamicLayer`` does; a
    ``crop`` keeps the buffer (the next tokens overwrite the cropped ones)."""
    from transformers.cache_utils import DynamicLayer

    def room(key_states, value_states, tokens: int):
        shape = key_states.shape[:2] + (tokens,)
        return (key_states.new_empty(shape + key_states.shape[3:]),
                value_states.new_empty(shape + value_states.shape[3:]))

    class PrefillLayer(DynamicLayer):
        keeps_keys = True                        # kept keys are never rewritten in place

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.buf = room(key_states, value_states, capacity)
                self.keys, self.values = self.buf[0][:, :, :0], self.buf[1][:, :, :0]
            have, add = self.keys.shape[-2], key_states.shape[-2]
            buf = getattr(self, "buf", None)
            if buf is None or not _views_of(self.keys, buf[0]) \
                    or self.keys.shape[:2] != key_states.shape[:2]:
                self.buf = None
                return super().update(key_states, value_states, *args, **kwargs)
            if have + add > buf[0].shape[2]:
                grown = room(key_states, value_states, have + add + max(256, (have + add) // 8))
                grown[0][:, :, :have], grown[1][:, :, :have] = self.keys, self.values
                self.buf = buf = grown
            buf[0][:, :, have:have + add] = key_states
            buf[1][:, :, have:have + add] = value_states
            self.keys, self.values = buf[0][:, :, :have + add], buf[1][:, :, :have + add]
            return self.keys, self.values

    return PrefillLayer()


def _span(pos: torch.Tensor) -> tuple[int, int]:
    """``(pos[0], pos[-1] + 1)`` of positions ``pos [q_len]`` in one read (one
    device sync on GPU)."""
    first, last = pos[[0, -1]].tolist()
    return int(first), int(last) + 1


def _trusted_cache(cache) -> bool:
    """Whether every layer of ``cache`` keeps the keys it holds as written
    (transformers' ``DynamicLayer`` and ``StaticLayer``, the presized layer of
    :func:`presized_cache`), so the decode memo may trust keys it rotated
    before (:meth:`kernels.DecodeMemo.forward_starts`); quantized, offloaded,
    sliding or unknown layers are checked against probes instead."""
    from transformers.cache_utils import DynamicLayer, StaticLayer
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(x) in (DynamicLayer, StaticLayer)
                                or getattr(type(x), "keeps_keys", False) for x in layers)


def _views_of(x: torch.Tensor, buf: torch.Tensor) -> bool:
    """Whether ``x`` is still the leading view of ``buf`` (an empty view's
    ``data_ptr()`` is 0, so compare storages and offsets)."""
    return x.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr() \
        and x.storage_offset() == buf.storage_offset()


def _input_of(args, kwargs):
    """``(name, tensor)`` of a decoder stack's input: ``input_ids`` or ``inputs_embeds``."""
    x = kwargs.get("input_ids", args[0] if args else None)
    return ("input_ids", x) if x is not None else ("inputs_embeds", kwargs.get("inputs_embeds"))


def _piece_kwargs(kwargs: dict, key: str, a: int, b: int, cache) -> dict:
    """The decoder stack's arguments for tokens ``a..b-1`` on ``cache``."""
    x = kwargs[key]
    pos = kwargs.get("position_ids")
    pos = pos[:, a:b] if pos is not None else torch.arange(a, b, device=x.device)[None]
    mask = kwargs.get("attention_mask")
    out = {k: v for k, v in kwargs.items() if k != "past_key_values"}
    out.update({key: x[:, a:b], "position_ids": pos, "cache": cache, "use_cache": True,
                "attention_mask": mask[:, :b] if mask is not None and mask.dim() == 2 else None})
    return out


def _run_pieces(state: Applied, module, kwargs: dict, key: str, pieces) -> dict:
    """Run every piece but the last through ``module`` (the decoder stack) on
    one cache (the caller's, or a new ``DynamicCache``); return the stack's
    arguments for the last piece.  Refuses ``output_attentions`` (the kernels
    return no weights: use ``mesa_viz.trace``)."""
    from transformers import DynamicCache
    cfg = module.config
    if kwargs.get("output_attentions", getattr(cfg, "output_attentions", False)):
        raise ValueError("output_attentions=True is not supported under mesa_viz methods "
                         f"({state.method.name}'s prefill runs in pieces): capture attention "
                         "rows with mesa_viz.trace(..., query_rows=...)")
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    use_cache = kwargs.get("use_cache")
    p = _Pieces(seq_len=pieces[-1][1],
                keep_cache=cache is not None or (cfg.use_cache if use_cache is None else use_cache),
                hidden_states=bool(kwargs.get("output_hidden_states",
                                              getattr(cfg, "output_hidden_states", False))))
    cache = cache if cache is not None else DynamicCache(config=cfg)
    _presize(cache, p.seq_len)
    state.prefill_length = p.seq_len
    rows_needed = state.keep_rows is None or state.keep_rows > pieces[-1][1] - pieces[-1][0]
    state.pieces = p
    try:
        for a, b in pieces[:-1]:
            p.keep(module(**_piece_kwargs(kwargs, key, a, b, cache)), rows_needed)
    except BaseException:
        state.pieces = None
        raise
    p.last = True
    return _piece_kwargs(kwargs, key, *pieces[-1], cache)


class _DropLengthReminder(logging.Filter):
    """Drops transformers' "exceeded the model's predefined maximum length"
    reminder (``apply`` logs what the method does instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_LENGTH_REMINDER)


def _dropping(logger: logging.Logger) -> bool:
    return any(isinstance(f, _DropLengthReminder) for f in logger.filters)


def _warning_once_unless_dropped(logger: logging.Logger):
    """``logger.warning_once`` that returns before transformers' process-wide
    once-cache (an ``lru_cache``) sees the reminder while an application drops
    it, so a reminder dropped inside ``apply`` is still shown once after it."""
    def warning_once(msg, *args, **kwargs):
        if _dropping(logger) and str(msg).startswith(_LENGTH_REMINDER):
            return None
        return type(logger).warning_once(logger, msg, *args, **kwargs)
    return warning_once


def _drop_length_reminder(undo: ExitStack) -> None:
    """Drop the reminder until ``undo`` closes (applications may overlap, on
    several models, and close in any order: the last one out restores)."""
    logger = logging.getLogger(_LENGTH_LOGGER)
    if not _dropping(logger):
        logger.warning_once = _warning_once_unless_dropped(logger)
    drop = _DropLengthReminder()
    logger.addFilter(drop)

    def restore():
        logger.removeFilter(drop)
        if not _dropping(logger):
            vars(logger).pop("warning_once", None)
    undo.callback(restore)


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
        f"{type(model).__name__} ({_model_type(model)}) has no rotary position embedding "
        "(RoPE) module with inv_freq: RoPE methods cannot be applied; supported families: "
        f"{', '.join(SUPPORTED_FAMILIES)}")


def _decoder_stack(model) -> tuple[str, torch.nn.ModuleList]:
    """``(path, layers)`` of the model's stack of decoder layers."""
    n = int(model.config.num_hidden_layers)
    for path, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return path, mod
    raise ValueError(f"cannot find the {n} decoder layers of {type(model).__name__}")


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder layers."""
    return _decoder_stack(model)[1]


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
    path, stack = _decoder_stack(model)
    parent, leaf = _parent(model, path)
    setattr(parent, leaf, stack[:count])
    try:
        yield
    finally:
        setattr(parent, leaf, stack)


def _model_type(model) -> str:
    return str(getattr(model.config, "model_type", "?"))


def _parent(model, path):
    *head, leaf = path.split(".")
    mod = model
    for part in head:
        mod = getattr(mod, part)
    return mod, leaf


def _rotary_for(rotary, rope_parameters: dict, T: int):
    """A rotary embedding of ``rotary``'s class built by transformers from the
    model's ``rope_parameters`` updated with ``rope_parameters`` (e.g.
    ``{"rope_type": "dynamic", "factor": 2.0}``), for training length ``T``.
    A key also kept as a config attribute is set there too (transformers
    gives Phi-3's ``original_max_position_embeddings`` attribute priority)."""
    cfg = copy.copy(rotary.config)
    rp = dict(cfg.rope_parameters)
    rp.update(rope_parameters)
    cfg.rope_parameters = rp
    cfg.max_position_embeddings = T
    for key, value in rope_parameters.items():
        if key != "rope_type" and hasattr(cfg, key):
            setattr(cfg, key, value)
    new = type(rotary)(config=cfg)
    return new.to(rotary.inv_freq.device)


def _refuse_nesting(model) -> None:
    """A model carries at most one application at a time."""
    prev = getattr(model, _MARK, None)
    impl = str(getattr(model.config, "_attn_implementation", ""))
    if prev is None and not impl.startswith("mesa_viz_"):
        return
    name = repr(prev.method.name) if prev is not None else f"(attention {impl!r})"
    raise ValueError(f"method {name} is already applied to this {type(model).__name__}: "
                     "mesa_viz applications do not nest; leave its `with apply(...)` "
                     "block first")


def _checked(model, method, train_length, capture, params) -> tuple[Applied, str]:
    """The state of an application (not yet installed) and the rotary module's
    path, every refusal raised before anything changes."""
    check_transformers()
    _refuse_nesting(model)
    m = get_method(method, **params)
    _refuse_family(model)
    rotary, path = find_rotary(model)
    T = int(train_length) if train_length is not None else train_length_of(model)
    _refuse_model_attention(model, T)
    m.resolve(T, T)                                      # validate early
    backend = model.config._attn_implementation
    if capture is not None or not m.native:
        kernels.kernel_for(m)                            # refuse a method without a kernel
        if backend not in SUPPORTED_BACKENDS:
            raise ValueError(f"attention implementation {backend!r} is not supported for "
                             f"method {m.name!r}: allowed {SUPPORTED_BACKENDS} (load the "
                             "model with attn_implementation='sdpa')")
    state = Applied(method=m, train_length=T, rotary=rotary, backend=backend,
                    kernel=capture is not None or not m.native, capture=capture,
                    channels=_CHANNELS.get(_model_type(model)),
                    model_rope=_model_rope(model, rotary))
    _refuse_scaled_rope(model, state)
    return state, path


def _refuse_family(model) -> None:
    """Refuse the model types whose attention mesa_viz cannot run exactly."""
    kind = _model_type(model)
    if kind in REFUSED_FAMILIES:
        raise ValueError(f"model type {kind!r} is not supported: {REFUSED_FAMILIES[kind]}; "
                         f"supported families: {', '.join(SUPPORTED_FAMILIES)}")


def _sliding_window(config) -> int | None:
    """The sliding window of the model's own attention, None if it has none."""
    types = getattr(config, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    return getattr(config, "sliding_window", None)


def _refuse_model_attention(model, train_length: int) -> None:
    """Refuse attention the kernels do not compute: a sliding window below the
    training length (the model's own attention is windowed there) and
    attention logit softcapping."""
    cfg, kind = model.config, _model_type(model)
    window = _sliding_window(cfg)
    if window is not None and window < train_length:
        raise ValueError(f"model type {kind!r} uses sliding-window attention of {window} "
                         f"tokens, below train_length={train_length}: not supported (mesa_viz "
                         "methods attend to every key); allowed sliding_window None or >= "
                         "train_length")
    cap = getattr(cfg, "attn_logit_softcapping", None)
    if cap:
        raise ValueError(f"model type {kind!r} uses attention logit softcapping ({cap}): "
                         "not supported by mesa_viz kernels")


def _refuse_kwargs(module, kv_len: int, dropout, kwargs: dict) -> None:
    """Refuse attention arguments the kernels would silently ignore."""
    window = kwargs.get("sliding_window")
    if window is not None and window < kv_len:
        raise ValueError(f"sliding-window attention (window {window} < {kv_len} keys) is not "
                         "supported by mesa_viz methods: they attend to every key")
    if dropout:
        raise ValueError(f"attention dropout {dropout} (a model in training mode?): mesa_viz "
                         "kernels run without dropout; call model.eval()")
    other = sorted(k for k, v in kwargs.items()
                   if v is not None and k != "sliding_window" and k not in _IGNORED_KWARGS)
    if other:
        raise ValueError(f"attention arguments {other} of {type(module).__name__} are not "
                         f"supported by mesa_viz kernels: allowed {list(_IGNORED_KWARGS)} and "
                         "sliding_window (None or covering every key)")


def _model_rope(model, rotary) -> dict:
    """The model's own ``{"rope_theta", "rotary_dim", "rope_type"}``."""
    rp = getattr(model.config, "rope_parameters", None) or {}
    flat = "rope_type" in rp
    return {"rope_theta": rp.get("rope_theta") if flat else None,
            "rotary_dim": 2 * rotary.inv_freq.numel(),
            "rope_type": rp.get("rope_type") if flat else "per-layer-type"}


def _refuse_scaled_rope(model, state: Applied) -> None:
    """A frequency rule replaces the model's RoPE parameters: refuse it on a
    model whose own RoPE is already scaled (that scaling would be dropped)."""
    T, own = state.train_length, state.model_rope["rope_type"]
    if own == "default":
        return
    model_rope = {**state.model_rope, "rope_theta": state.model_rope["rope_theta"] or 1.0}
    if state.method.resolve(T, T).rope_parameters(model_rope) is not None:
        raise ValueError(f"method {state.method.name!r} replaces the RoPE frequencies, but this "
                         f"{_model_type(model)} model's rope_type is {own!r}, whose scaling "
                         "would be dropped: allowed on models with rope_type 'default'")


@contextmanager
def apply(model, method: "str | Method" = "origin", *, train_length: int | None = None,
          capture: Capture | None = None, piece_tokens: int | None = None, **params):
    """Run ``model`` under ``method`` inside the block; restore it on exit.

    ``params`` are the method's parameters (see ``mesa_viz.methods``);
    defaults come from the model (``train_length`` from its config).  Yields
    the live :class:`Applied` state (``.resolved`` holds the parameters of the
    last forward).  Native methods (origin, dynamic-ntk, pi, ntk, yarn) run
    the model's own attention unless a probe captures it; every other method
    runs its kernel.  Raises ValueError before changing anything for an
    unknown method or parameter, a method without a kernel, an unsupported
    attention backend or model family, a model that already carries a
    method, or a model on which :func:`guard` finds the kernels' path
    differing from its own attention.
    """
    if piece_tokens is not None and (isinstance(piece_tokens, bool) or
                                     not isinstance(piece_tokens, int) or piece_tokens < 1):
        raise ValueError(f"piece_tokens={piece_tokens!r} must be an integer >= 1 (or None)")
    state, path = _checked(model, method, train_length, capture, params)
    state.piece_tokens = piece_tokens
    guard(model, state, path)
    with ExitStack() as undo:
        _install(undo, model, state, path)
        log.debug("applied %s to %s", state.method.name, type(model).__name__)
        yield state


def _install(undo: ExitStack, model, state: Applied, path: str) -> None:
    """Install the application; ``undo`` takes it all back."""
    setattr(model, _MARK, state)
    undo.callback(delattr, model, _MARK)
    handle = model.register_forward_pre_hook(_check_inputs, with_kwargs=True)
    undo.callback(handle.remove)
    _drop_length_reminder(undo)
    T = state.train_length
    if state.method.resolve(T, T).rope_parameters(state.model_rope) is not None:
        parent, leaf = _parent(model, path)
        original = getattr(parent, leaf)
        state.rotary = _RuleRotary(original, state)
        setattr(parent, leaf, state.rotary)
        undo.callback(setattr, parent, leaf, original)
    handle = state.rotary.register_forward_hook(state.on_rotary, with_kwargs=True)
    undo.callback(handle.remove)
    if state.kernel:
        decoder = _parent(model, path)[0]
        for handle in (model.register_forward_pre_hook(state.on_model, with_kwargs=True),
                       decoder.register_forward_pre_hook(state.on_decoder, with_kwargs=True),
                       decoder.register_forward_hook(state.after_decoder, with_kwargs=True)):
            undo.callback(handle.remove)
        name = f"mesa_viz_{uuid.uuid4().hex[:12]}"
        _register(name, state)
        undo.callback(_unregister, name)
        model.set_attn_implementation(name)
        undo.callback(model.set_attn_implementation, state.backend)


class _RuleRotary(torch.nn.Module):
    """The model's rotary embedding under a method's RoPE frequency rule: a
    rotary module of the model's class built by transformers from the rule's
    ``rope_parameters`` (:func:`_rotary_for`), rebuilt when the rule changes
    (a rule derived from the prompt length changes with each prompt)."""

    def __init__(self, original: torch.nn.Module, state: Applied):
        super().__init__()
        object.__setattr__(self, "original", original)          # not a submodule
        object.__setattr__(self, "current", original)
        self.state, self.rule = state, None

    def forward(self, x, position_ids, *args, **kwargs):
        rule = self.state.resolve_for(position_ids[0]).rope_parameters(self.state.model_rope)
        if rule != self.rule:
            built = _rotary_for(self.original, rule, self.state.train_length)
            object.__setattr__(self, "current", built)
            self.rule = rule
        return self.current(x, position_ids, *args, **kwargs)

    @property
    def inv_freq(self) -> torch.Tensor:
        return self.current.inv_freq

    @property
    def attention_scaling(self) -> float:
        return float(getattr(self.current, "attention_scaling", 1.0))

    @property
    def rope_type(self) -> str:
        return self.current.rope_type


def guard(model, state: Applied, path: str) -> None:
    """Refuse an application whose kernels' path differs from the model's own
    attention on :data:`GUARD_TOKENS` tokens, with the measured difference.

    Runs the model twice (eval mode, no cache): its own attention, then the
    application's machinery with Origin's layout (identity rotation hook, the
    registered attention function with the family's channel order, the
    kernels).  The registered function must run once per layer and the
    logits must agree within ``_GUARD_TOLERANCE`` (relative to max(1, max
    |logit|)).  A method with a RoPE frequency rule must also rebuild the
    model's own rotary exactly at factor 1.  Leaves nothing behind.
    """
    ids = _guard_ids(model)
    probe = Applied(method=Origin(), train_length=state.train_length, rotary=state.rotary,
                    backend=state.backend, channels=state.channels,
                    model_rope=state.model_rope, told_past_train_length=True)
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), _hooks_set_aside(model):
            own = model(ids, use_cache=False).logits.float()
            floor = _own_spread(model, ids, own, state.backend)
            with ExitStack() as undo:
                _install(undo, model, probe, path)
                got = model(ids, use_cache=False).logits.float()
    finally:
        model.train(training)
    _judge_guard(model, probe.calls, own, got, floor)
    _guard_rule(model, state)


def _own_spread(model, ids, own: torch.Tensor, backend: str) -> float:
    """Half precision only (else 0): max |logit difference| between the model's
    own attention and its other stock implementation (``eager``, or ``sdpa``
    for an eager model) on the guard's input: the rounding the model's own
    kernels disagree by, which compounds over the layers (a random 22-layer
    Llama in bfloat16: 0.098 on logits up to 4.3, 2.3 %)."""
    if next(model.parameters()).dtype not in (torch.bfloat16, torch.float16):
        return 0.0
    other = "sdpa" if backend == "eager" else "eager"
    try:
        model.set_attn_implementation(other)
    except (ValueError, ImportError) as exc:
        log.info("guard: no %s attention to compare with (%s)", other, exc)
        return 0.0
    try:
        return float((model(ids, use_cache=False).logits.float() - own).abs().max())
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        log.info("guard: the model's %s attention does not run (%s): no spread", other, exc)
        return 0.0
    finally:
        model.set_attn_implementation(backend)


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
               "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


@contextmanager
def _hooks_set_aside(model):
    """Within the block the model's modules carry none of the forward hooks
    they had (a caller's recorders must not see the guard's forwards); hooks
    registered inside are the block's own.  Restored on exit."""
    saved = []
    for module in model.modules():
        kept = {name: getattr(module, name) for name in _HOOK_DICTS if hasattr(module, name)}
        saved.append((module, kept))
        for name, hooks in kept.items():
            setattr(module, name, type(hooks)())
    try:
        yield
    finally:
        for module, kept in saved:
            for name, hooks in kept.items():
                setattr(module, name, hooks)


def _guard_ids(model) -> torch.Tensor:
    """A fixed input of :data:`GUARD_TOKENS` token ids spread over the vocabulary."""
    emb = model.get_input_embeddings()
    ids = (torch.arange(GUARD_TOKENS) * 7919 + 17) % emb.num_embeddings
    return ids[None].to(emb.weight.device)


def _judge_guard(model, calls: int, own: torch.Tensor, got: torch.Tensor,
                 floor: float = 0.0) -> None:
    """Raise unless the registered function ran once per layer and the logits
    agree: within ``_GUARD_TOLERANCE`` of the logits' scale (max(1, max |logit|);
    half precision: max |logit|), or, in half precision, within
    ``_GUARD_SPREAD`` times ``floor``, the model's own two attention
    implementations' difference (:func:`_own_spread`), never past
    ``_GUARD_CEILING`` of the scale.  In half precision a layout error smaller
    than the model's own rounding cannot be told from it (a tiny random GLM with
    Cohere's interleaved pairs: 1.6 times the spread); a larger one is refused
    (a tiny Cohere with GLM's half split: 37 times)."""
    kind, layers = _model_type(model), int(model.config.num_hidden_layers)
    if calls != layers:
        raise ValueError(f"model type {kind!r}: the registered attention function ran {calls} "
                         f"times for {layers} layers on a {GUARD_TOKENS}-token check, so "
                         "mesa_viz kernels would not run where the model attends: not supported")
    diff, top = float((got - own).abs().max()), float(own.abs().max())
    dtype = next(model.parameters()).dtype
    half = dtype in (torch.bfloat16, torch.float16)
    scale = top if half else max(1.0, top)
    tol = _GUARD_TOLERANCE.get(dtype, 1e-2) * scale
    if half:
        tol = max(tol, min(_GUARD_SPREAD * floor, _GUARD_CEILING * scale))
    if not diff <= tol:
        spread = f"; the model's own two attentions differ by {floor:.3g}" if floor else ""
        raise ValueError(f"model type {kind!r}: mesa_viz's kernels (Origin's layout) differ "
                         f"from the model's own attention on a {GUARD_TOKENS}-token check: max "
                         f"|logit difference| {diff:.3g} (logits up to {scale:.3g}; allowed "
                         f"{tol:.3g}{spread}): its attention or RoPE layout is not supported")


def _guard_rule(model, state: Applied) -> None:
    """A frequency rule at factor 1 must rebuild the model's own rotary exactly."""
    T = state.train_length
    neutral = type(state.method)().resolve(GUARD_TOKENS, T)        # its defaults: factor 1
    rule = neutral.rope_parameters(state.model_rope)
    if rule is None:
        return
    built = _rotary_for(state.rotary, rule, T)
    same = torch.allclose(built.inv_freq.float(), state.rotary.inv_freq.float(), rtol=1e-6) \
        and float(getattr(built, "attention_scaling", 1.0)) == 1.0
    if not same:
        raise ValueError(f"model type {_model_type(model)!r}: its rotary class does not rebuild "
                         f"its own frequencies from rope_parameters {rule}, so method "
                         f"{state.method.name!r} would change RoPE below train_length")


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
