"""The base of every method: :class:`Method`, its capability API, and how a
parameter declares its explorer control.

Pure numpy, no torch and no transformers.  Every method answers one question,
``relative(i, j)``: for query ``i`` and key ``j`` (absolute token indices, any
broadcastable integer arrays), which relative position does attention use, and
may ``i`` see ``j`` at all.  Layouts, the attention kernels and the tests'
independent references are all built on that answer.

A method is first *resolved* for a sequence: defaults derived from
``train_length`` (the model's training length, ``T``) are filled in and the
parameters validated, e.g.::

    Mesa().resolve(seq_len=16384, train_length=8192)
    resolve("mesa", 16384, train_length=8192, first_chunk=256)

Capabilities: what a method declares so that no other module decides by name
--------------------------------------------------------------------------------
Each method class states how it runs; layouts, the runtime, the kernels,
memory estimates and the bench read these and never test names or classes:

``name`` (ClassVar[str])
    The name in :data:`mesa_viz.methods.METHODS` (command line, JSON rows).
``native`` (ClassVar[bool])
    True: the model's own attention runs (linear positions ``t = i - j``,
    RoPE possibly re-parameterised by :meth:`Method.rope_parameters`); a
    kernel is then needed only when a probe captures attention rows.  False:
    ``mesa_viz.runtime.apply`` runs the method's kernel from the registry
    in ``mesa_viz.kernels`` on keys cached before RoPE; a non-native method
    without a kernel is refused by ``apply()``.
``chunked`` (ClassVar[bool])
    True: the layout comes from a chunk plan, :meth:`Mesa.plan` (drawn by
    layouts and probes).
``decode`` (ClassVar[str])
    How forwards after the first are read.  ``"rows"``: the token at ``i`` is
    row ``i`` of ``relative``, whatever the forward it comes in (a prompt may
    be fed in pieces).  ``"prefill-plan"``: the layout depends on the prompt
    length, so the first forward (from position 0) must hold the whole prompt,
    whose length is ``prefill_length``; generated tokens are the rows after it.
``past_train_length`` (ClassVar[str])
    One line saying what the method does past ``train_length`` (``apply()``
    logs it once, where transformers would warn that the model's maximum
    length is exceeded).
:meth:`Method.rope_parameters` -> dict | None
    A RoPE frequency rule as transformers ``rope_parameters`` entries (merged
    over the model's; the runtime builds the model's rotary class from them
    with ``max_position_embeddings = train_length``).  ``model`` gives the
    model's own ``{"rope_theta": base, "rotary_dim": d}``.
    :meth:`Method.rope_rule` says it in words (reported by layouts).
:meth:`Method.visible_pairs` -> int
    Query/key pairs the layout makes visible in ``seq_len`` tokens, in closed
    form (the bench's useful FLOPs).
:meth:`Method.query_scale` -> ``[len(rows)]``
    A per-query multiplier on ``q`` (Mesa's and ReRoPE's ``log_scaling``), 1
    elsewhere.
:meth:`Method.key_scale` -> ``[len(cols)]``
    A per-key multiplier on ``k`` (Dual Chunk's ``mscale``), 1 elsewhere.
:meth:`Method.span_cuts` -> ``(i, ...)``
    Where the layout cuts a token span (a query that cannot see the token
    before it), from :meth:`Method.relative`: a passkey row records the
    cuts inside its needle.
:meth:`Method.prefill_pieces` -> ``((start, stop), ...)``
    The forwards a prefill may run as, each over every layer on the same KV
    cache, so that activations stay within ``max_tokens`` tokens (Mesa: its
    middle chunks see only the first chunk and themselves); one by default.

Parameters
----------
Every parameter is a dataclass field made by :func:`param`, which declares
the control an explorer shows for it (:class:`Slider`, :class:`Choice`,
:class:`Toggle`, or :class:`Derived` for a field the method fills itself).
The layout explorer builds its controls from these declarations, so there is
no second list of a method's parameters (``docs/adding-a-method.md``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

__all__ = ["Method", "Origin", "Slider", "Choice", "Toggle", "Derived", "param", "control_of",
           "check_int", "check_factor", "DECODE_MODES", "GPU_PIECE_TOKENS",
           "default_piece_tokens", "PRESETS", "log_n", "check_preset"]

#: The values of :attr:`Method.decode`.
DECODE_MODES = ("rows", "prefill-plan")


# -- parameters and their explorer controls ----------------------------------------------

@dataclass(frozen=True)
class Slider:
    """A numeric parameter's explorer slider: ``lo..hi`` in steps of ``step``
    (a float ``step``: a float parameter).  A resolved default past ``hi``
    widens the slider to show it."""

    lo: float
    hi: float
    step: float = 1


@dataclass(frozen=True)
class Choice:
    """A parameter taking one of ``options`` (text): an explorer drop-down."""

    options: tuple


@dataclass(frozen=True)
class Toggle:
    """A bool parameter: an explorer check box."""


@dataclass(frozen=True)
class Derived:
    """A field the method fills itself (``why``): no explorer control."""

    why: str


#: The field-metadata key holding a parameter's control.
CONTROL = "control"


def param(control: "Slider | Choice | Toggle | Derived", default=None):
    """A method parameter: a dataclass field with ``default`` (``None``: derived
    from ``train_length`` when resolved) declaring its explorer ``control``."""
    return dataclasses.field(default=default, metadata={CONTROL: control})


def control_of(field: dataclasses.Field):
    """The control a method field declares (:func:`param`); ValueError naming
    the field if it declares none."""
    control = field.metadata.get(CONTROL)
    if control is None:
        raise ValueError(f"method field {field.name!r} declares no explorer control: make it "
                         "with methods.base.param(Slider(...) | Choice(...) | Toggle() | "
                         "Derived(...))")
    return control


# -- checks -------------------------------------------------------------------------------

def check_int(name: str, value, low: int, high: int | None = None, why: str = "") -> None:
    """Raise ValueError naming ``name`` unless ``low <= value (<= high)``."""
    allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
    allowed += f" ({why})" if why else ""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}={value!r} must be an integer {allowed}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name}={value} is out of range: allowed {allowed}")


def check_factor(value, name: str = "factor") -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a number >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
            or not value >= 1:
        raise ValueError(f"{name}={value!r} must be a number >= 1")


def triangle(n: int) -> int:
    """Pairs ``j <= i`` among ``n`` tokens: ``n(n+1)/2``."""
    return n * (n + 1) // 2


#: The values of a method's ``preset`` field: ``"paper"``, the paper's rule (the method's
#: defaults), or ``"authors-code"``, what the authors' released code runs.
PRESETS = ("paper", "authors-code")


def check_preset(method: "Method", values: dict) -> "Method":
    """``method`` with its ``preset``'s ``values`` (``{preset: {field: value}}``)
    filled into every field left None (an explicit parameter overrides the
    preset's); ValueError naming the preset unless it is one of ``values``."""
    if method.preset is None:
        return method
    if method.preset not in values:
        raise ValueError(f"preset={method.preset!r}: allowed {list(values)}")
    given = {k: v for k, v in values[method.preset].items() if getattr(method, k) is None}
    return dataclasses.replace(method, **given)


def log_n(rows, train_length: int) -> np.ndarray:
    """Log-n query scaling of rows ``i``: ``max(1, log(i + 1) / log(train_length))``
    (``[len(rows)]`` float64; 1 up to ``train_length``)."""
    rows = np.asarray(rows, dtype=np.float64)
    return np.maximum(1.0, np.log(rows + 1) / np.log(train_length))


def capped_sum(count: int, cap: int) -> int:
    """``sum(min(u, cap) for u in 1..count)`` in closed form (0 if ``count <= 0``)."""
    count = max(0, count)
    return triangle(min(count, cap)) + max(0, count - cap) * cap


# -- the base ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    """Base of all methods.  ``train_length`` is ``T``; ``None`` until resolved.

    The ClassVars and the methods below are the capability API (module doc).
    """

    name: ClassVar[str] = ""
    native: ClassVar[bool] = False
    chunked: ClassVar[bool] = False
    decode: ClassVar[str] = "rows"
    past_train_length: ClassVar[str] = ""
    train_length: int | None = param(Slider(2, 2048))

    # -- resolution ---------------------------------------------------------
    def resolve(self, seq_len: int, train_length: int | None = None,
                prefill_length: int | None = None) -> "Method":
        """Fill defaults for a sequence of ``seq_len`` tokens and validate.

        ``train_length`` overrides the method's own; if both are missing the
        sequence length is used (no extrapolation).  ``prefill_length`` is the
        prompt length for methods whose plan is fixed at prefill
        (``decode == "prefill-plan"``).
        """
        check_int("seq_len", seq_len, 1)
        T = self.train_length if train_length is None else train_length
        T = max(2, seq_len) if T is None else T
        check_int("train_length", T, 2)
        resolved = dataclasses.replace(self, train_length=int(T))
        return resolved._fill(int(seq_len), prefill_length)

    def _fill(self, seq_len: int, prefill_length: int | None) -> "Method":
        return self

    def params(self) -> dict:
        """The method's parameters as a plain dict (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    # -- the layout rule ------------------------------------------------------
    def relative(self, i, j):
        """Relative positions and visibility for queries ``i`` and keys ``j``.

        Returns ``(rel, visible)`` broadcast to ``np.broadcast(i, j).shape``;
        ``rel`` is meaningful only where ``visible``.
        """
        i, j = np.asarray(i), np.asarray(j)
        t = i - j
        return t, t >= 0

    def span_cuts(self, start: int, stop: int) -> tuple[int, ...]:
        """Where the (resolved) layout cuts the token span ``[start, stop)``:
        the positions ``i`` in it whose query cannot see token ``i - 1``, so
        that from ``i`` on the span's tokens before ``i`` are hidden (Mesa: a
        middle chunk starting inside a passkey needle, whose rest then reads
        without the words before it).  Read off :meth:`relative`, so every
        method answers alike; ``()`` for a causal layout."""
        check_int("start", start, 0)
        check_int("stop", stop, start + 1, None, f"start={start} < stop")
        i = np.arange(start + 1, stop)
        _, visible = self.relative(i, i - 1)
        return tuple(int(k) for k in i[~np.asarray(visible, dtype=bool)])

    def visible_pairs(self, seq_len: int) -> int:
        """Query/key pairs the (resolved) layout makes visible among ``seq_len``
        tokens, each counted once: every causal pair, ``n(n+1)/2``, unless a
        method's mask hides some.  (Kernels that score a key twice, with two
        rotations, do overhead, not extra visibility.)"""
        return triangle(int(seq_len))

    def query_scale(self, rows) -> np.ndarray:
        """Per-query multiplier on ``q`` for absolute positions ``rows``
        (``[len(rows)]`` float64): 1 unless the method scales queries."""
        return np.ones(np.shape(rows), dtype=np.float64)

    def key_scale(self, cols) -> np.ndarray:
        """Per-key multiplier on ``k`` for absolute positions ``cols``
        (``[len(cols)]`` float64): 1 unless the method scales keys."""
        return np.ones(np.shape(cols), dtype=np.float64)

    def prefill_pieces(self, seq_len: int, max_tokens: int) -> tuple[tuple[int, int], ...]:
        """The consecutive ``(start, stop)`` token ranges a prefill of
        ``seq_len`` tokens runs as, one forward each (over every layer, on the
        same cache), none longer than ``max_tokens`` where the layout allows:
        one forward unless a method says otherwise."""
        check_int("max_tokens", max_tokens, 1)
        return ((0, int(seq_len)),)

    # -- RoPE frequencies -------------------------------------------------------
    def rope_parameters(self, model: dict | None = None) -> dict | None:
        """transformers ``rope_parameters`` entries this method runs RoPE with
        (merged over the model's), or None for the model's own frequencies;
        ``model``: the model's ``{"rope_theta": base, "rotary_dim": d}``."""
        return None

    def rope_rule(self) -> str | None:
        """A frequency rule this method applies to RoPE, in words (reported)."""
        return None


#: On a GPU, the fewest tokens a prefill piece holds by default (more where half the
#: training length is more): smaller pieces are bound by the host's launches.  Measured on
#: an H200, random 1.1B Llama, T = 8192 (benchmarks/gpu/h200-run5): Mesa's prefill reached
#: 19-23 % of the matmul rate in pieces of 4,096 tokens, 28-30 % in pieces of 16,384.
GPU_PIECE_TOKENS = 16384


def default_piece_tokens(train_length: int, on_gpu: bool = False) -> int:
    """The most tokens one forward of a prefill in pieces holds unless told:
    half the training length (the activations of a piece stay those of a
    prompt the model was trained on), and on a GPU at least
    :data:`GPU_PIECE_TOKENS`."""
    half = max(1, int(train_length) // 2)
    return max(half, GPU_PIECE_TOKENS) if on_gpu else half


@dataclass(frozen=True)
class Origin(Method):
    """Plain causal attention with linear positions ``t = i - j``."""

    name: ClassVar[str] = "origin"
    native: ClassVar[bool] = True
    past_train_length: ClassVar[str] = (
        "linear positions past the training length (no extrapolation method: the "
        "baseline that fails)")
