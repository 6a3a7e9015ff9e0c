"""Model configurations: frozen dataclasses whose fields are the keys of an MSST `model:` section.

Fact sources: the constructor signatures in ZFTurbo's Music-Source-Separation-Training (MSST):
`BSRoformer` / `MelBandRoformer` of 2024-11 (9430afc), which most community checkpoints were
trained with, and their 2025-26 revisions at ccc011a (`zero_dc`, `use_pope`), the experimental
RoFormers (`models/bs_roformer/*_experimental.py`) and the Conformers
(`models/bs_roformer/{bs,mel_band}_conformer.py`), plus the YAML configs shipped with them.

A family's config class is the shared `RoformerConfig` plus a few field groups (mixins below):
its per-axis stacks (transformers or conformers), its band layout (BS or Mel), and its options.
Each group validates its own fields (`_check`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from separator.errors import ConfigError

# MSST's default BS-RoFormer band layout for n_fft 2048 (62 bands, 1025 bins).
DEFAULT_FREQS_PER_BANDS: tuple[int, ...] = (
    (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)
)

# Keys that only chose an attention kernel in some MSST revisions (2025-01 to 2026-01: SageAttention
# for RoFormers and Conformers). The weights and the math are the same, so they are accepted.
_KERNEL_KEYS = ("sage_attention",)


def _at_least(config: Any, names: tuple[str, ...], low: int) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"model.{name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class RoformerConfig:
    """Fields every band RoFormer / Conformer of MSST has (MSST names and defaults)."""

    dim: int
    depth: int
    stereo: bool = False
    num_stems: int = 1
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

    # Keys an MSST class of this family rejects, with the reason (a one-line ConfigError).
    _refused: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        for klass in reversed(type(self).__mro__):
            if "_check" in vars(klass):
                klass._check(self)

    def _check(self) -> None:
        _at_least(self, ("dim", "depth", "num_stems", "dim_head", "heads"), 1)
        _at_least(self, ("stft_n_fft", "stft_hop_length", "stft_win_length"), 1)
        _at_least(self, ("mask_estimator_depth", "mlp_expansion_factor"), 1)
        if self.stft_win_length > self.stft_n_fft:
            raise ConfigError("model.stft_win_length must not exceed model.stft_n_fft")
        for name in ("attn_dropout", "ff_dropout"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        object.__setattr__(
            self,
            "multi_stft_resolutions_window_sizes",
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
            if key in _KERNEL_KEYS:
                if value:
                    _warn_kernel(key)
                continue
            if key in cls._refused:
                raise ConfigError(f"model.{key}: {cls._refused[key]}")
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


def _warn_kernel(key: str) -> None:
    # One message from one line: Python's default filter shows it once per process.
    warnings.warn(
        f"model.{key}=true only chose MSST's SageAttention kernel; separator uses the standard "
        "attention kernel (same weights, same math)",
        UserWarning,
        stacklevel=1,
    )


# --- field groups --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Transformers:
    """Per-axis transformer stacks (every RoFormer)."""

    time_transformer_depth: int = 2
    freq_transformer_depth: int = 2
    linear_transformer_depth: int = 0

    def _check(self) -> None:
        names = ("time_transformer_depth", "freq_transformer_depth", "linear_transformer_depth")
        _at_least(self, names, 0)


@dataclass(frozen=True)
class _Conformers:
    """Per-axis conformer stacks (MSST's `bs_conformer` / `mel_band_conformer`, 2025-09)."""

    time_conformer_depth: int = 2
    freq_conformer_depth: int = 2
    linear_conformer_depth: int = 0
    ff_mult: int = 4
    conv_expansion_factor: int = 2
    conv_kernel_size: int = 31

    def _check(self) -> None:
        _at_least(self, ("time_conformer_depth", "freq_conformer_depth"), 0)
        _at_least(self, ("linear_conformer_depth",), 0)
        _at_least(self, ("ff_mult", "conv_expansion_factor", "conv_kernel_size"), 1)
        if self.conv_kernel_size % 2 == 0:  # MSST asserts it: "same" padding needs an odd kernel
            raise ConfigError(f"model.conv_kernel_size must be odd, got {self.conv_kernel_size}")


@dataclass(frozen=True)
class _BSBands:
    freqs_per_bands: tuple[int, ...] = field(default=DEFAULT_FREQS_PER_BANDS)

    def _check(self) -> None:
        object.__setattr__(self, "freqs_per_bands", tuple(int(f) for f in self.freqs_per_bands))
        from separator.nn.bands import check_bs_bands

        try:
            check_bs_bands(self.freqs_per_bands, self.stft_n_fft)
        except ValueError as e:
            raise ConfigError(f"model.freqs_per_bands: {e}") from None


@dataclass(frozen=True)
class _MelBands:
    num_bands: int = 60
    sample_rate: int = 44100
    match_input_audio_length: bool = False  # accepted; our models always return the input length
    mask_estimator_depth: int = 1
    attn_dropout: float = 0.1
    ff_dropout: float = 0.1

    def _check(self) -> None:
        if self.num_bands < 2:
            raise ConfigError(f"model.num_bands must be at least 2, got {self.num_bands}")


@dataclass(frozen=True)
class _HeadOptions:
    """Options of MSST's BS/Mel RoFormer since 2025-09 (ccc011a)."""

    # PoPE (polar positional embedding, MSST 2026-02) instead of RoPE.
    use_pope: bool = False
    # Zero the DC bin of every estimated stem (MSST 2025-09). MSST's default is True, but the
    # 2024 code that most published checkpoints were trained with had no such step, so a config
    # that does not set it gets False, and the 2024 checkpoints keep their exact output. Only a
    # config with `use_pope: true` (written for MSST >= 2026-02, where the default was already
    # True) gets MSST's default when it does not set zero_dc.
    zero_dc: bool | None = None

    def _check(self) -> None:
        if self.zero_dc is None:
            object.__setattr__(self, "zero_dc", bool(self.use_pope))


@dataclass(frozen=True)
class _Streams:
    """Options of MSST's experimental RoFormers (2025-03): value residuals, hyper-connections."""

    use_value_residual_learning: bool = False
    num_residual_streams: int = 1

    _refused: ClassVar[dict[str, str]] = {
        "zero_dc": "MSST's experimental RoFormers have no zero_dc (they never zero the DC bin)",
        "use_pope": "MSST's experimental RoFormers have no PoPE (use_pope)",
    }

    def _check(self) -> None:
        _at_least(self, ("num_residual_streams",), 1)
        if self.linear_transformer_depth > 0:
            raise ConfigError(
                "model.linear_transformer_depth > 0 cannot run in MSST's experimental RoFormers "
                "(their LinearAttention takes no value residual: TypeError in forward)"
            )


@dataclass(frozen=True)
class _ConformerOptions:
    zero_dc: bool = True  # MSST's Conformers have zeroed the DC bin by default from the start

    _refused: ClassVar[dict[str, str]] = {
        "conv_dropout": (
            "MSST's band Conformers take no conv_dropout; the key belongs to the standalone "
            "models/mel_band_conformer.py (lucidrains' conformer layout), which MSST ccc011a "
            "never builds (get_model_from_config picks models.bs_roformer's class first), and "
            "its checkpoints do not fit this layout"
        ),
    }


# --- one config class per family ------------------------------------------------------------
@dataclass(frozen=True)
class BSRoformerConfig(_HeadOptions, _BSBands, _Transformers, RoformerConfig):
    """MSST `bs_roformer` (2024 checkpoints and ccc011a options)."""


@dataclass(frozen=True)
class MelRoformerConfig(_HeadOptions, _MelBands, _Transformers, RoformerConfig):
    """MSST `mel_band_roformer` (2024 checkpoints and ccc011a options)."""


@dataclass(frozen=True)
class BSRoformerExperimentalConfig(_Streams, _BSBands, _Transformers, RoformerConfig):
    """MSST `bs_roformer_experimental`."""


@dataclass(frozen=True)
class MelRoformerExperimentalConfig(_Streams, _MelBands, _Transformers, RoformerConfig):
    """MSST `mel_band_roformer_experimental`."""


@dataclass(frozen=True)
class BSConformerConfig(_ConformerOptions, _BSBands, _Conformers, RoformerConfig):
    """MSST `bs_conformer`."""


@dataclass(frozen=True)
class MelConformerConfig(_ConformerOptions, _MelBands, _Conformers, RoformerConfig):
    """MSST `mel_band_conformer` (models.bs_roformer.mel_band_conformer)."""
