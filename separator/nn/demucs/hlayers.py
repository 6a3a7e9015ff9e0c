"""Encoder/decoder layers of the hybrid models (HDemucs, HTDemucs), demucs 4.1.0
`demucs/hdemucs.py`: `HEncLayer`, `HDecLayer`, `MultiWrap` and the frequency embedding.

A layer acts either on frequencies (2-D convs with (k, 1) kernels over (freq, time), DConv along
time for every frequency row) or on time (1-D convs). Attribute names and registration order
are demucs's, so state dicts load with `strict=True` and keep demucs's key order.

Axis legend: b batch, c channels, f frequency bins, t frames (or samples in the time branch).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from separator.nn.demucs.blocks import DConv, check, group_norm


class FreqEmbedding(nn.Module):
    """demucs's `hdemucs.ScaledEmbedding`: an embedding read as weight · scale (a learning-rate
    boost), optionally initialised as a smooth cumulative sum. (n,) int -> (n, dim)."""

    def __init__(self, num: int, dim: int, scale: float = 10.0, smooth: bool = False) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num, dim)
        self.scale = scale
        with torch.no_grad():
            if smooth:
                weight = torch.cumsum(self.embedding.weight, dim=0)
                weight = weight / torch.arange(1, num + 1).to(weight).sqrt()[:, None]
                self.embedding.weight.copy_(weight)
            self.embedding.weight /= scale

    def forward(self, index: Tensor) -> Tensor:
        return self.embedding(index) * self.scale


def _run_dconv(dconv: nn.Module, y: Tensor, freq: bool) -> Tensor:
    """DConv along time: (b, c, t), or (b, c, f, t) with every frequency row as a batch item."""
    if not freq:
        return dconv(y)
    b, c, f, t = y.shape
    out = dconv(y.permute(0, 2, 1, 3).reshape(b * f, c, t))
    return out.view(b, f, c, t).permute(0, 2, 1, 3)


class HEncLayer(nn.Module):
    """conv(k, stride) [+ inject] -> norm -> GELU [-> DConv] [-> rewrite conv -> norm -> GLU].

    Frequency layers map (b, cin, f, t) -> (b, cout, f / stride, t); time layers map
    (b, cin, t) -> (b, cout, ceil(t / stride)) (the input is right-padded to a multiple of the
    stride). `empty` keeps only the first conv (the time layer that feeds the merge).
    """

    def __init__(
        self,
        chin: int,
        chout: int,
        kernel_size: int = 8,
        stride: int = 4,
        norm_groups: int = 1,
        empty: bool = False,
        freq: bool = True,
        dconv: bool = True,
        norm: bool = True,
        context: int = 0,
        dconv_kw: dict[str, Any] | None = None,
        pad: bool = True,
        rewrite: bool = True,
    ) -> None:
        super().__init__()
        self.freq, self.empty, self.norm = freq, empty, norm
        self.kernel_size, self.stride = kernel_size, stride
        self.pad = kernel_size // 4 if pad else 0
        if freq:
            self.conv: nn.Module = nn.Conv2d(
                chin, chout, (kernel_size, 1), (stride, 1), (self.pad, 0)
            )
        else:
            self.conv = nn.Conv1d(chin, chout, kernel_size, stride, self.pad)
        if empty:
            return
        self.norm1 = group_norm(norm, norm_groups, chout)
        self.rewrite = None
        if rewrite:
            conv = nn.Conv2d if freq else nn.Conv1d
            self.rewrite = conv(chout, 2 * chout, 1 + 2 * context, 1, context)
            self.norm2 = group_norm(norm, norm_groups, 2 * chout)
        self.dconv = DConv(chout, **(dconv_kw or {})) if dconv else None

    def forward(self, x: Tensor, inject: Tensor | None = None) -> Tensor:
        if not self.freq:
            if x.dim() == 4:  # the merged branch arrives as (b, c, 1, t)
                x = x.view(x.shape[0], -1, x.shape[-1])
            x = F.pad(x, (0, -x.shape[-1] % self.stride))
        y = self.conv(x)
        if self.empty:
            return y
        if inject is not None:
            if inject.dim() == 3 and y.dim() == 4:
                inject = inject[:, :, None]
            y = y + inject
        y = F.gelu(self.norm1(y))
        if self.dconv is not None:
            y = _run_dconv(self.dconv, y, self.freq)
        if self.rewrite is None:
            return y
        return F.glu(self.norm2(self.rewrite(y)), dim=1)


class HDecLayer(nn.Module):
    """[+ skip -> rewrite conv -> norm -> GLU] [-> DConv] -> transposed conv -> norm [-> GELU].

    forward(x, skip, length) -> (output, the input of the transposed conv); frequency layers
    crop `pad` bins on both sides, time layers keep `length` samples after `pad`.
    """

    def __init__(
        self,
        chin: int,
        chout: int,
        last: bool = False,
        kernel_size: int = 8,
        stride: int = 4,
        norm_groups: int = 1,
        empty: bool = False,
        freq: bool = True,
        dconv: bool = True,
        norm: bool = True,
        context: int = 1,
        dconv_kw: dict[str, Any] | None = None,
        pad: bool = True,
        context_freq: bool = True,
        rewrite: bool = True,
    ) -> None:
        super().__init__()
        self.pad = kernel_size // 4 if pad else 0
        self.last, self.freq, self.chin, self.empty = last, freq, chin, empty
        self.stride, self.kernel_size, self.norm = stride, kernel_size, norm
        self.context_freq = context_freq
        if freq:
            self.conv_tr: nn.Module = nn.ConvTranspose2d(chin, chout, (kernel_size, 1), (stride, 1))
        else:
            self.conv_tr = nn.ConvTranspose1d(chin, chout, kernel_size, stride)
        self.norm2 = group_norm(norm, norm_groups, chout)
        if empty:
            return
        self.rewrite = None
        if rewrite:
            if not freq:
                self.rewrite = nn.Conv1d(chin, 2 * chin, 1 + 2 * context, 1, context)
            elif context_freq:
                self.rewrite = nn.Conv2d(chin, 2 * chin, 1 + 2 * context, 1, context)
            else:  # context along time only (layers split by MultiWrap)
                self.rewrite = nn.Conv2d(chin, 2 * chin, (1, 1 + 2 * context), 1, (0, context))
            self.norm1 = group_norm(norm, norm_groups, 2 * chin)
        self.dconv = DConv(chin, **(dconv_kw or {})) if dconv else None

    def forward(self, x: Tensor, skip: Tensor | None, length: int | None) -> tuple[Tensor, Tensor]:
        if self.freq and x.dim() == 3:
            x = x.view(x.shape[0], self.chin, -1, x.shape[-1])
        y = x
        if not self.empty:
            y = x + skip
            if self.rewrite is not None:
                y = F.glu(self.norm1(self.rewrite(y)), dim=1)
            if self.dconv is not None:
                y = _run_dconv(self.dconv, y, self.freq)
        z = self.norm2(self.conv_tr(y))
        if self.freq:
            if self.pad:
                z = z[..., self.pad : -self.pad, :]
        else:
            z = z[..., self.pad : self.pad + length]
        if not self.last:
            z = F.gelu(z)
        return z, y


class MultiWrap(nn.Module):
    """One copy of a frequency layer per frequency band (`split_ratios` are the band edges as
    fractions of the bins), arranged so that copies with equal weights equal the plain layer.

    Used by some MDX-era HDemucs models ("different weights per frequency band in the outermost
    layers"). The bands differ in size and weights, so they run one after the other (2-3 bands).
    """

    def __init__(self, layer: HEncLayer | HDecLayer, split_ratios: Sequence[float]) -> None:
        super().__init__()
        self.split_ratios = list(split_ratios)
        self.conv = isinstance(layer, HEncLayer)
        check(not layer.norm, "multi_freqs: the wrapped layers must not use GroupNorm")
        check(layer.freq and layer.pad, "multi_freqs: only padded frequency layers can be split")
        self.layers = nn.ModuleList()
        for _ in range(len(self.split_ratios) + 1):
            lay = copy.deepcopy(layer)
            if self.conv:
                lay.conv.padding = (0, 0)
            else:
                lay.pad = 0
            for m in lay.modules():  # fresh initial weights for every band
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            self.layers.append(lay)

    def forward(self, x: Tensor, skip: Tensor | None = None, length: int | None = None):
        if self.conv:
            return self._encode(x, x.shape[2])
        return self._decode(x, skip), None

    def _encode(self, x: Tensor, bins: int) -> Tensor:
        """(b, c, f, t) -> (b, c', f / stride, t): each band gets exactly the frames it needs."""
        outs, start = [], 0
        for ratio, layer in zip([*self.split_ratios, 1], self.layers):
            k, stride, pad = layer.kernel_size, layer.stride, layer.kernel_size // 4
            limit = bins
            if ratio != 1:
                size = round(bins * ratio) - start + (pad if start == 0 else 0)
                frames = round((size - k) / stride + 1)
                limit = start + (frames - 1) * stride + k - (pad if start == 0 else 0)
            check(
                0 < limit - start and limit <= bins, f"multi_freqs {self.split_ratios}: empty band"
            )
            y = x[:, :, start:limit, :]
            y = F.pad(y, (0, 0, pad if start == 0 else 0, pad if ratio == 1 else 0))
            outs.append(layer(y))
            start = limit - k + stride
        return torch.cat(outs, dim=2)

    def _decode(self, x: Tensor, skip: Tensor) -> Tensor:
        """Each band's transposed conv output overlaps the next by `stride` bins: the overlap is
        summed (one bias removed), then the padding bins are cut at both ends."""
        bins = x.shape[2]
        outs: list[Tensor] = []
        start = 0
        for ratio, layer in zip([*self.split_ratios, 1], self.layers):
            limit = bins if ratio == 1 else round(bins * ratio)
            last, layer.last = layer.last, True
            out, _ = layer(x[:, :, start:limit], skip[:, :, start:limit], None)
            layer.last = last
            stride = layer.stride
            if outs:
                bias = layer.conv_tr.bias.view(1, -1, 1, 1)
                outs[-1][:, :, -stride:] += out[:, :, :stride] - bias
                out = out[:, :, stride:]
            if ratio == 1:
                out = out[:, :, : (-stride) // 2, :]  # demucs writes `:-stride // 2`
            if start == 0:
                out = out[:, :, stride // 2 :, :]
            outs.append(out)
            start = limit
        out = torch.cat(outs, dim=2)
        return out if last else F.gelu(out)
