"""Torch modules only: the two RoFormers and their building blocks (no I/O, losses or chunking)."""

from separator.nn.bs_roformer import BSRoformer
from separator.nn.config import BSRoformerConfig, MelRoformerConfig, RoformerConfig
from separator.nn.mel_roformer import MelBandRoformer

# Registry: MSST `model_type` names -> class.
ARCHITECTURES = {
    "bs_roformer": BSRoformer,
    "mel_band_roformer": MelBandRoformer,
}

__all__ = [
    "ARCHITECTURES",
    "BSRoformer",
    "BSRoformerConfig",
    "MelBandRoformer",
    "MelRoformerConfig",
    "RoformerConfig",
]
