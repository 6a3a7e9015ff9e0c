"""Mel-Band RoFormer (Wang et al., "Mel-Band RoFormer for Music Source Separation",
arXiv 2310.01809). Overlapping bands on the mel scale; overlapping masks are averaged per bin."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from separator.errors import ConfigError
from separator.nn.bands import band_feature_index, mel_band_matrix
from separator.nn.config import MelRoformerConfig
from separator.nn.roformer import RoformerBase, roformer_family


class MelBandRoformer(RoformerBase):
    """Mel-Band RoFormer with MSST's parameter layout. Keyword arguments: an MSST `model:` section.

    Unlike BS-RoFormer, every transformer has its own output norm and there is no final norm.
    """

    _extra_mask_layer = 1
    config_class = MelRoformerConfig
    _mel_edges = "forced"  # see `mel_band_matrix`

    def __init__(self, **model: Any) -> None:
        config = self.config_class.from_dict(model)
        try:
            cover = mel_band_matrix(
                config.sample_rate, config.stft_n_fft, config.num_bands, edges=self._mel_edges
            )
        except ValueError as e:  # MSST asserts the same coverage
            raise ConfigError(f"model.num_bands: {e}") from None
        bins = [row.nonzero()[0].tolist() for row in cover]
        index = band_feature_index(bins, config.audio_channels)
        widths = [len(i) for i in index]
        super().__init__(config, widths, index, final_norm=False, sample_rate=config.sample_rate)
        self.register_buffer("_feature_index", torch.cat(index), persistent=False)
        # How many bands cover each feature: overlapping band masks are averaged.
        cpu = torch.device("cpu")  # also under `with torch.device("meta")`
        count = torch.zeros(self.n_bins * config.audio_channels * 2, device=cpu)
        count.index_add_(0, self._feature_index, torch.ones(len(self._feature_index), device=cpu))
        self.register_buffer("_band_count", count, persistent=False)

    def _assemble_masks(self, masks: Tensor) -> Tensor:
        rows, n, _ = masks.shape
        full = masks.new_zeros(rows, n, self._band_count.numel())
        full.index_add_(2, self._feature_index, masks)
        return full / self._band_count


def _msst_match(model: Mapping[str, Any]) -> int:
    """A RoFormer section with `num_bands`: MSST's Mel-Band RoFormer."""
    if "freqs_per_bands" in model:
        return 0
    return 2 if "num_bands" in model and {"dim", "depth"} <= set(model) else 0


FAMILY = roformer_family("mel_band_roformer", MelBandRoformer, _msst_match)
