"""BandIt (MSST `bandit`): the band-split RNN for cinematic and music separation, MSST's
`MultiMaskMultiSourceBandSplitRNNSimple` (ccc011a, `models/bandit/core/model/bsrnn/wrapper.py`).

The card's `model:` mapping is MSST's `model:` section (the constructor's keyword arguments) plus
`audio_channels` (MSST's `audio.num_channels`, 2 if absent): the model separates each channel on
its own and would take any count, so the count the checkpoint was trained for comes from there.
Quirks of the reference that its checkpoints depend on, reproduced here:
- the STFT ignores the config: MSST's wrapper hands its STFT arguments to a Lightning base that
  drops them, so it always runs torchaudio's Spectrogram with n_fft 2048, hop 512, a 2048 Hann
  window buffer, `center=True`, `pad_mode="constant"` and torchaudio's `normalized=True` (divide
  by the window's L2 norm). The band layout is still built from the config's `n_fft` and `fs`, so
  only `n_fft: 2048` runs; `win_length`, `hop_length`, `window_fn`, `wkwargs`, `power`, `center`,
  `normalized`, `pad_mode` and `onesided` have no effect;
- a band's input features are all its real parts, then all its imaginary parts; its mask
  features interleave real and imaginary parts per bin;
- overlapping layouts ("musical") register the float64 `freq_weights/{k}` buffers whatever
  `use_freq_weights` says, and apply them only when it is true;
- `cond_dim` is accepted and unused (MSST's wrapper never hands it to the mask estimators),
  `normalize_input` is stored and unused; a stem named "mne:+" gets no estimator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from separator.errors import ConfigError
from separator.nn.bsrnn import (
    BSRNN,
    BandLayout,
    CoreConfig,
    SpecParams,
    WindowBuffer,
    activation,
    card_stems,
    musical_layout,
    separate,
    vocal_layout,
)
from separator.nn.family import Family, msst_audio, set_io
from separator.nn.recurrent import ResidualRNN

_CPU = torch.device("cpu")
# The STFT MSST's BandIt runs, whatever its config says (see the module docstring).
STFT = SpecParams(n_fft=2048, win_length=2048, hop_length=512, center=True, pad_mode="constant")
_VOCAL_SPECS = ("dnr:speech", "dnr:vox7", "musdb:vocals", "musdb:vox7")


@dataclass(frozen=True)
class BanditConfig:
    """MSST `MultiMaskMultiSourceBandSplitRNNSimple` keyword arguments (names and defaults)."""

    in_channel: int
    stems: tuple[str, ...]
    band_specs: str
    fs: int = 44100
    require_no_overlap: bool = False  # MSST's overlap check never fires: accepted, no effect
    require_no_gap: bool = True
    normalize_channel_independently: bool = False
    treat_channel_as_feature: bool = True  # the same maths for in_channel 1
    n_sqm_modules: int = 12
    emb_dim: int = 128
    rnn_dim: int = 256
    cond_dim: int = 0  # never reaches MSST's mask estimators: accepted, no effect
    bidirectional: bool = True
    rnn_type: str = "LSTM"
    mlp_dim: int = 512
    hidden_activation: str = "Tanh"
    hidden_activation_kwargs: dict | None = None
    complex_mask: bool = True
    n_fft: int = 2048
    # The STFT settings below are dropped by MSST's wrapper (module docstring): accepted, unused.
    win_length: int | None = 2048
    hop_length: int = 512
    window_fn: str = "hann_window"
    wkwargs: dict | None = None
    power: int | None = None
    center: bool = True
    normalized: bool = True
    pad_mode: str = "constant"
    onesided: bool = True
    n_bands: int | None = None
    use_freq_weights: bool = True
    normalize_input: bool = False  # stored and unused by MSST
    mult_add_mask: bool = False
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "stems", tuple(str(s) for s in self.stems))
        if self.in_channel != 1:
            raise ConfigError(
                f"model.in_channel must be 1, got {self.in_channel}: MSST's BandIt folds audio "
                "channels into the batch and feeds its bands one channel at a time"
            )
        if self.normalize_channel_independently:
            raise ConfigError("model.normalize_channel_independently is not implemented in MSST")
        if self.mult_add_mask:
            raise ConfigError(
                "model.mult_add_mask cannot be built: MSST ccc011a never defines its "
                "MultAddMaskEstimationModule"
            )
        if self.n_fft != STFT.n_fft:
            raise ConfigError(
                f"model.n_fft must be 2048, got {self.n_fft}: MSST's BandIt always runs a "
                "2048-point STFT (its config's STFT settings are dropped), so bands laid out for "
                "another n_fft do not fit the spectrum"
            )
        if not isinstance(self.band_specs, str):
            raise ConfigError("model.band_specs must be a name such as 'musical' (MSST needs one)")
        if not isinstance(self.fs, (int, float)) or self.fs <= 0:
            raise ConfigError(f"model.fs must be a positive sample rate, got {self.fs!r}")
        self.core()  # checks the shared fields

    @property
    def mask_stems(self) -> tuple[str, ...]:
        """The stems with a mask estimator (MSST drops "mne:+")."""
        return tuple(s for s in self.stems if s != "mne:+")

    def layout(self) -> BandLayout:
        """MSST `get_band_specs`: the same name matching, in the same order."""
        name = self.band_specs
        if name in _VOCAL_SPECS:
            layout = vocal_layout(self.n_fft, self.fs)
        elif any(other in name for other in ("tribark", "bark", "erb")):
            raise ConfigError(f"model.band_specs {name!r} is not supported (needs spafe)")
        elif "musical" in name:
            if not isinstance(self.n_bands, int) or self.n_bands < 1:
                raise ConfigError("model.n_bands must be a positive integer for musical bands")
            layout = musical_layout(self.n_fft, self.fs, self.n_bands)
        elif "mel" in name:
            raise ConfigError(f"model.band_specs {name!r} is not supported (torchaudio mel bands)")
        else:
            raise ConfigError(f"model.band_specs {name!r} is unknown to MSST's BandIt")
        layout.check(require_no_gap=self.require_no_gap)
        return layout

    def core(self) -> CoreConfig:
        return CoreConfig.of(self, self.mask_stems)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BanditConfig:
        return _from_dict(cls, values, "model")


def _from_dict(cls, values: Mapping[str, Any], section: str):
    """A config dataclass from an MSST section; unknown or missing keys are ConfigErrors."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key {section}.{unknown[0]} for {cls.__name__}")
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"bad {section} section for {cls.__name__}: {e}") from None


class _NormFC(nn.Module):
    """One band's input layer (MSST v1 `NormFC`): LayerNorm, then Linear to the embedding."""

    def __init__(self, width: int, emb_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, emb_dim)

    def forward(self, x: Tensor) -> Tensor:
        """The per-band definition (the model runs the batched `BandSplit`)."""
        return self.fc(self.norm(x))


class _NormMLP(nn.Module):
    """One band's mask estimator (MSST v1 `NormMLP`): LayerNorm, Linear + activation, Linear +
    GLU. MSST scripts `hidden` and `output` with TorchScript; the keys are the same."""

    def __init__(self, d_in: int, mlp_dim: int, width: int, act: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.hidden = nn.Sequential(nn.Linear(d_in, mlp_dim), act)
        self.output = nn.Sequential(nn.Linear(mlp_dim, 2 * width), nn.GLU(dim=-1))

    def forward(self, x: Tensor) -> Tensor:
        """The per-band definition (the model runs the batched estimators)."""
        return self.output(self.hidden(self.norm(x)))


class BanditCore(BSRNN):
    """MSST v1's `MultiSourceMultiMaskBandSplitCoreRNN` (`bsrnn.*` in its checkpoints)."""

    def _feature_index(self, start: int, end: int) -> Tensor:
        # MSST v1 lays a band out as (re/im, bin): all real parts, then all imaginary parts.
        bins = 2 * torch.arange(start, end, device=_CPU)
        return torch.cat([bins, bins + 1])

    def _band_module(self, width: int, emb_dim: int) -> nn.Module:
        return _NormFC(width, emb_dim)

    @staticmethod
    def _band_parts(module: nn.Module) -> tuple[nn.LayerNorm, nn.Linear]:
        return module.norm, module.fc

    def _mask_module(self, d_in: int, width: int) -> nn.Module:
        act = activation(self.cfg.hidden_activation, self.cfg.hidden_activation_kwargs)
        return _NormMLP(d_in, self.cfg.mlp_dim, width, act)

    @staticmethod
    def _mask_parts(module: nn.Module) -> tuple[nn.LayerNorm, nn.Linear, nn.Linear]:
        return module.norm, module.hidden[0], module.output[0]

    def _seqband(self, cfg: CoreConfig) -> nn.Module:
        args = (cfg.emb_dim, cfg.rnn_dim, cfg.bidirectional, cfg.rnn_type)
        return nn.ModuleList(ResidualRNN(*args) for _ in range(2 * cfg.n_sqm_modules))


class Bandit(nn.Module):
    """BandIt with MSST's parameter layout. Keyword arguments: an MSST `model:` section.

    forward: (b, s, time) -> (b, n, s, time), the input's length; audio channels are separated
    independently (any count).
    """

    def __init__(self, **model: Any) -> None:
        super().__init__()
        self.config = config = BanditConfig.from_dict(model)
        layout = config.layout()
        self.stft = WindowBuffer(torch.hann_window(STFT.win_length))
        self.istft = WindowBuffer(torch.hann_window(STFT.win_length))
        self.bsrnn = BanditCore(
            config.core(),
            layout,
            store_weights=layout.weights is not None,
            apply_weights=bool(config.use_freq_weights),
        )
        if config.freeze_encoder:  # as MSST: the band split and the RNNs do not train
            for p in [*self.bsrnn.band_split.parameters(), *self.bsrnn.tf_model.parameters()]:
                p.requires_grad_(False)

    def forward(self, audio: Tensor) -> Tensor:
        return separate(self.bsrnn, audio, STFT, self.stft.window, self.istft.window)


def family_build(cls: type[nn.Module], mask_stems: str) -> Callable[..., nn.Module]:
    """The family builder of a BandIt class: `model` is the card's `model:` (MSST's section +
    `audio_channels`); `mask_stems` names the config field of the stems its masks make."""

    def build(
        model: Mapping[str, Any], *, sample_rate: int, stems: Sequence[str], chunk_size: int
    ) -> nn.Module:
        kwargs = dict(model)
        channels = pop_audio_channels(kwargs)
        module = cls(**kwargs)
        return set_io(
            module,
            sample_rate=sample_rate,
            stems=stems,
            chunk_size=chunk_size,
            audio_channels=channels,
            num_stems=len(getattr(module.config, mask_stems)),
        )

    return build


build = family_build(Bandit, "mask_stems")


def _positive(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")
    return value


def msst_channels(config: Mapping[str, Any]) -> int:
    """MSST's `audio.num_channels` (2 if absent)."""
    return _positive((config.get("audio") or {}).get("num_channels", 2), "audio.num_channels")


def pop_audio_channels(kwargs: dict[str, Any]) -> int:
    """Remove the card's `audio_channels` from the constructor arguments (2 if absent)."""
    return _positive(kwargs.pop("audio_channels", 2), "model.audio_channels")


def stems_from_msst(config: Mapping[str, Any], model_stems: Sequence[str]) -> list[str]:
    """Card stem names: `training.instruments` (MSST names outputs by it), else the model's."""
    training = config.get("training") or {}
    names = list(training.get("instruments") or []) or list(model_stems)
    if training.get("target_instrument"):
        raise ConfigError("training.target_instrument: BandIt always returns all its stems")
    if len(names) != len(model_stems):
        raise ConfigError(
            f"training.instruments lists {len(names)} stems but the model has "
            f"{len(model_stems)} ({list(model_stems)})"
        )
    return card_stems(names)


def from_msst(config: Mapping[str, Any]) -> dict[str, Any]:
    """MSST YAML -> card fields; the card's `model:` is MSST's `model:` section as it is."""
    model = dict(config.get("model") or {})
    parsed = BanditConfig.from_dict(model)
    rate, chunk = msst_audio(config)
    stems = stems_from_msst(config, parsed.mask_stems)
    model["audio_channels"] = msst_channels(config)
    return {"model": model, "stems": stems, "sample_rate": rate, "chunk_size": chunk}


def msst_match(model: Mapping[str, Any]) -> int:
    """`band_specs` / `in_channel` are BandIt v1's own keys (v2 says `band_type`, `in_channels`)."""
    keys = set(model)
    return 3 if "band_specs" in keys or "in_channel" in keys else 0


FAMILY = Family(
    name="bandit",
    build=build,
    from_msst=from_msst,
    msst_match=msst_match,
    description="BandIt: band-split RNN, MSST `bandit` (cinematic dialog/music/effects)",
)
