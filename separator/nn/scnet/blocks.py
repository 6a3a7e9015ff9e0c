"""SCNet's encoder and decoder blocks: sparse down-sampling (SD) and up-sampling (SU) over three
frequency bands, the convolution module and the fusion layer.

Axis legend: b batch, c channels, f frequency rows, t frames, r rows (b·f).
Parameter names follow MSST (models/scnet/scnet.py at ccc011a), so checkpoints load with
`strict=True`: `SDlayer.convs.{j}`, `conv_modules.{j}.layers.{d}.{0,1,3,4,6}`, `globalconv`,
`conv` (fusion), `convtrs.{j}`.

The three bands differ in row count (e.g. 359, 201 and 56 rows at n_fft 4096), kernel, stride and
depth, so each keeps its own convolutions; the loop over them runs three large ops, not a
per-band loop over small ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from separator.nn.layers import WeightCache


def band_splits(rows: int, shares: Sequence[float]) -> list[tuple[int, int]]:
    """[start, end) of the low, mid and high bands of `rows` frequency rows.

    The same float expressions as MSST's `SDlayer` (ceil(F·low), ceil(F·(low + mid))), so the
    split points agree exactly.
    """
    low, mid = shares[0], shares[1]
    a, b = math.ceil(rows * low), math.ceil(rows * (low + mid))
    return [(0, a), (a, b), (b, rows)]


class ConvolutionModule(nn.Module):
    """Residual stack over time: GroupNorm(1) → Conv1d(c→2h, k) → GLU → depthwise Conv1d(h, k)
    → GroupNorm(1) → Swish → Conv1d(h→c, 1), with h = int(c / compress).

    forward: (r, c, t) -> (r, c, t).
    """

    def __init__(self, channels: int, depth: int, compress: float, kernel: int) -> None:
        super().__init__()
        hidden = int(channels / compress)
        pad = kernel // 2
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.GroupNorm(1, channels),
                nn.Conv1d(channels, hidden * 2, kernel, padding=pad),
                nn.GLU(1),
                nn.Conv1d(hidden, hidden, kernel, padding=pad, groups=hidden),
                nn.GroupNorm(1, hidden),
                nn.SiLU(),  # MSST's Swish, x·sigmoid(x)
                nn.Conv1d(hidden, channels, 1),
            )
            for _ in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            y = layer[1](layer[0](x))
            y = layer[3](F.glu(y, 1))
            y = F.silu(layer[4](y), inplace=True)
            x = layer[6](y).add_(x)
        return x


class SDLayer(nn.Module):
    """Per band: zero-pad the rows, then Conv2d with kernel (k, 1) and stride (s, 1)."""

    def __init__(self, c_in: int, c_out: int, shares, strides, kernels) -> None:
        super().__init__()
        self.shares = tuple(shares)
        self.strides = tuple(strides)
        self.kernels = tuple(kernels)
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, (k, 1), (s, 1)) for s, k in zip(strides, kernels)
        )

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[int]]:
        """(b, c_in, f, t) -> per band (b, c_out, f_j, t), and the bands' row counts before."""
        outs, lengths = [], []
        for conv, s, k, (start, end) in zip(
            self.convs, self.strides, self.kernels, band_splits(x.shape[2], self.shares)
        ):
            n = end - start
            total = k - 1 if s == 1 else (s - n % s) % s
            band = F.pad(x[:, :, start:end], (0, 0, total // 2, total - total // 2))
            outs.append(conv(band))
            lengths.append(n)
        return outs, lengths


class SDBlock(nn.Module):
    """Sparse down-sampling block: SD layer, a convolution module per band (over time), GELU,
    the bands joined along frequency (that is the skip), then a 3×3 `globalconv`.

    forward: (b, c_in, f, t) -> (out (b, c_out, f', t), skip, rows per band after, before).
    """

    def __init__(self, c_in: int, c_out: int, config) -> None:
        super().__init__()
        self.SDlayer = SDLayer(c_in, c_out, config.band_SR, config.band_stride, config.band_kernel)
        self.conv_modules = nn.ModuleList(
            ConvolutionModule(c_out, d, config.compress, config.conv_kernel)
            for d in config.conv_depths
        )
        self.globalconv = nn.Conv2d(c_out, c_out, 3, 1, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[int], list[int]]:
        bands, before = self.SDlayer(x)
        rows = []
        for conv, band in zip(self.conv_modules, bands):
            b, c, f, t = band.shape
            y = conv(band.transpose(1, 2).reshape(b * f, c, t))  # each row (b, f) over time
            rows.append(y.view(b, f, c, t))
        after = [r.shape[1] for r in rows]
        skip = F.gelu(torch.cat(rows, 1)).transpose(1, 2).contiguous()  # (b, c, f', t)
        return self.globalconv(skip), skip, after, before


class FusionLayer(nn.Module):
    """x + skip, tiled ×2 along channels, Conv2d 3×3 (2c → 2c), GLU over channels.

    Tiling [x, x] and convolving equals convolving x with the two weight halves summed: the
    (c → 2c) convolution does half the work of MSST's (2c → 2c) one.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels * 2, channels * 2, 3, padding=1)
        self._cache = WeightCache()

    def _folded(self) -> Tensor:
        w = self.conv.weight
        return w[:, : w.shape[1] // 2] + w[:, w.shape[1] // 2 :]

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """x, skip: (b, c, f, t) -> (b, c, f, t)."""
        w = self._cache.get([self.conv.weight], self._folded)
        return F.glu(F.conv2d(x + skip, w, self.conv.bias, padding=1), 1)


class SULayer(nn.Module):
    """Per band: ConvTranspose2d (k, 1), stride (s, 1), trimmed symmetrically to the band's rows
    before its SD layer; the bands joined along frequency."""

    def __init__(self, c_in: int, c_out: int, strides, kernels) -> None:
        super().__init__()
        self.convtrs = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, (k, 1), (s, 1)) for s, k in zip(strides, kernels)
        )

    def forward(self, x: Tensor, after: Sequence[int], before: Sequence[int]) -> Tensor:
        """(b, c_in, sum(after), t) -> (b, c_out, sum(before), t)."""
        outs, start = [], 0
        for convtr, n_in, n_out in zip(self.convtrs, after, before):
            y = convtr(x[:, :, start : start + n_in])
            cut = abs(n_out - y.shape[2]) // 2
            outs.append(y[:, :, cut : cut + n_out])
            start += n_in
        return torch.cat(outs, 2)
