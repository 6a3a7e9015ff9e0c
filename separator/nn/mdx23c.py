"""MDX23C: the TFC-TDF v3 U-Net (Kim et al., "Sound Demixing Challenge 2023 Music Demixing Track
Technical Report: TFC-TDF-UNet v3", arXiv 2306.09382), MSST's `mdx23c`
(models/mdx23c_tfc_tdf_v3.py, `TFC_TDF_net`, at ccc011a).

Axis legend: b batch, s audio channel, n stem, c feature channels, t frame, f frequency row of a
subband, k subband.

The card's `model:` mapping. MSST's `TFC_TDF_net(config)` reads three sections, so the card
flattens what it reads into one mapping:
- every key of MSST's `model:` section, unchanged (act, bottleneck_factor, growth, norm,
  num_blocks_per_scale, num_channels, num_scales, num_subbands, scale);
- from `audio:`: `n_fft`, `hop_length`, `dim_f`, and `num_channels` renamed `audio_channels`
  (the model section already has a `num_channels`: the U-Net width).
The stem count is the card's `stems` (MSST: `training.target_instrument`, else
`training.instruments`), the chunk length the card's `chunk_size` (MSST: `audio.chunk_size`,
= hop·(dim_t − 1)); `audio.dim_t` is not read by the network.

Quirks of the reference, and what this module does:
- STFT: Hann window of n_fft, centred, reflect padding; only the first `dim_f` bins are used and
  the rest are zero before the iSTFT.
- The U-Net runs on (b, c, t, f): time and frequency are swapped after `first_conv`. Here the
  features are laid out that way from the STFT on (all 1×1 convs do not care), so no transposed
  views reach the convolutions.
- Down/upscaling uses kernel = stride = `scale`, so the frame count must be a multiple of
  scale[0]^num_scales. MSST's chunk (hop·(dim_t − 1) samples, dim_t frames) is. Wherever MSST
  runs, the output equals MSST's, which has floor(T/hop)·hop samples; the last (< hop) samples,
  which MSST drops, come from the same iSTFT (the last frames' windows reach them). Other
  lengths fail in MSST; here the input is zero-padded on the right to the next length the U-Net
  takes and the output cropped back. Output length = input length.
- The stem axis is kept (also for one `target_instrument`), as in MSST.
- MSST's last reshape hard-codes 2 audio channels, so its mono output is scrambled; here mono
  works (no mono checkpoint can exist: MSST cannot train one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from separator.errors import ConfigError
from separator.nn.family import Family, check_channels, msst_audio, msst_stem_names, set_io
from separator.nn.msst_config import positive, read_section
from separator.nn.stft import istft, stft

_AUDIO_KEYS = ("n_fft", "hop_length", "dim_f")  # copied from `audio:` under the same names


@dataclass(frozen=True)
class MDX23CConfig:
    """The card's `model:` mapping (see the module docstring)."""

    act: str
    bottleneck_factor: int
    growth: int
    norm: str
    num_blocks_per_scale: int
    num_channels: int
    num_scales: int
    num_subbands: int
    scale: tuple[int, ...]
    n_fft: int
    hop_length: int
    dim_f: int
    audio_channels: int = 2

    def __post_init__(self) -> None:
        positive("model.num_channels / num_scales / num_subbands / num_blocks_per_scale",
                 self.num_channels, self.num_scales, self.num_subbands,
                 self.num_blocks_per_scale)  # fmt: skip
        positive("model.bottleneck_factor", self.bottleneck_factor)
        positive("audio.n_fft / hop_length / dim_f / num_channels", self.n_fft,
                 self.hop_length, self.dim_f, self.audio_channels)  # fmt: skip
        if self.growth < 0:
            raise ConfigError(f"model.growth must be >= 0, got {self.growth}")
        if len(self.scale) != 2 or min(self.scale) < 1:
            raise ConfigError(f"model.scale must be two positive integers, got {self.scale}")
        if self.dim_f > self.n_fft // 2 + 1:
            raise ConfigError(f"audio.dim_f={self.dim_f} exceeds the n_fft/2+1 STFT bins")
        rows = self.dim_f // self.num_subbands
        step = self.scale[1] ** self.num_scales
        if self.dim_f % self.num_subbands or rows % step:
            raise ConfigError(
                f"audio.dim_f={self.dim_f} / model.num_subbands={self.num_subbands} must be a "
                f"whole multiple of scale[1]^num_scales={step}"
            )
        if rows // step < self.bottleneck_factor:
            raise ConfigError(
                f"model.bottleneck_factor={self.bottleneck_factor} leaves no TDF features at the "
                f"bottleneck ({rows // step} frequency rows)"
            )
        activation(self.act)
        norm_layer(self.norm, 1)


def activation(name: str) -> nn.Module:
    """MSST's `get_act`: gelu, relu or elu<alpha> (e.g. "elu1.0")."""
    if name == "gelu":
        return nn.GELU()
    if name == "relu":
        return nn.ReLU()
    if name[:3] == "elu":
        try:
            return nn.ELU(float(name[3:]))
        except ValueError:
            pass
    raise ConfigError(f"model.act={name!r}: use gelu, relu or elu<alpha> (e.g. elu1.0)")


def norm_layer(name: str, channels: int) -> nn.Module:
    """MSST's `get_norm`; any other name means no normalisation (as in MSST)."""
    if name == "BatchNorm":
        return nn.BatchNorm2d(channels)
    if name == "InstanceNorm":
        return nn.InstanceNorm2d(channels, affine=True)
    if "GroupNorm" in name:
        try:
            groups = int(name.replace("GroupNorm", ""))
        except ValueError:
            raise ConfigError(f"model.norm={name!r}: write GroupNorm<groups>") from None
        if groups < 1 or channels % groups:
            raise ConfigError(f"model.norm={name!r}: {groups} groups do not divide the channels")
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


def _pre(norm: str, act: str, c: int, layer: nn.Module) -> nn.Sequential:
    """norm → activation → layer (the pre-activation order of every TFC-TDF piece)."""
    return nn.Sequential(norm_layer(norm, c), activation(act), layer)


class TFCTDF(nn.Module):
    """`l` blocks of: shortcut 1×1 conv; tfc1 (3×3 conv); x + tdf(x) (two Linear over f);
    tfc2 (3×3 conv); + shortcut. forward: (b, c_in, t, f) -> (b, c, t, f)."""

    def __init__(self, c_in: int, c: int, layers: int, f: int, bn: int, cfg: MDX23CConfig):
        super().__init__()
        self.blocks = nn.ModuleList()
        n, a = cfg.norm, cfg.act
        for _ in range(layers):
            block = nn.Module()
            block.tfc1 = _pre(n, a, c_in, nn.Conv2d(c_in, c, 3, 1, 1, bias=False))
            block.tdf = nn.Sequential(
                *_pre(n, a, c, nn.Linear(f, f // bn, bias=False)),
                *_pre(n, a, c, nn.Linear(f // bn, f, bias=False)),
            )
            block.tfc2 = _pre(n, a, c, nn.Conv2d(c, c, 3, 1, 1, bias=False))
            block.shortcut = nn.Conv2d(c_in, c, 1, 1, 0, bias=False)
            self.blocks.append(block)
            c_in = c

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            s = conv1x1(block.shortcut, x)
            x = pre(block.tfc1, x)
            tdf = block.tdf  # norm, act, Linear(f → f/bn), norm, act, Linear(f/bn → f)
            h = tdf[2](norm_act(tdf[0], tdf[1], x))
            x = tdf[5](norm_act(tdf[3], tdf[4], h)).add_(x)
            x = pre(block.tfc2, x).add_(s)
        return x


def norm_act(norm: nn.Module, act: nn.Module, x: Tensor) -> Tensor:
    """act(norm(x)) for x (b, c, t, f), in fewer passes than the two modules.

    An eval batch norm becomes one per-channel multiply-add, and the activation runs in place
    when no gradient is recorded.
    """
    if isinstance(norm, nn.BatchNorm2d) and not norm.training:
        var, mean = (v.view(-1, 1, 1) for v in (norm.running_var, norm.running_mean))
        scale = torch.rsqrt(var + norm.eps) * norm.weight.view(-1, 1, 1)
        y = torch.addcmul(norm.bias.view(-1, 1, 1) - mean * scale, x, scale)
    else:
        y = norm(x)  # instance/group norm (torch's fused kernels beat var_mean here), identity
    if torch.is_grad_enabled():
        return act(y)
    if isinstance(act, nn.GELU):
        return torch.ops.aten.gelu_(y)
    if isinstance(act, nn.ELU):
        return F.elu_(y, act.alpha)
    return F.relu_(y)


def pre(seq: nn.Sequential, x: Tensor) -> Tensor:
    """A `_pre` Sequential (norm, activation, layer) through `norm_act`."""
    return seq[2](norm_act(seq[0], seq[1], x))


def conv1x1(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A bias-free 1×1 convolution as one matmul over channels (torch's CPU conv takes a slow
    im2col path for 1×1 kernels)."""
    b, _, t, f = x.shape
    w = conv.weight.view(conv.weight.shape[0], -1).expand(b, -1, -1)
    return torch.bmm(w, x.reshape(b, -1, t * f)).view(b, -1, t, f)


class MDX23C(nn.Module):
    """TFC-TDF v3 with MSST's parameter layout. forward: (b, s, time) -> (b, n, s, time)."""

    def __init__(self, config: MDX23CConfig, num_stems: int) -> None:
        super().__init__()
        self.config = cfg = config
        self.num_stems = num_stems
        k = cfg.num_subbands
        dim_c = k * cfg.audio_channels * 2
        c, g, bn, blocks = (
            cfg.num_channels,
            cfg.growth,
            cfg.bottleneck_factor,
            cfg.num_blocks_per_scale,
        )
        f = cfg.dim_f // k
        scale = tuple(cfg.scale)
        self.first_conv = nn.Conv2d(dim_c, c, 1, 1, 0, bias=False)
        self.encoder_blocks = nn.ModuleList()
        for _ in range(cfg.num_scales):
            block = nn.Module()
            block.tfc_tdf = TFCTDF(c, c, blocks, f, bn, cfg)
            block.downscale = nn.Module()
            block.downscale.conv = _pre(
                cfg.norm, cfg.act, c, nn.Conv2d(c, c + g, scale, scale, bias=False)
            )
            self.encoder_blocks.append(block)
            f, c = f // scale[1], c + g
        self.bottleneck_block = TFCTDF(c, c, blocks, f, bn, cfg)
        self.decoder_blocks = nn.ModuleList()
        for _ in range(cfg.num_scales):
            block = nn.Module()
            block.upscale = nn.Module()
            block.upscale.conv = _pre(
                cfg.norm, cfg.act, c, nn.ConvTranspose2d(c, c - g, scale, scale, bias=False)
            )
            f, c = f * scale[1], c - g
            block.tfc_tdf = TFCTDF(2 * c, c, blocks, f, bn, cfg)
            self.decoder_blocks.append(block)
        self.final_conv = nn.Sequential(
            nn.Conv2d(c + dim_c, c, 1, 1, 0, bias=False),
            activation(cfg.act),
            nn.Conv2d(c, num_stems * dim_c, 1, 1, 0, bias=False),
        )
        window = torch.hann_window(cfg.n_fft, device=torch.device("cpu"))
        self.register_buffer("window", window, persistent=False)

    def forward(self, audio: Tensor) -> Tensor:
        """audio: (b, s, time) -> (b, n, s, time)."""
        b, s, length = audio.shape
        check_channels(s, self.config.audio_channels)
        padded = F.pad(audio, (0, self._padded_length(length) - length))
        spec = stft(padded, n_fft=self.config.n_fft, hop_length=self.config.hop_length,
                    window=self.window)  # fmt: skip
        mix = self._to_features(spec[:, :, : self.config.dim_f])
        x = first = conv1x1(self.first_conv, mix)
        skips = []
        for block in self.encoder_blocks:
            x = block.tfc_tdf(x)
            skips.append(x)
            x = pre(block.downscale.conv, x)
        x = self.bottleneck_block(x)
        for block in self.decoder_blocks:
            x = pre(block.upscale.conv, x)
            x = block.tfc_tdf(torch.cat([x, skips.pop()], 1))
        x = torch.cat([mix, x.mul_(first)], 1)  # "reduce artifacts" (MSST)
        final = self.final_conv
        x = conv1x1(final[2], final[1](conv1x1(final[0], x)))
        out = spec.new_zeros(b, self.num_stems, s, *spec.shape[-2:])
        out[:, :, :, : self.config.dim_f] = self._from_features(x)
        wav = istft(out, n_fft=self.config.n_fft, hop_length=self.config.hop_length,
                    window=self.window, length=length)  # fmt: skip
        return wav

    def _padded_length(self, length: int) -> int:
        """The length the U-Net runs at (see the module docstring).

        Where MSST itself runs (floor(length/hop) + 1 frames, a multiple of
        scale[0]^num_scales), the input is used as is, so the output equals MSST's over its
        floor(length/hop)·hop samples (the iSTFT fills the rest). Otherwise
        the input is zero-padded to the shortest length that the U-Net takes and that covers it.
        """
        hop, step = self.config.hop_length, self.config.scale[0] ** self.config.num_scales
        fewest = self.config.n_fft // (2 * hop) + 2  # reflect padding needs this many frames
        frames = length // hop + 1
        if frames % step == 0 and frames >= fewest:
            return length
        frames = max(math.ceil(length / hop) + 1, fewest)
        return (math.ceil(frames / step) * step - 1) * hop

    def _to_features(self, spec: Tensor) -> Tensor:
        """(b, s, dim_f, t) complex -> (b, s·2·k, t, f): channel ((s·2 + re/im)·k + subband)."""
        b, s, dim_f, t = spec.shape
        k = self.config.num_subbands
        x = torch.view_as_real(spec).view(b, s, k, dim_f // k, t, 2)
        return x.permute(0, 1, 5, 2, 4, 3).reshape(b, s * 2 * k, t, dim_f // k)

    def _from_features(self, x: Tensor) -> Tensor:
        """(b, n·s·2·k, t, f) -> (b, n, s, dim_f, t) complex (MSST's cws2cac and pairing)."""
        b, _, t, f = x.shape
        k, s = self.config.num_subbands, self.config.audio_channels
        x = x.view(b, self.num_stems, s, 2, k, t, f).permute(0, 1, 2, 4, 6, 5, 3)
        return torch.view_as_complex(x.reshape(b, self.num_stems, s, k * f, t, 2).contiguous())


# --- family record -------------------------------------------------------------------------


def _build(model: Mapping[str, Any], *, sample_rate: int, stems, chunk_size: int) -> nn.Module:
    config = read_section(MDX23CConfig, model, section="model", unknown="warn")
    stems = list(stems)
    module = MDX23C(config, len(stems))
    return set_io(module, sample_rate=sample_rate, stems=stems, chunk_size=chunk_size,
                  audio_channels=config.audio_channels, num_stems=len(stems))  # fmt: skip


def _from_msst(config: Mapping[str, Any]) -> dict[str, Any]:
    """MSST YAML -> card fields; the card's `model:` is the flattened mapping described above."""
    audio = config.get("audio") or {}
    model = dict(config.get("model") or {})
    missing = [f"audio.{k}" for k in (*_AUDIO_KEYS, "num_channels") if k not in audio]
    if missing:
        raise ConfigError(f"mdx23c reads {', '.join(missing)}, which the config lacks")
    model.update({k: audio[k] for k in _AUDIO_KEYS})
    model["audio_channels"] = audio["num_channels"]
    # Keys MSST does not read: one warning now, and the card keeps only what the model reads.
    read_section(MDX23CConfig, model, section="model", unknown="warn")
    model = {k: v for k, v in model.items() if k in MDX23CConfig.__dataclass_fields__}
    training = config.get("training") or {}
    count = 1 if training.get("target_instrument") else len(training.get("instruments") or [])
    if count == 0:
        raise ConfigError("mdx23c takes its stems from training.instruments, which is empty")
    stems = list(msst_stem_names(config, count))
    rate, chunk = msst_audio(config)
    return {"model": model, "stems": stems, "sample_rate": rate, "chunk_size": chunk}


def _msst_match(model: Mapping[str, Any]) -> int:
    """TFC-TDF keys (num_subbands, bottleneck_factor, num_scales, growth) are MDX23C's own."""
    found = len({"num_subbands", "bottleneck_factor", "num_scales", "growth"} & set(model))
    return 4 + found if found >= 2 else 0


FAMILY = Family(
    name="mdx23c",
    build=_build,
    from_msst=_from_msst,
    msst_match=_msst_match,
    description="TFC-TDF v3 U-Net (MDX23C), MSST's mdx23c",
)
