"""BandIt v2 (MSST `bandit_v2`): MSST's `Bandit` (ccc011a, `models/bandit_v2/bandit.py`), the
band-split RNN of the cinematic (DnR v3) checkpoints.

MSST builds it as `Bandit(**config.kwargs)`: its config keeps the model in a `kwargs:` section,
not `model:`. The card's `model:` mapping is that `kwargs:` section plus `audio_channels` (MSST's
`audio.num_channels`, 2 if absent; each channel is separated on its own). Differences from v1,
reproduced here:
- the STFT follows the config (n_fft, win_length, hop_length, window, `pad_mode`, `normalized`,
  still through torchaudio, whose `normalized=True` divides by the window's L2 norm);
- a band's input features interleave real and imaginary parts per bin (v1: all real, then all
  imaginary);
- the band layout uses `fs` (class default 44100), not `audio.sample_rate`: the real config runs
  at 48 kHz with a layout computed for 44.1 kHz. For musical bands that gives the same bins (the
  layout scales with fs) unless fs / n_fft falls below 8.18 Hz (MIDI note 0);
- `freq_weights/{k}` exist only with `use_freq_weights`; every mask-estimator tensor is also
  registered a second time under `combined` (MSST's Sequential of the same three modules), and
  the RNNs sit at even indices of `tf_model.seqband` (a `Transpose` follows each);
- the `*_precisions` arguments are accepted and unused, as in MSST.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from separator.errors import ConfigError
from separator.nn.bandit import (
    _from_dict,
    family_build,
    msst_channels,
    stems_from_msst,
)
from separator.nn.bsrnn import (
    BSRNN,
    CoreConfig,
    SpecParams,
    WindowBuffer,
    activation,
    musical_layout,
    separate,
)
from separator.nn.family import Family, msst_audio
from separator.nn.recurrent import ResidualRNN, Transpose

_CPU = torch.device("cpu")
# torch window functions MSST's `torch.__dict__[window_fn]` can name (the values come from the
# checkpoint's `stft.window` / `istft.window`; the function only sets their length and start).
_WINDOWS = ("hann_window", "hamming_window", "blackman_window", "bartlett_window", "kaiser_window")


@dataclass(frozen=True)
class BanditV2Config:
    """MSST `Bandit` keyword arguments (names and defaults)."""

    in_channels: int
    stems: tuple[str, ...]
    band_type: str = "musical"
    n_bands: int = 64
    require_no_overlap: bool = False  # MSST's overlap check never fires: accepted, no effect
    require_no_gap: bool = True
    normalize_channel_independently: bool = False
    treat_channel_as_feature: bool = True
    n_sqm_modules: int = 12
    emb_dim: int = 128
    rnn_dim: int = 256
    bidirectional: bool = True
    rnn_type: str = "LSTM"
    mlp_dim: int = 512
    hidden_activation: str = "Tanh"
    hidden_activation_kwargs: dict | None = None
    complex_mask: bool = True
    use_freq_weights: bool = True
    n_fft: int = 2048
    win_length: int | None = 2048
    hop_length: int | None = 512
    window_fn: str = "hann_window"
    wkwargs: dict | None = None
    power: int | None = None
    center: bool = True
    normalized: bool | str = True
    pad_mode: str = "constant"
    onesided: bool = True
    fs: int = 44100
    # Accepted and unused by MSST.
    stft_precisions: Any = "32"
    bandsplit_precisions: Any = "bf16"
    tf_model_precisions: Any = "bf16"
    mask_estim_precisions: Any = "bf16"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stems", tuple(str(s) for s in self.stems))
        if self.in_channels != 1:
            raise ConfigError(
                f"kwargs.in_channels must be 1, got {self.in_channels}: MSST's Bandit reshapes "
                "the input to mono rows and feeds its bands one channel at a time"
            )
        if self.band_type != "musical":
            raise ConfigError(
                f"kwargs.band_type must be 'musical' (MSST asserts it), got {self.band_type!r}"
            )
        if self.normalize_channel_independently or not self.treat_channel_as_feature:
            raise ConfigError(
                "kwargs.normalize_channel_independently / treat_channel_as_feature=false are "
                "not implemented in MSST"
            )
        if self.power is not None:
            raise ConfigError("kwargs.power must be null: the model works on complex spectra")
        if not self.center:
            raise ConfigError(
                "kwargs.center must be true: without centring the iSTFT cannot invert the "
                "frame edges (MSST's forward fails there too)"
            )
        if not self.onesided:
            raise ConfigError("kwargs.onesided must be true: the masks cover n_fft/2+1 bins")
        if self.window_fn not in _WINDOWS:
            raise ConfigError(f"kwargs.window_fn must be one of {', '.join(_WINDOWS)}")
        if self.normalized not in (True, False, "window", "frame_length"):
            raise ConfigError("kwargs.normalized must be true, false, 'window' or 'frame_length'")
        if not isinstance(self.n_bands, int) or self.n_bands < 1:
            raise ConfigError(f"kwargs.n_bands must be a positive integer, got {self.n_bands!r}")
        if self.n_fft < 2 or self.spec().win_length > self.n_fft or self.spec().hop_length < 1:
            raise ConfigError("kwargs.n_fft / win_length / hop_length do not make an STFT")
        self.core()  # checks the shared fields
        self.window()  # checks window_fn with wkwargs

    def spec(self) -> SpecParams:
        """torchaudio's defaults: win_length n_fft, hop_length win_length // 2."""
        win = self.win_length if self.win_length is not None else self.n_fft
        hop = self.hop_length if self.hop_length is not None else win // 2
        norm = {True: "window", "window": "window", "frame_length": True}.get(self.normalized)
        return SpecParams(self.n_fft, win, hop, bool(self.center), self.pad_mode, norm or False)

    def window(self) -> Tensor:
        fn = getattr(torch, self.window_fn)
        try:
            return fn(self.spec().win_length, **(self.wkwargs or {}))
        except TypeError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"kwargs.wkwargs do not fit {self.window_fn}: {first}") from None

    def core(self) -> CoreConfig:
        return CoreConfig.of(self, self.stems)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BanditV2Config:
        return _from_dict(cls, values, "kwargs")


class _NormFC(nn.Module):
    """One band's input layer (MSST v2 `NormFC`): `combined` = LayerNorm, Linear."""

    def __init__(self, width: int, emb_dim: int) -> None:
        super().__init__()
        self.combined = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, emb_dim))

    def forward(self, x: Tensor) -> Tensor:
        """The per-band definition (the model runs the batched `BandSplit`)."""
        return self.combined(x)


class _NormMLP(nn.Module):
    """One band's mask estimator (MSST v2 `NormMLP`): `norm`, `hidden`, `output`, and `combined`
    holding the same three modules, so every tensor is in the state dict twice."""

    def __init__(self, d_in: int, mlp_dim: int, width: int, act: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.hidden = nn.Sequential(nn.Linear(d_in, mlp_dim), act)
        self.output = nn.Sequential(nn.Linear(mlp_dim, 2 * width), nn.GLU(dim=-1))
        self.combined = nn.Sequential(self.norm, self.hidden, self.output)

    def forward(self, x: Tensor) -> Tensor:
        """The per-band definition (the model runs the batched estimators)."""
        return self.combined(x)


class BanditV2Core(BSRNN):
    """MSST v2's band split, RNNs and mask estimators (top-level keys in its checkpoints)."""

    def _feature_index(self, start: int, end: int) -> Tensor:
        # MSST v2 lays a band out as (bin, re/im): the spectrum's own interleaved order.
        return torch.arange(2 * start, 2 * end, device=_CPU)

    def _band_module(self, width: int, emb_dim: int) -> nn.Module:
        return _NormFC(width, emb_dim)

    @staticmethod
    def _band_parts(module: nn.Module) -> tuple[nn.LayerNorm, nn.Linear]:
        return module.combined[0], module.combined[1]

    def _mask_module(self, d_in: int, width: int) -> nn.Module:
        act = activation(self.cfg.hidden_activation, self.cfg.hidden_activation_kwargs)
        return _NormMLP(d_in, self.cfg.mlp_dim, width, act)

    @staticmethod
    def _mask_parts(module: nn.Module) -> tuple[nn.LayerNorm, nn.Linear, nn.Linear]:
        return module.norm, module.hidden[0], module.output[0]

    def _seqband(self, cfg: CoreConfig) -> nn.Module:
        args = (cfg.emb_dim, cfg.rnn_dim, cfg.bidirectional, cfg.rnn_type)
        layers: list[nn.Module] = []
        for _ in range(2 * cfg.n_sqm_modules):
            layers += [ResidualRNN(*args), Transpose()]
        return nn.Sequential(*layers)


class BanditV2(BanditV2Core):
    """BandIt v2 with MSST's parameter layout. Keyword arguments: an MSST `kwargs:` section.

    forward: (b, s, time) -> (b, n, s, time), the input's length; audio channels are separated
    independently (any count).
    """

    def __init__(self, **kwargs: Any) -> None:
        config = BanditV2Config.from_dict(kwargs)
        layout = musical_layout(config.n_fft, config.fs, config.n_bands)
        layout.check(require_no_gap=config.require_no_gap)
        weights = bool(config.use_freq_weights)
        super().__init__(config.core(), layout, store_weights=weights, apply_weights=weights)
        self.config = config
        self.stft = WindowBuffer(config.window())
        self.istft = WindowBuffer(config.window())

    def forward(self, audio: Tensor) -> Tensor:
        return separate(self, audio, self.config.spec(), self.stft.window, self.istft.window)


build = family_build(BanditV2, "stems")  # MSST `kwargs:` + `audio_channels`


def from_msst(config: Mapping[str, Any]) -> dict[str, Any]:
    """MSST YAML -> card fields; the card's `model:` is MSST's `kwargs:` section as it is."""
    if not isinstance(config.get("kwargs"), Mapping):
        raise ConfigError("a bandit_v2 config keeps the model in a `kwargs:` section (MSST)")
    model = dict(config["kwargs"])
    parsed = BanditV2Config.from_dict(model)
    rate, chunk = msst_audio(config)
    stems = stems_from_msst(config, parsed.stems)
    model["audio_channels"] = msst_channels(config)
    return {"model": model, "stems": stems, "sample_rate": rate, "chunk_size": chunk}


def msst_match(model: Mapping[str, Any]) -> int:
    """`in_channels` with `stems` (or `band_type`) is BandIt v2's (v1 says `in_channel`); pass a
    v2 YAML's `kwargs:` section, where MSST keeps the model."""
    keys = set(model)
    if "in_channel" in keys or "band_specs" in keys:
        return 0
    return 3 if "in_channels" in keys and ({"stems", "band_type"} & keys) else 0


FAMILY = Family(
    name="bandit_v2",
    build=build,
    from_msst=from_msst,
    msst_match=msst_match,
    description="BandIt v2: band-split RNN, MSST `bandit_v2` (cinematic dialog/music/effects)",
)
