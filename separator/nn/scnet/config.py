"""SCNet configurations: frozen dataclasses whose fields are the keys of an MSST `model:` section.

Fact source: the constructor signatures of `SCNet` (models/scnet/scnet.py, also scnet_masked.py)
and `SCNet_Tran` (models/scnet/scnet_tran.py) in MSST at commit ccc011a. MSST builds them as
`Class(**config.model)`, so a key the constructor does not take is an error there and here.
"""

from __future__ import annotations

from dataclasses import dataclass

from separator.errors import ConfigError
from separator.nn.msst_config import positive


@dataclass(frozen=True)
class SCNetConfig:
    """SCNet (Tong et al., "SCNet: Sparse Compression Network for Music Source Separation",
    arXiv 2401.13276), MSST names and defaults."""

    sources: tuple[str, ...] = ("drums", "bass", "other", "vocals")
    audio_channels: int = 2
    dims: tuple[int, ...] = (4, 32, 64, 128)
    nfft: int = 4096
    hop_size: int = 1024
    win_size: int = 4096
    normalized: bool = True
    band_SR: tuple[float, ...] = (0.175, 0.392, 0.433)
    band_stride: tuple[int, ...] = (1, 4, 16)
    band_kernel: tuple[int, ...] = (3, 4, 16)
    conv_depths: tuple[int, ...] = (3, 2, 1)
    compress: float = 4
    conv_kernel: int = 3
    num_dplayer: int = 6
    expand: int = 1

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("model.sources must name at least one stem")
        positive("model.audio_channels", self.audio_channels)
        if len(self.dims) < 2:
            raise ConfigError(f"model.dims needs at least 2 entries, got {list(self.dims)}")
        positive("model.dims", *self.dims)
        if self.dims[0] != 2 * self.audio_channels:
            raise ConfigError(
                f"model.dims[0]={self.dims[0]} must be 2 * audio_channels = "
                f"{2 * self.audio_channels} (real and imaginary part of each channel)"
            )
        positive("model.nfft / hop_size / win_size", self.nfft, self.hop_size, self.win_size)
        if self.win_size > self.nfft:
            raise ConfigError(f"model.win_size={self.win_size} exceeds model.nfft={self.nfft}")
        for name in ("band_SR", "band_stride", "band_kernel", "conv_depths"):
            if len(getattr(self, name)) != 3:
                raise ConfigError(f"model.{name} needs 3 entries (low, mid, high bands)")
        positive("model.band_stride / band_kernel", *self.band_stride, *self.band_kernel)
        low, mid = self.band_SR[0], self.band_SR[1]
        if not (0 < low and 0 < mid and low + mid < 1):
            raise ConfigError(
                f"model.band_SR={list(self.band_SR)}: the low and mid shares must be positive "
                "and sum to less than 1"
            )
        positive("model.conv_depths", *self.conv_depths)
        if self.conv_kernel % 2 != 1:
            raise ConfigError(f"model.conv_kernel={self.conv_kernel} must be odd")
        if any(int(d / self.compress) < 1 for d in self.dims[1:]):
            raise ConfigError(f"model.compress={self.compress} leaves no hidden channels")
        if self.num_dplayer < 0 or self.num_dplayer % 2:
            # MSST builds an odd count but its forward fails: the decoder would get rFFT features.
            raise ConfigError(f"model.num_dplayer={self.num_dplayer} must be even (>= 0)")
        positive("model.expand", self.expand)

    @property
    def num_stems(self) -> int:
        return len(self.sources)


@dataclass(frozen=True)
class SCNetTranConfig(SCNetConfig):
    """SCNet_Tran: the dual-path LSTMs replaced by RoPE transformers."""

    tran_rotary_embedding_dim: int = 64
    tran_depth: int = 1
    tran_heads: int = 8
    tran_dim_head: int = 64
    tran_attn_dropout: float = 0.0
    tran_ff_dropout: float = 0.0
    tran_flash_attn: bool = False  # SDPA or einsum-softmax in MSST: the same maths

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("model.tran_depth / tran_heads / tran_dim_head", self.tran_depth,
                 self.tran_heads, self.tran_dim_head)  # fmt: skip
        rot = self.tran_rotary_embedding_dim
        if rot < 2 or rot % 2 or rot > self.tran_dim_head:
            raise ConfigError(
                f"model.tran_rotary_embedding_dim={rot} must be even, >= 2 and at most "
                f"tran_dim_head={self.tran_dim_head}"
            )
        for name in ("tran_attn_dropout", "tran_ff_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1)")
