"""Tiny random-weight models of many families with a tokenizer trained in-process:
what the fast tests, the notebooks' test mode and ``--tiny`` commands run."""

from __future__ import annotations

from ..data import TEXTS

__all__ = ["tiny_model", "tiny_tokenizer", "TINY_FAMILIES", "TINY_TRAIN_LENGTH"]

#: Training length of the tiny models the notebooks and ``--tiny`` commands use.
TINY_TRAIN_LENGTH = 64

_TINY_VOCAB = 512
_TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
#: model_type -> the config of its tiny model.
TINY_FAMILIES = {
    "llama": dict(_TINY_SHAPE, rope_theta=10000.0),
    "gpt_neox": dict(_TINY_SHAPE, num_key_value_heads=None, rotary_pct=0.5, rope_theta=10000.0),
    "qwen3": dict(_TINY_SHAPE, head_dim=16, rope_theta=10000.0),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=4096),
    "mistral": dict(_TINY_SHAPE, sliding_window=None),
    "qwen2": dict(_TINY_SHAPE),
    "phi": dict(_TINY_SHAPE, partial_rotary_factor=0.5),
    "phi3": dict(_TINY_SHAPE, partial_rotary_factor=0.75, pad_token_id=0),
    "gemma": dict(_TINY_SHAPE, head_dim=16),
    "olmo": dict(_TINY_SHAPE),
    "olmo2": dict(_TINY_SHAPE),
    "granite": dict(_TINY_SHAPE, attention_multiplier=0.2),
    "stablelm": dict(_TINY_SHAPE, qk_layernorm=True),
    "persimmon": dict(_TINY_SHAPE, num_key_value_heads=None),
    "starcoder2": dict(_TINY_SHAPE),
    "cohere": dict(_TINY_SHAPE, use_qk_norm=True),
    "glm": dict(_TINY_SHAPE, head_dim=16, pad_token_id=0),
    "glm4": dict(_TINY_SHAPE, head_dim=16, pad_token_id=0),
    "deepseek_v3": dict(_TINY_SHAPE, q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=8,
                        qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=4,
                        num_experts_per_tok=2, n_group=1, topk_group=1,
                        first_k_dense_replace=1, moe_intermediate_size=32),
    "falcon": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   new_decoder_architecture=True, num_kv_heads=2, alibi=False,
                   max_position_embeddings=4096),
    "gemma2": dict(_TINY_SHAPE, head_dim=16),
    "gptj": dict(n_embd=64, n_head=4, n_layer=2, rotary_dim=8, n_positions=4096),
    "mpt": dict(d_model=64, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=4096,
                use_cache=True),
    "bloom": dict(hidden_size=64, n_head=4, n_layer=2),
    "gemma3_text": dict(_TINY_SHAPE, head_dim=16),
    "olmo3": dict(_TINY_SHAPE, eos_token_id=1, pad_token_id=0),
    "cohere2": dict(_TINY_SHAPE, eos_token_id=1, pad_token_id=0),
}


def tiny_model(family: str = "llama", seed: int = 0, attn_implementation: str = "sdpa",
               **overrides):
    """A random-weight model of ``family`` (a transformers ``model_type`` of
    :data:`TINY_FAMILIES`: llama, gpt_neox, qwen3, phi, phi3, cohere, glm, ..., gpt2)
    for fast tests, float32, eval mode.  Returns ``(model, tokenizer)`` with
    :func:`tiny_tokenizer` (whose 512 ids are the model's vocabulary)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}: allowed {sorted(TINY_FAMILIES)}")
    vocab = overrides.get("vocab_size", _TINY_VOCAB)
    if vocab < _TINY_VOCAB:
        raise ValueError(f"vocab_size={vocab}: allowed >= {_TINY_VOCAB}, the tiny tokenizer's ids")
    cfg = AutoConfig.for_model(
        family, **{**TINY_FAMILIES[family], "vocab_size": vocab, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation,
                                             dtype=torch.float32)
    return model.eval(), tiny_tokenizer()


def tiny_tokenizer():
    """A real byte-level BPE tokenizer of 512 ids, trained in-process in
    milliseconds (no file, no network) on the texts of :mod:`mesa_viz.data`
    and the numbers 0-999.  Any text encodes and decodes back exactly; ``<s>``
    (BOS) is put first, ``</s>`` is EOS, ``<pad>`` pads.  Deterministic: the
    same ids on every call and machine (a ``PreTrainedTokenizerFast``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=_TINY_VOCAB, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    numbers = " ".join(str(k) for k in range(1000))
    tok.train_from_iterator([*TEXTS * 10, numbers], trainer)      # words before numbers
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
