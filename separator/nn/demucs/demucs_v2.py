"""Waveform Demucs (v2/v3 time-domain model, demucs 4.1.0 `demucs/demucs.py` `Demucs`).

A U-Net of strided 1-D convolutions over the (2x upsampled) waveform with DConv residual
branches; the MDX bags use it next to hybrid models.

Axis legend: b batch, c audio channels, s sources, t samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from separator.nn.demucs.blocks import BLSTM, DConv, center_trim, check, group_norm, rescale_convs


def _sinc_kernels(old: int, new: int, zeros: int = 24, rolloff: float = 0.945) -> Tensor:
    """julius 0.2.8 `ResampleFrac` filters for old -> new (coprime), (new, 1, taps) float32.

    Computed with julius's float32 operations in julius's order, so the filters are the same
    bit for bit (julius is not a dependency of separator).
    """
    cutoff = min(new, old) * rolloff
    width = math.ceil(zeros * old / cutoff)
    index = torch.arange(-width, width + old).float()
    kernels = []
    for i in range(new):
        t = ((-i / new + index / old) * cutoff).clamp_(-zeros, zeros) * math.pi
        window = torch.cos(t / zeros / 2) ** 2
        sinc = torch.where(t == 0, torch.tensor(1.0), torch.sin(t) / t)
        kernel = sinc * window
        kernels.append(kernel / kernel.sum())
    return torch.stack(kernels).view(new, 1, -1)


class Resample2(nn.Module):
    """x2 up- or down-sampling with julius's windowed sinc (demucs's `resample_frac(x, 1, 2)` and
    `(x, 2, 1)`): (..., t) -> (..., 2t) or (..., t // 2)."""

    def __init__(self, up: bool) -> None:
        super().__init__()
        self.old, self.new = (1, 2) if up else (2, 1)
        kernel = _sinc_kernels(self.old, self.new)
        self.width = (kernel.shape[-1] - self.old) // 2
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        lead, length = x.shape[:-1], x.shape[-1]
        flat = F.pad(x.reshape(-1, 1, length), (self.width, self.width + self.old), "replicate")
        y = F.conv1d(flat, self.kernel.to(x.dtype), stride=self.old)  # (rows, new, t')
        y = y.transpose(1, 2).reshape(*lead, -1)
        return y[..., : self.new * length // self.old]


class Demucs(nn.Module):
    """Waveform Demucs: (b, c, t) -> (b, s, c, t). Keyword arguments are demucs's.

    The input is normalised (optionally), zero-padded in the centre to `valid_length(t)`,
    upsampled x2 (`resample`), run through the U-Net, and brought back to t samples.
    """

    # long function: the signature lists demucs's constructor arguments, one per line
    def __init__(
        self,
        sources: Sequence[str],
        audio_channels: int = 2,
        channels: int = 64,
        growth: float = 2.0,
        depth: int = 6,
        rewrite: bool = True,
        lstm_layers: int = 0,
        kernel_size: int = 8,
        stride: int = 4,
        context: int = 1,
        gelu: bool = True,
        glu: bool = True,
        norm_starts: int = 4,
        norm_groups: int = 4,
        dconv_mode: int = 1,
        dconv_depth: int = 2,
        dconv_comp: float = 4,
        dconv_attn: int = 4,
        dconv_lstm: int = 4,
        dconv_init: float = 1e-4,
        normalize: bool = True,
        resample: bool = True,
        rescale: float = 0.1,
        samplerate: int = 44100,
        segment: Any = 4 * 10,
    ) -> None:
        super().__init__()
        check(len(sources) > 0, "Demucs: `sources` must name at least one source")
        check(depth >= 1 and kernel_size >= stride >= 1, "Demucs: bad depth/kernel_size/stride")
        self.sources = list(sources)
        self.audio_channels = audio_channels
        self.kernel_size, self.stride, self.context = kernel_size, stride, context
        self.depth, self.channels = depth, channels
        self.resample, self.normalize = resample, normalize
        self.samplerate, self.segment = samplerate, segment
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        layer = dict(
            kernel_size=kernel_size,
            stride=stride,
            context=context,
            gelu=gelu,
            glu=glu,
            rewrite=rewrite,
            norm_groups=norm_groups,
            dconv_mode=dconv_mode,
            dconv=dict(depth=dconv_depth, init=dconv_init, compress=dconv_comp),
        )
        chin = audio_channels
        for index in range(depth):
            norm = index >= norm_starts
            attn, lstm = index >= dconv_attn, index >= dconv_lstm
            chout = len(self.sources) * audio_channels if index == 0 else chin
            self.encoder.append(_encoder_layer(chin, channels, norm, attn, lstm, **layer))
            self.decoder.insert(
                0, _decoder_layer(channels, chout, index, norm, attn, lstm, **layer)
            )
            chin, channels = channels, int(growth * channels)
        self.lstm = BLSTM(chin, lstm_layers) if lstm_layers else None
        if rescale:
            rescale_convs(self, rescale)
        if resample:
            self.upsample, self.downsample = Resample2(up=True), Resample2(up=False)

    def valid_length(self, length: int) -> int:
        """The nearest input length >= `length` that leaves no sample over in any convolution."""
        if self.resample:
            length *= 2
        for _ in range(self.depth):
            length = max(1, math.ceil((length - self.kernel_size) / self.stride) + 1)
        for _ in range(self.depth):
            length = (length - 1) * self.stride + self.kernel_size
        if self.resample:
            length = math.ceil(length / 2)
        return int(length)

    def forward(self, mix: Tensor) -> Tensor:
        """(b, c, t) -> (b, s, c, t)."""
        length = mix.shape[-1]
        x, mean, std = mix, 0.0, 1.0
        if self.normalize:
            mono = mix.mean(dim=1, keepdim=True)
            mean, std = mono.mean(dim=-1, keepdim=True), mono.std(dim=-1, keepdim=True)
            x = (x - mean) / (1e-5 + std)
        delta = self.valid_length(length) - length
        x = F.pad(x, (delta // 2, delta - delta // 2))
        if self.resample:
            x = self.upsample(x)
        saved = []
        for encode in self.encoder:
            x = encode(x)
            saved.append(x)
        if self.lstm is not None:
            x = self.lstm(x)
        for decode in self.decoder:
            x = decode(x + center_trim(saved.pop(-1), x.shape[-1]))
        if self.resample:
            x = self.downsample(x)
        x = center_trim(x * std + mean, length)
        return x.view(x.shape[0], len(self.sources), self.audio_channels, length)

    def load_state_dict(self, state: dict[str, Tensor], strict: bool = True, assign: bool = False):
        """Also loads pre-v3 key names (see `rename_pre_v3`), as demucs's Demucs does."""
        return super().load_state_dict(rename_pre_v3(state, self.depth), strict, assign)


def rename_pre_v3(state: Mapping[str, Tensor], depth: int) -> dict[str, Tensor]:
    """demucs's `Demucs.load_state_dict` quirk (demucs/demucs.py, 4.1.0): pre-v3 checkpoints name
    the rewrite conv `{encoder,decoder}.{i}.2.*` where v3 has `.3.`; rename when only the old
    key is there."""
    state = dict(state)
    for idx in range(depth):
        for part in ("encoder", "decoder"):
            for name in ("bias", "weight"):
                new, old = f"{part}.{idx}.3.{name}", f"{part}.{idx}.2.{name}"
                if old in state and new not in state:
                    state[new] = state.pop(old)
    return state


def _encoder_layer(
    chin,
    chout,
    norm,
    attn,
    lstm,
    *,
    kernel_size,
    stride,
    gelu,
    glu,
    rewrite,
    norm_groups,
    dconv_mode,
    dconv,
    context,
) -> nn.Sequential:
    """conv(k, stride) -> norm -> act [-> DConv] [-> 1x1 conv -> norm -> GLU]; demucs indices."""
    mods: list[nn.Module] = [
        nn.Conv1d(chin, chout, kernel_size, stride),
        group_norm(norm, norm_groups, chout),
        nn.GELU() if gelu else nn.ReLU(),
    ]
    if dconv_mode & 1:
        mods.append(DConv(chout, attn=attn, lstm=lstm, **dconv))
    if rewrite:
        scale = 2 if glu else 1
        mods += [
            nn.Conv1d(chout, scale * chout, 1),
            group_norm(norm, norm_groups, scale * chout),
            nn.GLU(dim=1) if glu else nn.ReLU(),
        ]
    return nn.Sequential(*mods)


def _decoder_layer(
    chin,
    chout,
    index,
    norm,
    attn,
    lstm,
    *,
    kernel_size,
    stride,
    gelu,
    glu,
    rewrite,
    norm_groups,
    dconv_mode,
    dconv,
    context,
) -> nn.Sequential:
    """[conv(2·context+1) -> norm -> GLU] [-> DConv] -> transposed conv [-> norm -> act]."""
    mods: list[nn.Module] = []
    if rewrite:
        scale = 2 if glu else 1
        mods += [
            nn.Conv1d(chin, scale * chin, 2 * context + 1, padding=context),
            group_norm(norm, norm_groups, scale * chin),
            nn.GLU(dim=1) if glu else nn.ReLU(),
        ]
    if dconv_mode & 2:
        mods.append(DConv(chin, attn=attn, lstm=lstm, **dconv))
    mods.append(nn.ConvTranspose1d(chin, chout, kernel_size, stride))
    if index > 0:
        mods += [group_norm(norm, norm_groups, chout), nn.GELU() if gelu else nn.ReLU()]
    return nn.Sequential(*mods)
