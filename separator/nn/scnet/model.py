"""SCNet and its two MSST variants, and their family records.

Axis legend: b batch, s audio channel, n stem, c feature channels, f STFT bin, t frame.

- `scnet` (MSST models/scnet/scnet.py): STFT with *no window* (MSST passes none to
  `torch.stft`: rectangular), SD encoder, dual-path BiLSTM separation net, SU decoder whose last
  layer emits the stems' complex spectra, iSTFT.
- `scnet_masked` (scnet_masked.py): a Hann window, a learned frequency embedding `pos_embed_f`
  added to the features, and a `mask_layer` turning the decoder output into complex masks that
  multiply the mixture spectrum. Stereo only (MSST's mask layer hard-codes 4 = 2 channels × re/im
  per stem).
- `scnet_tran` (scnet_tran.py): the BiLSTMs replaced by RoPE transformers (`nn.layers`).

All three pad the input on the right so that the frame count is even (the separation net takes
an rFFT along time) and crop the output back: output length = input length, stem axis always
present, as in MSST. The card's `model:` is MSST's `model:` section unchanged (constructor
keyword arguments); `sources` gives the stem count, `audio_channels` the channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from separator.errors import ConfigError
from separator.nn.family import Family, check_channels, msst_audio, msst_stems, set_io
from separator.nn.msst_config import read_section
from separator.nn.scnet.blocks import FusionLayer, SDBlock, SULayer
from separator.nn.scnet.config import SCNetConfig, SCNetTranConfig
from separator.nn.scnet.separation import SeparationNet
from separator.nn.stft import istft, stft


class SCNet(nn.Module):
    """SCNet with MSST's parameter layout. forward: (b, s, time) -> (b, n, s, time)."""

    config_class: type[SCNetConfig] = SCNetConfig
    _transformer = False

    def __init__(self, config: SCNetConfig) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(len(c.dims) - 1):
            self.encoder.append(SDBlock(c.dims[i], c.dims[i + 1], c))
            out = c.dims[i] * (c.num_stems if i == 0 else 1)
            su = SULayer(c.dims[i + 1], out, c.band_stride, c.band_kernel)
            self.decoder.insert(0, nn.ModuleList([FusionLayer(c.dims[i + 1]), su]))
        self.separation_net = SeparationNet(c.dims[-1], c, transformer=self._transformer)
        self.register_buffer("window", self._window(), persistent=False)

    def _window(self) -> Tensor:
        # MSST's scnet.py calls torch.stft without a window: a rectangular one of win_size.
        return torch.ones(self.config.win_size, device=torch.device("cpu"))

    # --- forward --------------------------------------------------------------------------
    def forward(self, audio: Tensor) -> Tensor:
        """audio: (b, s, time) -> (b, n, s, time)."""
        b, s, length = audio.shape
        check_channels(s, self.config.audio_channels)
        hop = self.config.hop_size
        pad = hop - length % hop  # MSST pads a full hop when length is a multiple of it
        if ((length + pad) // hop) % 2 == 0:
            pad += hop  # frames = (length + pad) / hop + 1 must be even for the rFFT
        spec = stft(torch.nn.functional.pad(audio, (0, pad)), **self._stft_args())
        f, t = spec.shape[-2:]
        # (b, s, f, t) complex -> (b, s·2, f, t): channels [s0.re, s0.im, s1.re, ...]
        x = torch.view_as_real(spec).permute(0, 1, 4, 2, 3).reshape(b, 2 * s, f, t)
        out = self._spectrum(self._network(self._features(x)), spec)  # (b, n, s, f, t)
        wav = istft(out, **self._stft_args())
        return wav[..., :length]

    def _network(self, x: Tensor) -> Tensor:
        """Encoder, separation net, decoder: (b, 2s, f, t) -> (b, 2s·n, f, t)."""
        skips, afters, befores = [], [], []
        for block in self.encoder:
            x, skip, after, before = block(x)
            skips.append(skip)
            afters.append(after)
            befores.append(before)
        x = self.separation_net(x)
        for fusion, su in self.decoder:
            x = su(fusion(x, skips.pop()), afters.pop(), befores.pop())
        return x

    def _features(self, x: Tensor) -> Tensor:
        return x

    def _spectrum(self, x: Tensor, spec: Tensor) -> Tensor:
        """Decoder output (b, 2s·n, f, t) -> stem spectra (b, n, s, f, t).

        Channel 2q is the real and 2q+1 the imaginary part of spectrum q = stem·s + channel.
        """
        b, _, f, t = x.shape
        x = x.view(b, self.config.num_stems, self.config.audio_channels, 2, f, t)
        return torch.complex(x[:, :, :, 0], x[:, :, :, 1])

    def _stft_args(self) -> dict[str, Any]:
        c = self.config
        return dict(
            n_fft=c.nfft,
            hop_length=c.hop_size,
            win_length=c.win_size,
            window=self.window,
            normalized=c.normalized,
        )


class SCNetMasked(SCNet):
    """SCNet that predicts complex masks for the mixture spectrum (MSST's scnet_masked.py)."""

    def __init__(self, config: SCNetConfig) -> None:
        if config.audio_channels != 2:
            raise ConfigError(
                "scnet_masked is stereo only (model.audio_channels=2): MSST's mask_layer "
                "hard-codes 4 channels (2 channels × re/im) per stem"
            )
        if config.win_size != config.nfft:
            raise ConfigError(
                f"scnet_masked needs model.win_size == model.nfft (its Hann window has nfft "
                f"samples), got {config.win_size} and {config.nfft}"
            )
        super().__init__(config)
        n = config.num_stems
        self.pos_embed_f = nn.Parameter(torch.zeros(1, config.dims[0], config.nfft // 2 + 1, 1))
        nn.init.trunc_normal_(self.pos_embed_f, std=0.02)
        self.mask_layer = nn.Sequential(
            nn.Conv2d(4 * n, 64, kernel_size=3, padding="same"),
            nn.GELU(),
            nn.Conv2d(64, 4 * n, kernel_size=1, padding="same"),
            nn.Tanh(),
        )

    def _window(self) -> Tensor:
        return torch.hann_window(self.config.nfft, device=torch.device("cpu"))

    def _features(self, x: Tensor) -> Tensor:
        return x + self.pos_embed_f  # after MSST takes its mixture copy: the mask multiplies spec

    def _spectrum(self, x: Tensor, spec: Tensor) -> Tensor:
        mask = super()._spectrum(self.mask_layer(x), spec)  # (b, n, s, f, t) complex
        return mask * spec.unsqueeze(1)


class SCNetTran(SCNet):
    """SCNet with RoPE transformers in the dual-path layers (MSST's SCNet_Tran)."""

    config_class = SCNetTranConfig
    _transformer = True

    def __init__(self, config: SCNetTranConfig) -> None:
        super().__init__(config)
        # Created by MSST's SCNet_Tran but never used in its forward; checkpoints hold it.
        self.first_conv = nn.Conv2d(config.dims[0], config.dims[0], 1, 1, 0, bias=False)


# --- family records ------------------------------------------------------------------------
_KEYS = frozenset(f for f in SCNetConfig.__dataclass_fields__)
_TRAN_KEYS = frozenset(SCNetTranConfig.__dataclass_fields__) - _KEYS
# Keys no other MSST family uses (BandIt/RoFormers have n_fft/hop_length, scnet_unofficial has
# its own names).
_DISTINCT = frozenset(
    {"band_SR", "band_stride", "band_kernel", "conv_depths", "num_dplayer", "hop_size", "nfft"}
)


def _scnet_family(name: str, cls: type[SCNet], score: int) -> Family:
    """The record of one SCNet variant; `score` orders the variants for the same keys."""

    def build(model: Mapping[str, Any], *, sample_rate: int, stems, chunk_size: int) -> nn.Module:
        config = read_section(cls.config_class, model, section="model")
        module = cls(config)
        return set_io(
            module,
            sample_rate=sample_rate,
            stems=stems,
            chunk_size=chunk_size,
            audio_channels=config.audio_channels,
            num_stems=config.num_stems,
        )

    def from_msst(config: Mapping[str, Any]) -> dict[str, Any]:
        model = dict(config.get("model") or {})
        parsed = read_section(cls.config_class, model, section="model")
        channels = (config.get("audio") or {}).get("num_channels")
        if channels is not None and channels != parsed.audio_channels:
            raise ConfigError(
                f"audio.num_channels={channels} but model.audio_channels="
                f"{parsed.audio_channels}; they must agree"
            )
        rate, chunk = msst_audio(config)
        stems = msst_stems(config, parsed.num_stems, default=parsed.sources)
        return {"model": model, "stems": stems, "sample_rate": rate, "chunk_size": chunk}

    def msst_match(model: Mapping[str, Any]) -> int:
        keys = set(model)
        if not keys & _DISTINCT or not keys <= set(cls.config_class.__dataclass_fields__):
            return 0
        return score + (3 if keys & _TRAN_KEYS else 0)

    return Family(
        name=name,
        build=build,
        from_msst=from_msst,
        msst_match=msst_match,
        description=(cls.__doc__ or name).splitlines()[0],
    )


# The same YAML keys describe scnet and scnet_masked: plain SCNet wins the inference from the YAML
# alone (its configs are the ones MSST ships); when a checkpoint is loaded with an inferred type,
# its keys (pos_embed_f, mask_layer.*) pick scnet_masked (separator.zoo.tied).
SCNET = _scnet_family("scnet", SCNet, 5)
SCNET_MASKED = _scnet_family("scnet_masked", SCNetMasked, 4)
SCNET_TRAN = _scnet_family("scnet_tran", SCNetTran, 3)
