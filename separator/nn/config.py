"""Model configurations: frozen dataclasses whose fields are the keys of an MSST YAML `model:` section.

Fact sources: the constructor signatures of `BSRoformer` and `MelBandRoformer` in ZFTurbo's
Music-Source-Separation-Training (2024-11 revision), which the community checkpoints were trained
with, and the YAML configs shipped beside those checkpoints.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from separator.errors import ConfigError

# MSST's default BS-RoFormer band layout for n_fft 2048 (62 bands, 1025 bins).
DEFAULT_FREQS_PER_BANDS: tuple[int, ...] = (
    (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)
)

# Keys that some MSST revisions or forks write but that change nothing when false.
_DROPPED_KEYS = ("sage_attention",)


@dataclass(frozen=True)
class RoformerConfig:
    """Fields shared by BS-RoFormer and Mel-Band RoFormer (MSST names and defaults)."""

    dim: int
    depth: int
    stereo: bool = False
    num_stems: int = 1
    time_transformer_depth: int = 2
    freq_transformer_depth: int = 2
    linear_transformer_depth: int = 0
    dim_head: int = 64
    heads: int = 8
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    flash_attn: bool = True  # we always use scaled_dot_product_attention: same math either way
    dim_freqs_in: int = 1025  # accepted for MSST configs; the bins follow from stft_n_fft
    stft_n_fft: int = 2048
    stft_hop_length: int = 512
    stft_win_length: int = 2048
    stft_normalized: bool = False
    mask_estimator_depth: int = 2
    multi_stft_resolution_loss_weight: float = 1.0
    multi_stft_resolutions_window_sizes: tuple[int, ...] = (4096, 2048, 1024, 512, 256)
    multi_stft_hop_size: int = 147
    multi_stft_normalized: bool = False
    mlp_expansion_factor: int = 4
    use_torch_checkpoint: bool = False
    skip_connection: bool = False
    # Zero the DC bin of every estimated stem. False reproduces the 2024 MSST code that the
    # published checkpoints were trained with.
    zero_dc: bool = False

    def __post_init__(self) -> None:
        for name in ("dim", "depth", "num_stems", "dim_head", "heads", "stft_n_fft",
                     "stft_hop_length", "stft_win_length", "mask_estimator_depth",
                     "mlp_expansion_factor"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("time_transformer_depth", "freq_transformer_depth", "linear_transformer_depth"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        if self.stft_win_length > self.stft_n_fft:
            raise ConfigError("model.stft_win_length must not exceed model.stft_n_fft")
        for name in ("attn_dropout", "ff_dropout"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        object.__setattr__(
            self, "multi_stft_resolutions_window_sizes",
            tuple(int(w) for w in self.multi_stft_resolutions_window_sizes),
        )

    @property
    def audio_channels(self) -> int:
        return 2 if self.stereo else 1

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RoformerConfig:
        """Build from an MSST `model:` mapping. Unknown keys raise ConfigError naming the key."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key in _DROPPED_KEYS:
                if value:
                    raise ConfigError(f"model.{key}={value!r} is not supported by separator")
                warnings.warn(f"model.{key} is ignored (dropped from MSST)", stacklevel=2)
                continue
            if key not in names:
                raise ConfigError(
                    f"unknown key model.{key} for {cls.__name__} "
                    f"(known keys: {', '.join(sorted(names))})"
                )
            kwargs[key] = value
        missing = [n for n in ("dim", "depth") if n not in kwargs]
        if missing:
            raise ConfigError(f"model config lacks required key(s): {', '.join(missing)}")
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ConfigError(f"bad model config: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for tuples) suitable for YAML/JSON."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


@dataclass(frozen=True)
class BSRoformerConfig(RoformerConfig):
    freqs_per_bands: tuple[int, ...] = field(default=DEFAULT_FREQS_PER_BANDS)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "freqs_per_bands", tuple(int(f) for f in self.freqs_per_bands))
        from separator.nn.bands import check_bs_bands

        try:
            check_bs_bands(self.freqs_per_bands, self.stft_n_fft)
        except ValueError as e:
            raise ConfigError(f"model.freqs_per_bands: {e}") from None


@dataclass(frozen=True)
class MelRoformerConfig(RoformerConfig):
    num_bands: int = 60
    sample_rate: int = 44100
    match_input_audio_length: bool = False  # accepted; our models always return the input length
    mask_estimator_depth: int = 1
    attn_dropout: float = 0.1
    ff_dropout: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_bands < 2:
            raise ConfigError(f"model.num_bands must be at least 2, got {self.num_bands}")
