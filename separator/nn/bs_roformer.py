"""Band-Split RoFormer (Lu et al., "Music Source Separation with Band-Split RoPE Transformer",
arXiv 2309.02612; SDX23 winner). Fixed, non-overlapping bands given by `freqs_per_bands`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from separator.nn.config import BSRoformerConfig
from separator.nn.roformer import RoformerBase, roformer_family


class BSRoformer(RoformerBase):
    """BS-RoFormer with MSST's parameter layout. Keyword arguments: an MSST `model:` section."""

    _extra_mask_layer = 0
    config_class = BSRoformerConfig

    def __init__(self, *, sample_rate: int = 44100, **model: Any) -> None:
        config = self.config_class.from_dict(model)
        widths = [2 * f * config.audio_channels for f in config.freqs_per_bands]
        # BS bands are consecutive: band k reads the next widths[k] features (f·s·c order).
        super().__init__(config, widths, None, final_norm=True, sample_rate=sample_rate)

    def _assemble_masks(self, masks: Tensor) -> Tensor:
        # Bands tile the spectrum in order, so the band features already are the full spectrum.
        return masks


def _msst_match(model: Mapping[str, Any]) -> int:
    """A RoFormer section without Mel bands: MSST's BS-RoFormer (its band layout may default).

    The variants' own keys (conformer stacks, value residuals) score higher in their families.
    """
    if "num_bands" in model or not {"dim", "depth"} <= set(model):
        return 0
    return 2 if "freqs_per_bands" in model else 1


FAMILY = roformer_family("bs_roformer", BSRoformer, _msst_match)
