"""A result dataclass saved as ``<path>.npz`` (its arrays) and ``<path>.json``
(everything else), loaded back without the model."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .jsonl import jsonable

__all__ = ["save_result", "load_result"]


def save_result(result, path: "str | Path", arrays, skip=()) -> Path:
    """Write a result dataclass as ``path.npz`` (its fields named in ``arrays``
    that are not None, less ``skip``) and ``path.json`` (its other fields)."""
    path = _stem(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(_with(path, ".npz"), **{
        k: getattr(result, k) for k in arrays if getattr(result, k) is not None and k not in skip})
    meta = {k: v for k, v in asdict(result).items() if k not in arrays}
    _with(path, ".json").write_text(json.dumps(meta, default=jsonable))
    return path


def load_result(cls, path: "str | Path"):
    """The ``cls`` instance :func:`save_result` wrote at ``path``."""
    path = _stem(path)
    meta = json.loads(_with(path, ".json").read_text())
    with np.load(_with(path, ".npz")) as arrays:
        meta.update({k: arrays[k] for k in arrays.files})
    return cls(**meta)


def _stem(path: "str | Path") -> Path:
    """``path`` without a ``.json`` / ``.npz`` suffix (other dots are kept)."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".json", ".npz") else path


def _with(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)
