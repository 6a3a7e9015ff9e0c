"""separator: music source separation (BS-RoFormer, Mel-Band RoFormer and more) with a streaming
CLI, a Python API, museval-identical evaluation and training recipes.

The package, by job (see README "Layout"):
    nn/          torch modules, one per model family, and the family registry
    zoo/         name or path -> card -> nn.Module: cards, catalog, downloads, checkpoint formats
    inference/   streaming engine, audio I/O, stem plans, pipelines, ensembles, Separator
    evaluation/  metrics, BSS Eval, the MUSDB18 runner and its reports
    training/    recipes, data and augmentation, losses, the trainer
    cli/         the `separate` and `separator` commands, one module per command group
    datasets.py  MUSDB18HQ-layout tracks;  files.py  atomic writes, sha256, safe names, YAML
    errors.py    the exception types users can cause

    from separator import Separator, load_separator, load_model, separate_tensor
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from separator.errors import SeparatorError

__version__ = "0.1.0"
__all__ = [
    "Separator",
    "SeparatorError",
    "__version__",
    "load_model",
    "load_separator",
    "separate_tensor",
]

# Imported on first use: `import separator` (and the CLI, which sets torch's allocator options
# before torch loads) stays light until a model is needed.
_LAZY = {
    "Separator": "separator.inference",
    "load_separator": "separator.inference",
    "separate_tensor": "separator.inference",
    "load_model": "separator.zoo",
}

if TYPE_CHECKING:
    from separator.inference import Separator, load_separator, separate_tensor
    from separator.zoo import load_model


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'separator' has no attribute {name!r}")
