"""Useful work and the floors it sets: the FLOPs of a prefill under a method (the
pairs its layout makes visible), the bytes a decode step must read, and each
row's floor on the machine measured.
"""

from __future__ import annotations

from ...methods import METHODS, Method, resolve
from ...models.parts import model_dims

__all__ = ["visible_pairs", "prefill_flops", "decode_bytes", "floors", "model_gemms"]


def visible_pairs(method: Method, seq_len: int) -> int:
    """Query/key pairs the (resolved) method's layout makes visible in a prefill
    of ``seq_len`` tokens, each counted once: :meth:`Method.visible_pairs`."""
    return method.visible_pairs(int(seq_len))


def _linear_params(dims) -> int:
    """Weights one token passes through in the decoder layers' matmuls."""
    d = dims
    attn = d.hidden * d.heads * d.head_dim * 2 + d.hidden * d.kv_heads * d.head_dim * 2
    mlp = (3 if d.gated_mlp else 2) * d.hidden * d.intermediate
    return d.layers * (attn + mlp)


def prefill_flops(config, method, seq_len: int, *, train_length: int | None = None,
                  logits_kept: int | None = 1, batch: int = 1, params: dict | None = None,
                  detail: bool = False):
    """Useful FLOPs of one prefill of ``seq_len`` tokens.

    ``2 * n * (weights of the decoder layers' matmuls: q, k, v, o, MLP)``
    + ``4 * head_dim * heads * visible_pairs`` per layer (QK^T and PV, 2 FLOPs
    per multiply-add) + the LM head ``2 * kept * hidden * vocab`` for the kept
    logits only.  Embedding lookups, norms, RoPE and softmax are not counted.
    ``method``: a name (resolved for ``seq_len`` against ``train_length``,
    default the config's ``max_position_embeddings``) or a resolved Method.
    ``detail=True`` returns a dict of the parts.
    """
    dims = model_dims(config)
    n = int(seq_len)
    m = resolve(method, n, train_length=train_length, default_train_length=dims.max_positions,
                **(params or {}))
    pairs = visible_pairs(m, n)
    linear = 2 * n * _linear_params(dims)
    attention = 4 * dims.head_dim * dims.heads * pairs * dims.layers
    kept = n if logits_kept is None else min(n, int(logits_kept))
    head = 2 * kept * dims.hidden * dims.vocab
    total = batch * (linear + attention + head)
    if detail:
        return {"linear": batch * linear, "attention": batch * attention,
                "lm_head": batch * head, "pairs": pairs, "total": total}
    return total


def decode_bytes(config, length: int, *, dtype_bytes: int, n_params: int,
                 rotated_keys: bool = False) -> int:
    """Bytes one decode step must read at ``length`` cached tokens: every
    weight once and the KV cache (plus one rotated copy of the keys where a
    method keeps one, ``rotated_keys``: the torch kernels' decode memo)."""
    d = model_dims(config)
    kv = (3 if rotated_keys else 2) * d.layers * d.kv_heads * d.head_dim * length
    return int(dtype_bytes * (n_params + kv))


def floors(row: dict, machine: dict, config, n_params: int) -> dict:
    """The limits of a point row on the machine of ``machine`` (a ``kind:
    machine`` row): ``prefill_floor_s`` (useful FLOPs at the matmul rate) and,
    with a memory bandwidth, ``decode_floor_ms`` (:func:`decode_bytes` at it)."""
    out = {"prefill_floor_s": row["useful_flops"] / (machine["matmul_gflops"] * 1e9)}
    if machine.get("memory_gbps"):
        b = decode_bytes(config, row["length"], dtype_bytes=2 if row["dtype"] in (
            "bfloat16", "float16") else 4, n_params=n_params,
            rotated_keys=_keeps_rotated_keys(row))
        out["decode_floor_ms"] = 1e3 * b / (machine["memory_gbps"] * 1e9)
    return out


def _keeps_rotated_keys(row: dict) -> bool:
    """Whether a point's decode reads a rotated copy of the keys (the torch
    kernels' decode memo): methods with kernels, except on CUDA, where the
    split-key Triton launch rotates the keys it reads instead (unless the row
    says the launch was turned off)."""
    if METHODS[row["method"]].native:
        return False
    return not (str(row.get("device", "")).startswith("cuda") and not row.get("fused_off"))


def model_gemms(config, rows: int = 4096) -> list[tuple[int, int, int]]:
    """``(m, k, n)`` of a model's linear layers for ``rows`` tokens: q/o, k/v
    and the MLP's up and down products."""
    d = model_dims(config)
    return [(rows, d.hidden, d.heads * d.head_dim), (rows, d.hidden, d.kv_heads * d.head_dim),
            (rows, d.hidden, d.intermediate), (rows, d.intermediate, d.hidden)]
