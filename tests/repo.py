"""Where the repository is, for tests that read its notebooks, scripts and files."""

from pathlib import Path

#: The repository's root folder.
ROOT = Path(__file__).resolve().parents[1]
