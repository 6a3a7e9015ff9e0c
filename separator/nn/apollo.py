"""Apollo: band-sequence audio restoration (Li et al., "Apollo: Band-sequence Modeling for High-
Quality Audio Restoration", arXiv 2409.08514), MSST's `apollo`
(models/look2hear/models/apollo.py, `Apollo`, at ccc011a).

Axis legend: r rows (batch · audio channel: channels are restored independently), t frame,
k band (80), d feature (feature_dim), h head, e head feature, w band width in bins.

The card's `model:` is MSST's `model:` section (`sr`, `win` in ms, `feature_dim`, `layer`)
plus `audio_channels` (MSST's `audio.num_channels`, 2 when absent). The model has one output,
the restored mixture, stem `restored` (MSST's `training.target_instrument`).
Quirks reproduced (each in one place below):
- 80 bands: 79 of int(win/160) bins, the last takes the rest (`band_widths`);
- features per band [re/p, im/p, log p], p = sqrt(Σ|X|² + float32 eps);
- Apollo's RMSNorm: mean of squares over channels + 1e-5 (not RoFormer's L2 norm);
- the band transformer's RoPE reads the stored `cos_freq`/`sin_freq` buffers (each feature its
  own value, as the checkpoint holds them; never recomputed);
- the MLP gate goes through SiLU twice;
- the output is the predicted spectrum itself (no mask), iSTFT at the input's length.

MSST runs the 80 bands' norms and 1×1 convs as a Python loop; here the 79 equal bands are one
batched matmul and the last band another. Everything runs channels-last, so every 1×1 conv is a
plain matmul and each norm's gain is folded into the matmul after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from separator.errors import ConfigError
from separator.names import safe_stem_names
from separator.nn.family import Family, msst_audio, set_io
from separator.nn.layers import WeightCache
from separator.nn.msst_config import positive, read_section
from separator.nn.stft import istft, stft

NUM_BANDS = 80
HEADS = 8
_EPS = 1e-5  # Apollo's RMSNorm
_POWER_EPS = torch.finfo(torch.float32).eps  # band power floor
_ROPE_WINDOW = 100  # positions held in cos_freq / sin_freq


@dataclass(frozen=True)
class ApolloConfig:
    """MSST's `model:` section for Apollo (all four keys are required there), plus the card's
    `audio_channels` (from MSST's `audio.num_channels`; the model restores each channel on its
    own, so this only tells the engine what to feed)."""

    sr: int
    win: float
    feature_dim: int
    layer: int
    audio_channels: int = 2

    def __post_init__(self) -> None:
        positive("model.sr / win / feature_dim / audio_channels", self.sr, self.win,
                 self.feature_dim, self.audio_channels)  # fmt: skip
        if self.layer < 0:
            raise ConfigError(f"model.layer must be >= 0, got {self.layer}")
        if self.feature_dim % (2 * HEADS):
            raise ConfigError(
                f"model.feature_dim={self.feature_dim} must be a multiple of 16 (8 heads, "
                "each of an even size for the rotary embedding)"
            )
        widths = band_widths(self.window)
        if widths[0] < 1 or widths[-1] < 1:
            raise ConfigError(
                f"model.win={self.win} ms at sr={self.sr} gives {self.window} samples: too few "
                f"for {NUM_BANDS} bands (at least {NUM_BANDS * 2} samples)"
            )

    @property
    def window(self) -> int:
        """STFT window and n_fft in samples (MSST: int(sr · win // 1000)); hop = window // 2."""
        return int(self.sr * self.win // 1000)


def band_widths(window: int) -> list[int]:
    """79 bands of int(window / 160) bins and a last one with the rest of window/2 + 1 bins."""
    width = int(window / 160)
    return [width] * (NUM_BANDS - 1) + [window // 2 + 1 - width * (NUM_BANDS - 1)]


class RMSNorm(nn.Module):
    """Apollo's RMSNorm: x · rsqrt(mean(x²) + 1e-5) · weight, over the channel axis."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


def _unit(x: Tensor) -> Tensor:
    """x · rsqrt(mean(x²) + 1e-5) over the last axis, in float32 (gains folded elsewhere)."""
    return F.rms_norm(x.float(), (x.shape[-1],), eps=_EPS)


class BandRoformer(nn.Module):
    """Apollo's `Roformer` over the band axis (non-causal, 8 heads): pre-norm attention with RoPE
    and a SiLU-gated MLP, each residual. forward: (rows, k, d) -> (rows, k, d)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        head = dim // HEADS
        self.register_buffer("cos_freq", torch.ones(_ROPE_WINDOW, head, device="cpu"))
        self.register_buffer("sin_freq", torch.zeros(_ROPE_WINDOW, head, device="cpu"))
        self.input_norm = RMSNorm(dim)
        self.weight = nn.Conv1d(dim, dim * 3, 1, bias=False)
        self.output = nn.Conv1d(dim, dim, 1, bias=False)
        self.MLP = nn.Sequential(RMSNorm(dim), nn.Conv1d(dim, dim * 8, 1, bias=False), nn.SiLU())
        self.MLP_output = nn.Conv1d(dim * 4, dim, 1, bias=False)
        self._cache = WeightCache()

    def _weights(self) -> tuple[Tensor, ...]:
        qkv = self.weight.weight[..., 0] * self.input_norm.weight
        mlp = self.MLP[1].weight[..., 0] * self.MLP[0].weight
        # rot(x) = (-x1, x0) per pair; its sign goes into the sine table.
        sign = torch.tensor([-1.0, 1.0], device=qkv.device).repeat(self.sin_freq.shape[1] // 2)
        return qkv, mlp, self.cos_freq.float(), self.sin_freq.float() * sign

    def forward(self, x: Tensor) -> Tensor:
        rows, k, d = x.shape
        e = d // HEADS
        qkv_w, mlp_w, cos, sin = self._cache.get(
            [self.weight.weight, self.input_norm.weight, self.MLP[1].weight,
             self.MLP[0].weight, self.cos_freq, self.sin_freq],
            self._weights,
        )  # fmt: skip
        qkv = F.linear(_unit(x), qkv_w).view(rows, k, HEADS, 3, e)  # per head [q | k | v]
        qk = qkv[:, :, :, :2]
        pos = min(k, _ROPE_WINDOW)  # MSST slices the first k positions of the tables
        cos, sin = cos[:pos, None, None], sin[:pos, None, None]
        flipped = qk.unflatten(-1, (e // 2, 2)).flip(-1).flatten(-2)
        qk = torch.addcmul(qk * cos, flipped, sin)
        q, kk = qk.unbind(3)
        att = F.scaled_dot_product_attention(
            q.transpose(1, 2), kk.transpose(1, 2), qkv[:, :, :, 2].transpose(1, 2)
        )  # (rows, h, k, e)
        att = att.transpose(1, 2).reshape(rows * k, d)
        x = torch.addmm(x.reshape(rows * k, d), att, self.output.weight[..., 0].t())
        hidden = F.silu(F.linear(_unit(x), mlp_w), inplace=True)
        gate, z = hidden.chunk(2, dim=1)
        x = torch.addmm(x, F.silu(gate) * z, self.MLP_output.weight[..., 0].t())  # SiLU twice
        return x.view(rows, k, d)


class ConvActNorm(nn.Module):
    """x + Conv1d(4d→d)(SiLU(Conv1d(d→4d)(RMSNorm(depthwise Conv1d k=7 (x))))), over time.

    forward: (rows, t, d) -> (rows, t, d).
    """

    def __init__(self, dim: int, kernel: int = 7) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(dim, dim, kernel, padding=(kernel - 1) // 2, groups=dim),
            RMSNorm(dim),
            nn.Conv1d(dim, dim * 4, 1),
            nn.SiLU(),
            nn.Conv1d(dim * 4, dim, 1),
        )
        self._cache = WeightCache()

    def _weights(self) -> Tensor:
        return self.conv[2].weight[..., 0] * self.conv[1].weight

    def forward(self, x: Tensor) -> Tensor:
        rows, t, d = x.shape
        dw = self.conv[0]
        # Depthwise conv on the channels-last layout: a (1, k) conv2d on an NHWC view.
        y = F.conv2d(x.view(rows, 1, t, d).permute(0, 3, 1, 2), dw.weight.unsqueeze(2),
                     dw.bias, padding=(0, dw.padding[0]), groups=d)  # fmt: skip
        y = y.permute(0, 2, 3, 1).reshape(rows * t, d)
        w1 = self._cache.get([self.conv[2].weight, self.conv[1].weight], self._weights)
        h = F.silu(F.linear(_unit(y), w1, self.conv[2].bias), inplace=True)
        out = torch.addmm(x.reshape(rows * t, d), h, self.conv[4].weight[..., 0].t())
        return out.add_(self.conv[4].bias).view(rows, t, d)


class ICB(nn.Module):
    """Three `ConvActNorm` blocks over time."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(ConvActNorm(dim) for _ in range(3)))


class BSNet(nn.Module):
    """One Apollo layer: the band transformer (per frame), then the ICB (per band, over time).

    forward: (r, t, k, d) -> (r, t, k, d).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.band_net = BandRoformer(dim)
        self.seq_net = ICB(dim)

    def forward(self, x: Tensor) -> Tensor:
        r, t, k, d = x.shape
        x = self.band_net(x.view(r * t, k, d)).view(r, t, k, d)
        x = x.transpose(1, 2).reshape(r * k, t, d)
        for block in self.seq_net.blocks:
            x = block(x)
        return x.view(r, k, t, d).transpose(1, 2).contiguous()


class Apollo(nn.Module):
    """Apollo with MSST's parameter layout. forward: (b, s, time) -> (b, 1, s, time)."""

    def __init__(self, config: ApolloConfig) -> None:
        super().__init__()
        self.config = config
        self.band_width = band_widths(config.window)
        d = config.feature_dim
        self.BN = nn.ModuleList(
            nn.Sequential(RMSNorm(2 * w + 1), nn.Conv1d(2 * w + 1, d, 1)) for w in self.band_width
        )
        self.net = nn.Sequential(*(BSNet(d) for _ in range(config.layer)))
        self.output = nn.ModuleList(
            nn.Sequential(RMSNorm(d), nn.Conv1d(d, 4 * w, 1), nn.GLU(dim=1))
            for w in self.band_width
        )
        window = torch.hann_window(config.window, device=torch.device("cpu"))
        self.register_buffer("window", window, persistent=False)
        # Two groups of equal-width bands: the first 79, and the last one.
        self._groups = ((0, NUM_BANDS - 1), (NUM_BANDS - 1, NUM_BANDS))
        self._cache = WeightCache()

    def _weights(self) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Per group: band-split weight (g, d, 2w+1) and bias (g, d), output weight (g, 4w, d)
        and bias (g, 4w); every RMSNorm gain folded into the conv after it."""
        out = []
        for a, z in self._groups:
            bn, head = self.BN[a:z], self.output[a:z]
            out.append((
                torch.stack([m[1].weight[..., 0] * m[0].weight for m in bn]),
                torch.stack([m[1].bias for m in bn]),
                torch.stack([m[1].weight[..., 0] * m[0].weight for m in head]),
                torch.stack([m[1].bias for m in head]),
            ))  # fmt: skip
        return out

    def forward(self, audio: Tensor) -> Tensor:
        """audio: (b, s, time) -> (b, 1, s, time): every channel restored on its own."""
        b, s, length = audio.shape
        win = self.config.window
        args = dict(n_fft=win, hop_length=win // 2, window=self.window)
        spec = stft(audio.reshape(b * s, length), **args)  # (r, bins, t)
        weights = self._cache.get(list(self.BN.parameters()) + list(self.output.parameters()),
                                  self._weights)  # fmt: skip
        x = self._encode(spec.transpose(1, 2).contiguous(), weights)  # (r, t, k, d)
        for layer in self.net:
            x = layer(x)
        est = self._decode(x, weights).transpose(1, 2)  # (r, bins, t)
        return istft(est, **args, length=length).view(b, 1, s, length)

    def _bins(self, g: int) -> tuple[int, int, int]:
        """First bin, bands and width of group g."""
        a, z = self._groups[g]
        return sum(self.band_width[:a]), z - a, self.band_width[a]

    def _encode(self, spec: Tensor, weights) -> Tensor:
        """(r, t, bins) complex -> (r, t, k, d): [re/p, im/p, log p] per band, norm, 1×1 conv."""
        parts = []
        for g, (w, bias, _, _) in enumerate(weights):
            lo, n, width = self._bins(g)
            sub = torch.view_as_real(spec[..., lo : lo + n * width]).unflatten(2, (n, width))
            power = (sub.square().sum((-1, -2)) + _POWER_EPS).sqrt()  # (r, t, n)
            norm = sub / power[..., None, None]
            feats = torch.cat([norm[..., 0], norm[..., 1], power.log()[..., None]], -1)
            parts.append(torch.einsum("rtgc,gdc->rtgd", _unit(feats), w) + bias)
        return torch.cat(parts, 2)

    def _decode(self, x: Tensor, weights) -> Tensor:
        """(r, t, k, d) -> predicted spectrum (r, t, bins) complex64 (not a mask)."""
        parts = []
        for g, (_, _, w, bias) in enumerate(weights):
            a, z = self._groups[g]
            width = self.band_width[a]
            y = F.glu(torch.einsum("rtgd,god->rtgo", _unit(x[:, :, a:z]), w) + bias, -1)
            parts.append(torch.complex(y[..., :width], y[..., width:]).flatten(2))
        return torch.cat(parts, -1)


# --- family record -------------------------------------------------------------------------
STEM = "restored"


def _build(model: Mapping[str, Any], *, sample_rate: int, stems, chunk_size: int) -> nn.Module:
    config = read_section(ApolloConfig, model, section="model")
    return set_io(Apollo(config), sample_rate=sample_rate, stems=stems, chunk_size=chunk_size,
                  audio_channels=config.audio_channels, num_stems=1)  # fmt: skip


def _from_msst(config: Mapping[str, Any]) -> dict[str, Any]:
    """MSST YAML -> card fields: the `model:` section as is, stem `restored` (or the YAML's
    `training.target_instrument`), rate from `audio.sample_rate` (else `model.sr`)."""
    model = dict(config.get("model") or {})
    if "audio_channels" in model:
        raise ConfigError("unknown key model.audio_channels (MSST's Apollo would refuse it)")
    model["audio_channels"] = (config.get("audio") or {}).get("num_channels", 2)
    parsed = read_section(ApolloConfig, model, section="model")
    rate, chunk = msst_audio(config, default_rate=parsed.sr)
    if rate != parsed.sr:
        raise ConfigError(
            f"audio.sample_rate={rate} but model.sr={parsed.sr}: Apollo's STFT window is "
            "set from model.sr, so they must agree"
        )
    target = (config.get("training") or {}).get("target_instrument") or STEM
    return {"model": model, "stems": list(safe_stem_names([target])), "sample_rate": rate,
            "chunk_size": chunk}  # fmt: skip


def _msst_match(model: Mapping[str, Any]) -> int:
    """Apollo's four keys; `feature_dim` with `win` alone is already specific."""
    keys = set(model)
    if {"sr", "win", "feature_dim", "layer"} <= keys:
        return 6
    return 4 if {"win", "feature_dim"} <= keys else 0


FAMILY = Family(
    name="apollo",
    build=_build,
    from_msst=_from_msst,
    msst_match=_msst_match,
    description="Apollo band-sequence audio restoration, MSST's apollo",
    residuals=False,  # the output is the restored mixture, not a part of it
)
