"""RoPE as the kernels apply it: the model's frequencies (:class:`Rope`), the
cos/sin tables of one forward (:class:`RopeTables`) and :func:`rotate`.

Half-split rotation of the first ``rot_dim`` channels (Llama, GPT-NeoX
partial rotary, Phi-3); families that pair channels otherwise are permuted
into this order by the runtime before the kernels see them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["Rope", "RopeTables", "rotate", "arange", "scale_rows", "SMALL_ROTATION"]


@dataclass(frozen=True)
class Rope:
    """RoPE as the model computes it: ``inv_freq [rot_dim/2]`` and the cos/sin
    ``scaling`` (1 except for YaRN-like types); half-split rotation of the
    first ``rot_dim`` channels (Llama, GPT-NeoX partial rotary, Phi-3).
    Holds no tables: see :class:`RopeTables`."""

    inv_freq: torch.Tensor
    scaling: float = 1.0

    def cos_sin(self, pos: torch.Tensor, dtype: torch.dtype):
        """Rotation tables ``(C, S) [len(pos), 2, rot_dim/2]`` for (possibly
        fractional) positions: ``C = (cos, cos)``, ``S = (-sin, sin)``, so that
        the two halves ``x = (x1, x2)`` rotate as ``x * C + flip(x) * S``."""
        freqs = pos.to(torch.float32)[:, None] * self.inv_freq.to(pos.device, torch.float32)
        cos, sin = freqs.cos() * self.scaling, freqs.sin() * self.scaling
        return (torch.stack((cos, cos), dim=-2).to(dtype),
                torch.stack((-sin, sin), dim=-2).to(dtype))


class RopeTables:
    """The cos/sin tables of one forward pass of one resolved method.

    Made by the runtime once per forward (its layers share them) or by
    :func:`attend` once per call; never reused across forwards or methods:
    :func:`attend` refuses tables made for another method value, and a kernel's
    ``key`` names positions within one forward of one method (e.g.
    ``("lin", a, b)`` for ``a..b-1``).

    ``memo`` (a :class:`~.decode_memo.DecodeMemo`, set by the runtime) and ``layer``
    (the layer being computed) let a decode step reuse the rotated keys of the
    steps before it; None when ``attend`` is called alone.
    """

    __slots__ = ("rope", "method", "_tables", "memo", "layer")

    def __init__(self, rope: Rope, method, memo=None):
        self.rope, self.method, self._tables = rope, method, {}
        self.memo, self.layer = memo, None

    def table(self, key, make: Callable[[], object]):
        """A table of this forward shared by its layers (positions, rules, a
        launch's buffers): ``make()`` once per ``key``."""
        if key not in self._tables:
            self._tables[key] = make()
        return self._tables[key]

    def cos_sin(self, pos: torch.Tensor, dtype: torch.dtype, key=None):
        """:meth:`Rope.cos_sin`, kept under ``(key, dtype)`` when ``key`` is given."""
        if key is None:
            return self.rope.cos_sin(pos, dtype)
        if (key, dtype) not in self._tables:
            self._tables[key, dtype] = self.rope.cos_sin(pos, dtype)
        return self._tables[key, dtype]


#: Up to this many elements :func:`rotate` uses three element-wise ops with temporaries;
#: above it, in-place ops into one output (no temporaries the size of ``x``).
SMALL_ROTATION = 1 << 16


def rotate(x: torch.Tensor, rope: "Rope | RopeTables", pos: torch.Tensor,
           key=None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x [..., len(pos), head_dim]`` rotated to positions ``pos``: channel
    ``c`` pairs with ``c + rot_dim/2`` (half-split RoPE); channels past
    ``rot_dim`` pass through (partial rotary).  ``key``: see :class:`RopeTables`.
    ``out`` (optional, any strides): written there and returned."""
    C, S = rope.cos_sin(pos, x.dtype) if key is None else rope.cos_sin(pos, x.dtype, key)
    half = C.shape[-1]
    xr = x[..., :2 * half].unflatten(-1, (2, half))                 # [..., L, 2, half]
    if (torch.is_grad_enabled() and x.requires_grad) or x.numel() <= SMALL_ROTATION:
        # autograd (no out= ops), or a few rows (a decode step's): fewer, smaller launches
        y = torch.addcmul(xr * C, xr.flip(-2), S).flatten(-2)
        y = torch.cat((y, x[..., 2 * half:]), dim=-1) if 2 * half < x.shape[-1] else y
        return y if out is None else out.copy_(y)
    shape = x.shape[:-2] + (C.shape[0], x.shape[-1])          # x has len(pos) rows, or 1
    if out is None:                                           # written in place: no temporaries
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    o = out[..., :2 * half].unflatten(-1, (2, half))
    torch.mul(xr, C, out=o)
    o[..., 0, :].addcmul_(xr[..., 1, :], S[..., 0, :])
    o[..., 1, :].addcmul_(xr[..., 0, :], S[..., 1, :])
    if 2 * half < x.shape[-1]:
        out[..., 2 * half:] = x[..., 2 * half:]
    return out


def arange(a: int, b: int, device) -> torch.Tensor:
    """``torch.arange(a, b)`` on ``device``: token positions ``a..b-1``."""
    return torch.arange(a, b, device=device)


def scale_rows(x: torch.Tensor, factors) -> torch.Tensor:
    """``x [b, h, L, d]`` with row ``r`` times ``factors[r]`` (a method's
    ``query_scale``, ``[L]`` float64); ``x`` itself where every factor is 1."""
    f = torch.as_tensor(factors, dtype=torch.float64)
    if bool((f == 1).all()):
        return x
    return x * f.to(device=x.device, dtype=torch.float32).to(x.dtype)[:, None]
