"""Pieces every Demucs generation shares: LayerScale, the DConv residual branch (with its
windowed BiLSTM and local attention), and small padding/trimming helpers.

Parameter names and registration order follow demucs 4.1.0 (`demucs/demucs.py`,
`demucs/transformer.py`), so state dicts load with `strict=True` and list their keys in the same
order (the DiffQ decoder in `separator.zoo.diffq` relies on that order).

Axis legend: b batch, c channels, t time steps (samples or STFT frames), w window length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from separator.errors import ConfigError


def check(condition: bool, message: str) -> None:
    """Raise a ConfigError with `message` unless `condition` holds (constructor checks)."""
    if not condition:
        raise ConfigError(message)


def center_trim(x: Tensor, length: int) -> Tensor:
    """Cut (..., t) to (..., length) keeping the centre; an odd excess is dropped on the right."""
    delta = x.shape[-1] - length
    if delta < 0:
        raise ValueError(f"cannot centre-trim {x.shape[-1]} samples to {length}")
    return x[..., delta // 2 : x.shape[-1] - (delta - delta // 2)]


def pad1d(x: Tensor, left: int, right: int, mode: str = "constant") -> Tensor:
    """F.pad on the last axis that also reflect-pads inputs shorter than the padding.

    demucs's `hdemucs.pad1d`: when the signal is too short to reflect, zeros are inserted first
    (on the right as far as the right padding allows, the rest on the left), then reflected.
    """
    length = x.shape[-1]
    if mode == "reflect" and length <= max(left, right):
        extra = max(left, right) - length + 1
        extra_right = min(right, extra)
        extra_left = extra - extra_right
        x = F.pad(x, (extra_left, extra_right))
        left, right = left - extra_left, right - extra_right
    return F.pad(x, (left, right), mode)


def rescale_convs(module: nn.Module, reference: float) -> None:
    """demucs's initial weight rescale: every conv's weight and bias / sqrt(std / reference)."""
    convs = (nn.Conv1d, nn.ConvTranspose1d, nn.Conv2d, nn.ConvTranspose2d)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, convs):
                scale = (sub.weight.std() / reference) ** 0.5
                sub.weight /= scale
                if sub.bias is not None:
                    sub.bias /= scale


class LayerScale(nn.Module):
    """Per-channel residual scale (Touvron et al. 2021): (b, c, t), or (..., c) if channel_last."""

    def __init__(self, channels: int, init: float = 0.0, channel_last: bool = False) -> None:
        super().__init__()
        self.channel_last = channel_last
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x if self.channel_last else self.scale[:, None] * x


class BLSTM(nn.Module):
    """Bidirectional LSTM over time, projected back to `dim`: (b, c, t) -> (b, c, t).

    With `max_steps`, long inputs run in overlapping windows of `max_steps` with stride
    max_steps / 2, all windows in one batch; each keeps its centre (window 0 its start, the last
    one its end), as demucs's `BLSTM` does.
    """

    def __init__(
        self, dim: int, layers: int = 1, max_steps: int | None = None, skip: bool = False
    ) -> None:
        super().__init__()
        check(max_steps is None or max_steps % 4 == 0, "BLSTM max_steps must be a multiple of 4")
        self.max_steps = max_steps
        self.skip = skip
        self.lstm = nn.LSTM(bidirectional=True, num_layers=layers, hidden_size=dim, input_size=dim)
        self.linear = nn.Linear(2 * dim, dim)

    def _run(self, x: Tensor) -> Tensor:
        """(b, c, t) -> (b, c, t) through the LSTM and the projection."""
        y = self.linear(self.lstm(x.permute(2, 0, 1))[0])
        return y.permute(1, 2, 0)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t = x.shape
        width = self.max_steps
        if width is None or t <= width:
            y = self._run(x)
        else:
            stride = width // 2
            n = math.ceil(t / stride)
            padded = F.pad(x, (0, (n - 1) * stride + width - t))
            frames = padded.unfold(-1, width, stride)  # (b, c, n, w)
            out = self._run(frames.permute(0, 2, 1, 3).reshape(b * n, c, width))
            out = out.view(b, n, c, width)
            keep = stride // 2
            middle = out[:, 1:-1, :, keep:-keep].permute(0, 2, 1, 3).reshape(b, c, -1)
            parts = [out[:, 0, :, :-keep], middle, out[:, -1, :, keep:]]
            y = torch.cat(parts, dim=-1)[..., :t]
        return y + x if self.skip else y


class LocalState(nn.Module):
    """Content-only attention with a learnt decay in |t - s| (demucs's `LocalState`, nfreqs=0).

    (b, c, t) -> (b, c, t), residual included. Scores are divided by sqrt(channels per head);
    a self-match is masked with -100 (not -inf) before the softmax over keys.
    """

    def __init__(self, channels: int, heads: int = 4, ndecay: int = 4) -> None:
        super().__init__()
        check(channels % heads == 0, f"LocalState: {channels} channels, {heads} heads")
        self.heads = heads
        self.ndecay = ndecay
        self.content = nn.Conv1d(channels, channels, 1)
        self.query = nn.Conv1d(channels, channels, 1)
        self.key = nn.Conv1d(channels, channels, 1)
        if ndecay:
            self.query_decay = nn.Conv1d(channels, heads * ndecay, 1)
            with torch.no_grad():  # decay near zero at first (there is a sigmoid)
                self.query_decay.weight *= 0.01
                self.query_decay.bias.fill_(-2)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, t = x.shape
        h = self.heads
        index = torch.arange(t, device=x.device, dtype=x.dtype)
        delta = index[:, None] - index[None, :]  # (t keys, s queries)
        queries = self.query(x).view(b, h, -1, t)
        keys = self.key(x).view(b, h, -1, t)
        dots = torch.einsum("bhct,bhcs->bhts", keys, queries) / keys.shape[2] ** 0.5
        if self.ndecay:
            decays = torch.arange(1, self.ndecay + 1, device=x.device, dtype=x.dtype)
            decay_q = torch.sigmoid(self.query_decay(x).view(b, h, -1, t)) / 2
            kernel = -decays.view(-1, 1, 1) * delta.abs() / self.ndecay**0.5
            dots = dots + torch.einsum("fts,bhfs->bhts", kernel, decay_q)
        eye = torch.eye(t, device=x.device, dtype=torch.bool)
        weights = torch.softmax(dots.masked_fill(eye, -100), dim=2)
        content = self.content(x).view(b, h, -1, t)
        result = torch.einsum("bhts,bhct->bhcs", weights, content).reshape(b, -1, t)
        return x + self.proj(result)


class DConv(nn.Module):
    """Residual branches of dilated convolutions (demucs's `DConv`): (b, c, t) -> (b, c, t).

    Layer d: conv(k, dilation 2^d) -> norm -> act [-> BLSTM] [-> LocalState] -> 1x1 conv to 2c
    -> norm -> GLU -> LayerScale, added to the input. The Sequential indices are the checkpoint's.
    """

    def __init__(
        self,
        channels: int,
        compress: float = 4,
        depth: int = 2,
        init: float = 1e-4,
        norm: bool = True,
        attn: bool = False,
        heads: int = 4,
        ndecay: int = 4,
        lstm: bool = False,
        gelu: bool = True,
        kernel: int = 3,
    ) -> None:
        super().__init__()
        check(kernel % 2 == 1, "DConv kernel must be odd")
        hidden = int(channels / compress)
        dilate = depth > 0

        def norm_fn(d: int) -> nn.Module:
            return nn.GroupNorm(1, d) if norm else nn.Identity()

        self.layers = nn.ModuleList()
        for d in range(abs(depth)):
            dilation = 2**d if dilate else 1
            mods: list[nn.Module] = [
                nn.Conv1d(
                    channels, hidden, kernel, dilation=dilation, padding=dilation * (kernel // 2)
                ),
                norm_fn(hidden),
                nn.GELU() if gelu else nn.ReLU(),
                nn.Conv1d(hidden, 2 * channels, 1),
                norm_fn(2 * channels),
                nn.GLU(1),
                LayerScale(channels, init),
            ]
            # demucs inserts attention, then the LSTM, both at index 3: LSTM before attention.
            if attn:
                mods.insert(3, LocalState(hidden, heads=heads, ndecay=ndecay))
            if lstm:
                mods.insert(3, BLSTM(hidden, layers=2, max_steps=200, skip=True))
            self.layers.append(nn.Sequential(*mods))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


def group_norm(norm: bool, groups: int, channels: int) -> nn.Module:
    """demucs's optional GroupNorm of a layer: GroupNorm(groups, channels), or Identity."""
    return nn.GroupNorm(groups, channels) if norm else nn.Identity()
