"""The transformers range mesa_viz is tested with, checked at run time."""

from __future__ import annotations

TESTED = ((5, 20), (5, 25))          # [low, high) on (major, minor)


def _version_tuple(text: str) -> tuple[int, int]:
    parts = text.split(".")
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


def check_transformers(version: str | None = None) -> str:
    """Raise RuntimeError unless transformers is in the tested range."""
    if version is None:
        import transformers
        version = transformers.__version__
    low, high = TESTED
    if not (low <= _version_tuple(version) < high):
        raise RuntimeError(
            f"transformers {version} is outside the range mesa_viz is tested with "
            f"(>={low[0]}.{low[1]},<{high[0]}.{high[1]}): its attention and rotary "
            "internals may differ; install 'transformers>=5.20,<5.25'")
    return version
