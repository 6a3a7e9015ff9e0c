"""SCNet's separation network: dual-path layers (BiLSTM in SCNet, RoPE transformers in SCNet_Tran)
alternating with a feature conversion (rFFT along time at even layers, irFFT back at odd ones).

Axis legend: b batch, c channels, f frequency rows, t frames (t' = t/2 + 1 after the rFFT).
MSST (models/scnet/separation.py, scnet_tran.py at ccc011a) keeps (b, c, f, t) and copies
around every path; here the whole network runs channels-last in (b, f, t, c): the time path's
rows (b·f, t, c) are a free view, the frequency path gets one transpose per layer, GroupNorm(1)
is one statistics pass and one multiply-add, and each path's residual add is fused into its output
Linear (`addmm`). Parameter names: `dp_modules.{i}.{norm_layers,lstm_layers,linear_layers}.{0,1}`,
`dp_modules.{i}.{norm_layers.{0,1},freq_layer,time_layer}` (transformer).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from separator.nn.layers import RotaryEmbedding, Transformer


def group_norm_last(x: Tensor, norm: nn.GroupNorm) -> Tensor:
    """GroupNorm(1, c) of a channels-last tensor (b, ..., c): statistics over all but b."""
    dims = tuple(range(1, x.dim()))
    var, mean = torch.var_mean(x, dim=dims, unbiased=False, keepdim=True)
    scale = torch.rsqrt(var + norm.eps) * norm.weight  # (b, 1, .., c)
    return torch.addcmul(norm.bias - mean * scale, x, scale)


def to_spectral(x: Tensor) -> Tensor:
    """rFFT along time, "ortho": (b, f, t, c) -> (b, f, t/2+1, 2c) as [real | imag] channels."""
    z = torch.fft.rfft(x.float(), dim=2, norm="ortho")
    return torch.cat([z.real, z.imag], -1)


def from_spectral(x: Tensor) -> Tensor:
    """The inverse of `to_spectral`: (b, f, t/2+1, 2c) -> (b, f, t, c) (t even)."""
    c = x.shape[-1] // 2
    return torch.fft.irfft(torch.complex(x[..., :c], x[..., c:]), dim=2, norm="ortho")


class DualPathRNN(nn.Module):
    """GroupNorm → BiLSTM over frequency → Linear, residual; then the same over time."""

    def __init__(self, channels: int, expand: int) -> None:
        super().__init__()
        hidden = channels * expand
        self.lstm_layers = nn.ModuleList(
            nn.LSTM(channels, hidden, bidirectional=True, batch_first=True) for _ in range(2)
        )
        self.linear_layers = nn.ModuleList(nn.Linear(hidden * 2, channels) for _ in range(2))
        self.norm_layers = nn.ModuleList(nn.GroupNorm(1, channels) for _ in range(2))

    def _path(self, i: int, x: Tensor) -> Tensor:
        """x + Linear(BiLSTM(norm(x))) along axis 2 of (b, n, l, c); the same layout back."""
        b, n, length, c = x.shape
        h, _ = self.lstm_layers[i](group_norm_last(x, self.norm_layers[i]).view(b * n, length, c))
        lin = self.linear_layers[i]
        out = torch.addmm(x.reshape(-1, c), h.reshape(-1, h.shape[-1]), lin.weight.t())
        return out.add_(lin.bias).view(b, n, length, c)

    def forward(self, x: Tensor) -> Tensor:
        """(b, f, t, c) -> (b, f, t, c)."""
        x = self._path(0, x.transpose(1, 2).contiguous())  # over frequency, rows (b·t)
        return self._path(1, x.transpose(1, 2).contiguous())  # over time, rows (b·f)


class DualPathTran(nn.Module):
    """GroupNorm → Transformer over frequency, residual; then the same over time."""

    def __init__(self, channels: int, config, time_rotary, freq_rotary) -> None:
        super().__init__()
        kw = dict(
            dim=channels,
            depth=config.tran_depth,
            heads=config.tran_heads,
            dim_head=config.tran_dim_head,
            attn_dropout=config.tran_attn_dropout,
            ff_dropout=config.tran_ff_dropout,
        )
        self.norm_layers = nn.ModuleList(nn.GroupNorm(1, channels) for _ in range(2))
        self.time_layer = Transformer(rotary_embed=time_rotary, **kw)
        self.freq_layer = Transformer(rotary_embed=freq_rotary, **kw)
        self._rotary = (time_rotary, freq_rotary)  # a tuple: registered through the layers only

    def _path(self, i: int, layer: Transformer, x: Tensor, rotary: nn.Module) -> Tensor:
        b, n, length, c = x.shape
        y = group_norm_last(x, self.norm_layers[i]).view(b * n, length, c)
        rotation = rotary.rotation(length).to(x.device)
        return layer(y, rotation).view(b, n, length, c).add_(x)

    def forward(self, x: Tensor) -> Tensor:
        """(b, f, t, c) -> (b, f, t, c)."""
        time_rot, freq_rot = self._rotary
        x = self._path(0, self.freq_layer, x.transpose(1, 2).contiguous(), freq_rot)
        return self._path(1, self.time_layer, x.transpose(1, 2).contiguous(), time_rot)


class PartialRotary(RotaryEmbedding):
    """rotary-embedding-torch's `RotaryEmbedding(dim=rotary_dim)` used on heads of `dim_head`.

    `freqs` holds rotary_dim/2 values (the checkpoint's); only the first rotary_dim features of a
    head rotate (MSST's SCNet_Tran with tran_rotary_embedding_dim < tran_dim_head). The rotation
    is padded with 1 (angle 0) to dim_head/2 pairs, which leaves the other features exactly as
    they are, so `nn.layers.Attention` applies it unchanged.
    """

    def __init__(self, rotary_dim: int, dim_head: int) -> None:
        super().__init__(rotary_dim)
        self.pairs = dim_head // 2

    def rotation(self, seq_len: int) -> Tensor:
        rot = super().rotation(seq_len)  # (seq, rotary_dim / 2) complex
        if rot.shape[1] == self.pairs:
            return rot
        ones = torch.ones(seq_len, self.pairs - rot.shape[1], dtype=rot.dtype, device=rot.device)
        return torch.cat([rot, ones], 1)


class SeparationNet(nn.Module):
    """`num_dplayer` dual-path layers; layer i works on 2c channels when i is odd (rFFT domain).

    forward: (b, c, f, t) -> (b, c, f, t), t even.
    """

    def __init__(self, channels: int, config, *, transformer: bool) -> None:
        super().__init__()
        widths = [channels * (2 if i % 2 else 1) for i in range(config.num_dplayer)]
        if transformer:
            rot = config.tran_rotary_embedding_dim
            # One rotary module per axis, shared by every layer (MSST's SeparationNetTran).
            time_rot = PartialRotary(rot, config.tran_dim_head)
            freq_rot = PartialRotary(rot, config.tran_dim_head)
            mods = [DualPathTran(w, config, time_rot, freq_rot) for w in widths]
        else:
            mods = [DualPathRNN(w, config.expand) for w in widths]
        self.dp_modules = nn.ModuleList(mods)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)  # (b, f, t, c), made contiguous by the first path
        for i, dp in enumerate(self.dp_modules):
            x = dp(x)
            x = to_spectral(x) if i % 2 == 0 else from_spectral(x)
        return x.permute(0, 3, 1, 2).contiguous()
