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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch

from . import kernels
from .compat import check_transformers
from .methods import Method, Origin, get_method

__all__ = ["apply", "Applied", "Capture", "train_length_of", "find_rotary", "GUARD_TOKENS",
           "SUPPORTED_FAMILIES", "REFUSED_FAMILIES", "guard"]

log = logging.getLogger(__name__)

SUPPORTED_BACKENDS = ("sdpa", "eager")
#: The attribute marking a model that carries an application (removed on exit).
_MARK = "_mesa_viz_applied"
#: The logger and the start of transformers' reminder that generation passed
#: ``max_position_embeddings`` (``generation/stopping_criteria.py``, 5.x).
_LENGTH_LOGGER = "transformers.generation.stopping_criteria"
_LENGTH_REMINDER = "This is a friendly reminder - the current text generation call has exceeded"

#: Tokens of the input every application is checked on (:func:`guard`).
GUARD_TOKENS = 16
#: Largest max |logit difference| the guard accepts, relative to max(1, max |logit|).
_GUARD_TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-4, torch.bfloat16: 2e-2,
                    torch.float16: 1e-2}
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
                   "use_cache", "past_key_values", "layer_idx")


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
    """The live state of one application (one model, one method).

    ``kernel``: whether attention runs the method's mesa_viz kernel (False: the
    model's own attention).  Per forward: ``positions``, ``resolved`` (the
    method resolved for the sequence), ``tables`` (the cos/sin tables of this
    forward, shared by its layers).
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
    tables: kernels.RopeTables | None = None
    told_past_train_length: bool = False
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
        i0, kv_len = int(pos[0]), int(pos[-1]) + 1
        if i0 == 0:
            self.prefill_length = kv_len
        self.positions = pos
        self.resolved = self.resolve_for(pos)
        self._tell_past_train_length(kv_len)
        if not self.kernel:
            return None
        self.tables = kernels.RopeTables(self.rope(), self.resolved)   # private to this forward
        cos, sin = output
        return torch.ones_like(cos), torch.zeros_like(sin)

    def resolve_for(self, pos: torch.Tensor) -> Method:
        """The method resolved for a forward at positions ``pos [q_len]`` (a
        forward from position 0 is a prefill: its length is the prompt's)."""
        i0, kv_len = int(pos[0]), int(pos[-1]) + 1
        prefill = kv_len if i0 == 0 else (self.prefill_length or kv_len)
        return self.method.resolve(kv_len, self.train_length, prefill_length=prefill)

    def _tell_past_train_length(self, kv_len: int) -> None:
        if kv_len <= self.train_length or self.told_past_train_length:
            return
        self.told_past_train_length = True
        m = self.resolved
        log.info("%s past train_length=%d (%d tokens): %s; parameters %s", m.name,
                 self.train_length, kv_len, m.past_train_length or "its own layout", m.params())

    def rope(self) -> kernels.Rope:
        return kernels.Rope(self.rotary.inv_freq,
                            float(getattr(self.rotary, "attention_scaling", 1.0)))

    def attention(self, module, query, key, value, attention_mask, scaling=None,
                  dropout=0.0, **kwargs):
        """AttentionInterface function: ``query [b, h, q_len, d]`` and cached
        ``key, value [b, kv_h, kv_len, d]``, all un-rotated."""
        self.calls += 1
        _refuse_kwargs(module, key.shape[2], dropout, kwargs)
        if self.channels is not None:
            order = self.channel_order(query.shape[-1], query.device)
            query, key = query.index_select(-1, order), key.index_select(-1, order)
        i0 = int(self.positions[0])
        if i0 + query.shape[2] != key.shape[2]:
            raise ValueError(f"query positions {i0}..{i0 + query.shape[2] - 1} do not end at "
                             f"the cache length {key.shape[2]}: custom position_ids are "
                             "not supported under mesa_viz methods")
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        out = kernels.attend(self.resolved, query, key, value, i0, self.tables, scale,
                             self.backend)
        if self.capture is not None and module.layer_idx in self.capture.layers:
            out = self._capture(module.layer_idx, query, key, value, i0, scale, out)
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
        probs = kernels.dense_rows(self.resolved, query[:, :, local], key, rows,
                                   self.tables.rope, scale)
        rep = query.shape[1] // key.shape[1]
        v = value.repeat_interleave(rep, 1).to(torch.float32)
        out = out.clone()
        out[:, :, local] = torch.matmul(probs, v).to(out.dtype)
        got = probs[0][c.heads].detach().cpu()
        prev = c.attention.get(layer)
        c.attention[layer] = got if prev is None else torch.cat((prev, got), dim=1)
        return out


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
          capture: Capture | None = None, **params):
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
    state, path = _checked(model, method, train_length, capture, params)
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
        with torch.no_grad():
            own = model(ids, use_cache=False).logits.float()
            with ExitStack() as undo:
                _install(undo, model, probe, path)
                got = model(ids, use_cache=False).logits.float()
    finally:
        model.train(training)
    _judge_guard(model, probe.calls, own, got)
    _guard_rule(model, state)


def _guard_ids(model) -> torch.Tensor:
    """A fixed input of :data:`GUARD_TOKENS` token ids spread over the vocabulary."""
    emb = model.get_input_embeddings()
    ids = (torch.arange(GUARD_TOKENS) * 7919 + 17) % emb.num_embeddings
    return ids[None].to(emb.weight.device)


def _judge_guard(model, calls: int, own: torch.Tensor, got: torch.Tensor) -> None:
    """Raise unless the registered function ran once per layer and the logits agree."""
    kind, layers = _model_type(model), int(model.config.num_hidden_layers)
    if calls != layers:
        raise ValueError(f"model type {kind!r}: the registered attention function ran {calls} "
                         f"times for {layers} layers on a {GUARD_TOKENS}-token check, so "
                         "mesa_viz kernels would not run where the model attends: not supported")
    diff = float((got - own).abs().max())
    scale = max(1.0, float(own.abs().max()))
    tol = _GUARD_TOLERANCE.get(next(model.parameters()).dtype, 1e-2) * scale
    if not diff <= tol:
        raise ValueError(f"model type {kind!r}: mesa_viz's kernels (Origin's layout) differ "
                         f"from the model's own attention on a {GUARD_TOKENS}-token check: max "
                         f"|logit difference| {diff:.3g} (logits up to {scale:.3g}; allowed "
                         f"{tol:.3g}): its attention or RoPE layout is not supported")


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
