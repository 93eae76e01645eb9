"""A vLLM v1 attention backend that runs a mesa_viz method on vLLM's paged KV cache.

The model's rotary embedding is the identity under this plugin
(:mod:`.models`), so the keys vLLM hands the backend, and that
:meth:`MesaVizImpl.do_kv_cache_update` writes into vLLM's own paged cache, are
keys *before* RoPE.  At read time :meth:`MesaVizImpl.forward` gathers each
request's keys and values from its blocks and calls
``mesa_viz.kernels.attend`` -- the code ``mesa_viz.runtime.apply`` runs on
transformers -- with the request's queries at positions ``i0 .. seq_len - 1``
and the method resolved for the request as ``apply`` resolves it: for the
sequence's length, with the prompt's length for a method whose layout depends
on it (Mesa's chunk plan).  The prompt length comes from vLLM's model runner
(:data:`.settings.PROMPT_LENGTH_CARRIER`), so it is right in every step: a
chunk of a prefill, a decode step, a request re-prefilled after preemption.

KV cache: vLLM's logical per-layer view ``[blocks, kv_heads, block_size, 2 *
head_dim]``; channels ``:head_dim`` hold the key, the rest the value.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
from vllm.v1.attention.backend import (AttentionBackend, AttentionImpl,
                                       AttentionMetadataBuilder, AttentionType,
                                       CommonAttentionMetadata)

from mesa_viz.kernels import Rope, attend
from mesa_viz.methods import Method

from .settings import MethodSpec, prompt_dependent

__all__ = ["MesaVizBackend", "MesaVizMetadata", "MesaVizBuilder", "MesaVizImpl",
           "BACKEND_NAME", "resolved_for"]

log = logging.getLogger(__name__)

#: The ``AttentionBackendEnum`` member vLLM records for the backend: ``CUSTOM`` (the class is
#: handed to each layer directly, never looked up by name).
BACKEND_NAME = "CUSTOM"


@dataclass
class MesaVizMetadata:
    """One step's batch, on the host: ``query_start [reqs + 1]``, ``seq_lens
    [reqs]`` (keys per request after this step), ``prompt_lens [reqs]``,
    ``block_table [reqs, max_blocks]``, ``slot_mapping [tokens]``."""

    num_actual_tokens: int
    query_start: list
    seq_lens: list
    prompt_lens: list
    block_table: torch.Tensor
    slot_mapping: torch.Tensor


class MesaVizBuilder(AttentionMetadataBuilder[MesaVizMetadata]):
    """Builds :class:`MesaVizMetadata` from vLLM's common metadata; refuses a
    step whose prompt lengths vLLM did not hand over."""

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)   # abstract there

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> MesaVizMetadata:
        cm = common_attn_metadata
        n = cm.num_reqs
        if cm.rswa_prefix_lens is None:
            raise RuntimeError("vLLM handed no prompt lengths to the mesa_viz backend: start "
                               "the engine with mesa_viz_vllm.hf_overrides(...) (it sets "
                               "the carrier field)")
        return MesaVizMetadata(
            num_actual_tokens=cm.num_actual_tokens,
            query_start=cm.query_start_loc_cpu[:n + 1].tolist(),
            seq_lens=cm.seq_lens[:n].cpu().tolist(),
            prompt_lens=cm.rswa_prefix_lens[:n].cpu().tolist(),
            block_table=cm.block_table_tensor[:n],
            slot_mapping=cm.slot_mapping)


class MesaVizImpl(AttentionImpl[MesaVizMetadata]):
    """The method's attention on one layer's paged cache (module doc)."""

    def __init__(self, num_heads: int, head_size: int, scale: float,
                 num_kv_heads: int | None = None, alibi_slopes=None, sliding_window=None,
                 kv_cache_dtype: str = "auto", logits_soft_cap=None,
                 attn_type: str = AttentionType.DECODER, kv_sharing_target_layer_name=None,
                 mesa_viz: tuple | None = None) -> None:
        _refuse_layer(alibi_slopes, sliding_window, kv_cache_dtype, logits_soft_cap,
                      attn_type, kv_sharing_target_layer_name, mesa_viz)
        self.num_heads, self.head_size, self.scale = num_heads, head_size, float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        self.kv_cache_dtype, self.attn_type = kv_cache_dtype, attn_type
        self.kv_sharing_target_layer_name = None
        self.spec, self.rope = mesa_viz                    # (MethodSpec, kernels.Rope)
        self.method = self.spec.value()
        self.prompt_dependent = prompt_dependent(self.method)

    def do_kv_cache_update(self, layer, key: torch.Tensor, value: torch.Tensor,
                           kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        """Write this step's keys (before RoPE) and values ``[tokens, kv_heads,
        head_dim]`` into their slots of ``kv_cache``."""
        n = slot_mapping.shape[0]
        slots = slot_mapping.long()
        keep = slots >= 0                                    # -1: a padding token
        block_size = kv_cache.shape[2]
        blocks, offsets = slots[keep] // block_size, slots[keep] % block_size
        kv = torch.cat((key[:n][keep], value[:n][keep]), dim=-1)  # [tokens, kv_heads, 2d]
        kv_cache[blocks, :, offsets] = kv.to(kv_cache.dtype)

    def forward(self, layer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: MesaVizMetadata | None,
                output: torch.Tensor, output_scale=None, output_block_scale=None):
        """``query [tokens, heads, head_dim]`` (before RoPE) -> ``output
        [tokens, heads, head_dim]``, request by request."""
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("fused output quantization is not supported by the "
                                      "mesa_viz backend")
        if attn_metadata is None:                            # a profiling run
            return output
        md = attn_metadata
        for r in range(len(md.seq_lens)):
            a, b = md.query_start[r], md.query_start[r + 1]
            if b > a:
                output[a:b] = self._request(query[a:b], kv_cache, md.block_table[r],
                                            md.seq_lens[r], md.prompt_lens[r])
        return output

    def _request(self, q: torch.Tensor, kv_cache: torch.Tensor, blocks: torch.Tensor,
                 seq_len: int, prompt_len: int) -> torch.Tensor:
        """One request: queries ``q [q_len, heads, d]`` at ``seq_len - q_len ..
        seq_len - 1`` over its ``seq_len`` cached keys -> ``[q_len, heads, d]``."""
        block_size, d = kv_cache.shape[2], self.head_size
        if self.prompt_dependent and q.shape[0] == seq_len > prompt_len:
            raise RuntimeError(
                f"a request of {prompt_len} prompt tokens is prefilled again with "
                f"{seq_len - prompt_len} generated tokens (vLLM preempted it): under method "
                f"{self.spec.method!r} the rows of generated tokens depend on the step that "
                "made them, so one forward would not reproduce them; give the engine more KV "
                "cache (kv_cache_memory_bytes, gpu_memory_utilization) or fewer sequences "
                "at once (max_num_seqs)")
        used = blocks[:-(-seq_len // block_size)].long()
        kv = kv_cache[used].transpose(0, 1).flatten(1, 2)[:, :seq_len]  # [kv_heads, S, 2d]
        k, v = kv[None, ..., :d], kv[None, ..., d:]
        method = resolved_for(self.method, seq_len, prompt_len)
        out = attend(method, q.transpose(0, 1)[None], k, v, seq_len - q.shape[0],
                     self.rope, self.scale)                  # [1, heads, q_len, d]
        return out[0].transpose(0, 1).to(q.dtype)


@functools.lru_cache(maxsize=4096)
def resolved_for(method: Method, seq_len: int, prompt_len: int) -> Method:
    """``method`` resolved for a request of ``seq_len`` keys whose prompt has
    ``prompt_len`` tokens, as ``apply()`` resolves it: for the sequence (during
    a prefill in chunks, the whole prompt), with the prompt's length as
    ``prefill_length``."""
    return method.resolve(max(seq_len, prompt_len), method.train_length,
                          prefill_length=prompt_len)


def _refuse_layer(alibi_slopes, sliding_window, kv_cache_dtype, logits_soft_cap, attn_type,
                  kv_sharing_target_layer_name, spec) -> None:
    """Layer settings the method's kernels do not reproduce."""
    bad = {"alibi_slopes": alibi_slopes, "sliding_window": sliding_window,
           "logits_soft_cap": logits_soft_cap,
           "kv_sharing_target_layer_name": kv_sharing_target_layer_name}
    given = {k: v for k, v in bad.items() if v is not None}
    if given:
        raise ValueError(f"attention settings {given} are not supported by the mesa_viz "
                         "backend: allowed none of them")
    if attn_type != AttentionType.DECODER or kv_cache_dtype != "auto":
        raise ValueError(f"attn_type={attn_type!r}, kv_cache_dtype={kv_cache_dtype!r}: "
                         "the mesa_viz backend runs decoder attention with kv_cache_dtype "
                         "'auto'")
    if not (isinstance(spec, tuple) and isinstance(spec[0], MethodSpec)
            and isinstance(spec[1], Rope)):
        raise ValueError(f"mesa_viz={spec!r}: the backend needs (MethodSpec, kernels.Rope), "
                         "given by mesa_viz_vllm's model classes")


class MesaVizBackend(AttentionBackend):
    """The backend class handed to each ``Attention`` layer of the plugin's
    models (vLLM's CPU platform ignores a requested backend otherwise)."""

    forward_includes_kv_cache_update: bool = False
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16,
                                                    torch.float32]
    supported_kv_cache_dtypes: ClassVar[list] = ["auto"]

    @staticmethod
    def get_name() -> str:
        return BACKEND_NAME

    @staticmethod
    def get_impl_cls() -> type[MesaVizImpl]:
        return MesaVizImpl

    @staticmethod
    def get_builder_cls() -> type[MesaVizBuilder]:
        return MesaVizBuilder

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type == AttentionType.DECODER
