"""Torch modules only, one module (or folder) per model family, and the family registry.

`nn` imports nothing of the package but the errors: models know nothing of chunking, I/O, cards
or the CLI. `FAMILIES` maps a card's `architecture` to its `Family` (see `separator.nn.family`).
"""

from separator.nn.bs_roformer import BSRoformer
from separator.nn.config import BSRoformerConfig, MelRoformerConfig, RoformerConfig
from separator.nn.conformer import BSConformer, MelBandConformer
from separator.nn.experimental import BSRoformerExperimental, MelBandRoformerExperimental
from separator.nn.family import Family, set_io
from separator.nn.mel_roformer import MelBandRoformer
from separator.nn.registry import (
    FAMILIES,
    get_family,
    infer_msst_family,
    msst_model_section,
    register,
    unregister,
)

__all__ = [
    "FAMILIES",
    "BSConformer",
    "BSRoformer",
    "BSRoformerConfig",
    "BSRoformerExperimental",
    "Family",
    "MelBandConformer",
    "MelBandRoformer",
    "MelBandRoformerExperimental",
    "MelRoformerConfig",
    "RoformerConfig",
    "get_family",
    "infer_msst_family",
    "msst_model_section",
    "register",
    "set_io",
    "unregister",
]
