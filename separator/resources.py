"""Where the packaged model cards (`models/`) and the embedded default model (`pretrained/`) are.

In a wheel they are installed inside the package (`separator/builtin_models`,
`separator/builtin_pretrained`); in a source checkout they are the top-level folders.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _find(installed: str, source: str) -> Path:
    inside = _PACKAGE / installed
    return inside if inside.is_dir() else _PACKAGE.parent / source


def models_dir() -> Path:
    """Folder of the model cards shipped with separator."""
    return _find("builtin_models", "models")


def pretrained_dir() -> Path:
    """Folder of the embedded default model (weights and card)."""
    return _find("builtin_pretrained", "pretrained")
