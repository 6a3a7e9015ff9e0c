"""Name or path -> card -> nn.Module: cards, the name catalog, downloads, checkpoint formats and
the one loader. The zoo hands out models and cards; it knows nothing of inference, evaluation,
training or the CLI.

- `cards`: ModelCard / EnsembleCard / ChainCard, reading cards and MSST YAMLs;
- `catalog`: the known names (models/, pretrained/, the user's imports);
- `download`: sha256-checked, resumable, offline-aware downloads into the cache;
- `formats`: checkpoint readers (MSST .ckpt/.pth, safetensors; one per format);
- `loader`: `load_model` and `resolve`, the single path from a name or file to a module.
"""

from separator.zoo.cards import (
    ENSEMBLE_METHODS,
    Card,
    ChainCard,
    EnsembleCard,
    ModelCard,
    read_any_card,
    read_card,
    save_card,
)
from separator.zoo.catalog import DEFAULT_MODEL, all_cards, find_card
from separator.zoo.loader import build_model, load_card, load_model, resolve, weights_file

__all__ = [
    "DEFAULT_MODEL",
    "ENSEMBLE_METHODS",
    "Card",
    "ChainCard",
    "EnsembleCard",
    "ModelCard",
    "all_cards",
    "build_model",
    "find_card",
    "load_card",
    "load_model",
    "read_any_card",
    "read_card",
    "resolve",
    "save_card",
    "weights_file",
]
