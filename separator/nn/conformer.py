"""MSST's band Conformers: BS-/Mel-RoFormer with conformer blocks (Gulati et al. 2020,
arXiv 2005.08100) on the time and frequency axes.

`bs_conformer` / `mel_band_conformer` (MSST 2025-09, `models/bs_roformer/{bs,mel_band}_conformer.py`
at ccc011a). Band split, masks, STFT, RoPE and the optional linear-attention transformer are those
of `roformer.py`; each time/frequency transformer becomes a `Conformer` stack.

Axis legend: B rows (batch × bands or batch × frames), n sequence, d feature, i inner channels.

Reference behaviour reproduced (ccc011a):
- a block is x + ½FF(x), x + attn(x), x + conv(x), x + ½FF(x), then an RMSNorm (`out_norm`);
- the conv module's BatchNorm1d uses its running statistics in eval (they are in the state dict);
- no stack has an output norm; BS keeps `final_norm`, Mel has none (not even per stack);
- the linear-attention transformer's feed-forward keeps the width factor 4 (`ff_mult` is not
  passed to it);
- `mel_band_conformer` sets the mel filter's corner bins from their neighbours
  (`mel_band_matrix(edges="neighbour")`) and its mask estimators have depth - 1 hidden layers;
- `zero_dc` defaults to True (it has since these classes were added).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from separator.nn.bs_roformer import BSRoformer
from separator.nn.config import BSConformerConfig, MelConformerConfig
from separator.nn.layers import (
    Attention,
    FeedForward,
    RMSNorm,
    RotaryEmbedding,
    Transformer,
    WeightCache,
    _Identity,
    unit_rms,
)
from separator.nn.mel_roformer import MelBandRoformer
from separator.nn.roformer import RoformerBase, roformer_family, variant_match


class ConformerConvModule(nn.Module):
    """RMSNorm → pointwise Conv1d(d → 2i) → GLU → depthwise Conv1d(i, k) → BatchNorm1d → SiLU →
    pointwise Conv1d(i → d), i = d·expansion. Keys as MSST's `net` Sequential: net.0 (norm),
    net.2, net.4, net.5 (BatchNorm), net.7; the other slots hold parameter-free layers.

    forward: (B, n, d) -> x + conv(x), same shape. In eval the BatchNorm is folded into the
    depthwise convolution; pointwise convolutions run as matmuls in channels-last layout.
    """

    def __init__(
        self, dim: int, *, expansion_factor: int = 2, kernel_size: int = 31, dropout: float = 0.0
    ) -> None:
        super().__init__()
        inner = dim * expansion_factor
        self.net = nn.Sequential(
            RMSNorm(dim),
            _Identity(),  # MSST: Rearrange('b n d -> b d n')
            nn.Conv1d(dim, inner * 2, 1),
            nn.GLU(dim=1),
            nn.Conv1d(inner, inner, kernel_size, padding=(kernel_size - 1) // 2, groups=inner),
            nn.BatchNorm1d(inner),
            nn.SiLU(),
            nn.Conv1d(inner, dim, 1),
            _Identity(),  # MSST: Rearrange('b d n -> b n d')
            nn.Dropout(dropout),
        )
        self._cache = WeightCache()

    def _weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """Pointwise-in weight (2i, d) with the norm's gamma folded in; the depthwise kernel
        (i, 1, 1, k) and bias with the BatchNorm's eval affine folded in."""
        norm, pw_in, dw, bn = self.net[0], self.net[2], self.net[4], self.net[5]
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        w_dw = dw.weight * scale[:, None, None]
        b_dw = (dw.bias - bn.running_mean) * scale + bn.bias
        return pw_in.weight[..., 0] * norm.gamma, w_dw.unsqueeze(2), b_dw

    def _depthwise(self, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """Depthwise convolution along n of channels-last h (B, n, i) -> (B, i, 1, n), in the
        channels-last memory layout: a 2-d convolution on a channels-last view is >10× faster
        on the CPU than `conv1d` on the (B, i, n) layout, which is what MSST runs."""
        dw = self.net[4]
        return F.conv2d(
            h.transpose(1, 2).unsqueeze(2),
            weight,
            bias,
            padding=(0, dw.padding[0]),
            groups=dw.groups,
        )

    def forward(self, x: Tensor) -> Tensor:
        norm, pw_in, dw, bn, pw_out = (self.net[i] for i in (0, 2, 4, 5, 7))
        if self.training:  # BatchNorm with batch statistics
            h = F.glu(F.linear(norm(x), pw_in.weight[..., 0], pw_in.bias), dim=-1)
            h = self._depthwise(h, dw.weight.unsqueeze(2), dw.bias).squeeze(2)
            h = F.silu(bn(h)).transpose(1, 2)
            return x + self.net[9](F.linear(h, pw_out.weight[..., 0], pw_out.bias))
        params = [norm.gamma, pw_in.weight, dw.weight, dw.bias, bn.weight, bn.bias]
        w_in, w_dw, b_dw = self._cache.get(
            params + [bn.running_mean, bn.running_var], self._weights
        )
        h = F.glu(F.linear(unit_rms(x), w_in, pw_in.bias), dim=-1)  # (B, n, i)
        h = F.silu(self._depthwise(h, w_dw, b_dw), inplace=True)  # (B, i, 1, n) channels-last
        h = h.squeeze(2).transpose(1, 2)  # (B, n, i), contiguous again
        b, n, d = x.shape
        out = torch.addmm(x.reshape(b * n, d), h.reshape(b * n, -1), pw_out.weight[..., 0].t())
        return out.add_(pw_out.bias).view(b, n, d)


class MacaronFeedForward(nn.Module):
    """x + ½·FF(x) (MSST's `MacaronFF`, key `ff`)."""

    def __init__(self, dim: int, *, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.ff = FeedForward(dim, mult=mult, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.ff(x, scale=0.5)


class ConformerBlock(nn.Module):
    """½FF, attention (RoPE, gates), convolution, ½FF, each with its residual, then RMSNorm."""

    def __init__(
        self,
        *,
        dim: int,
        heads: int,
        dim_head: int,
        ff_mult: int = 4,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        conv_expansion_factor: int = 2,
        conv_kernel_size: int = 31,
        rotary_embed: RotaryEmbedding | None = None,
    ) -> None:
        super().__init__()
        self.ff1 = MacaronFeedForward(dim, mult=ff_mult, dropout=ff_dropout)
        self.attn = Attention(
            dim, heads=heads, dim_head=dim_head, dropout=attn_dropout, rotary_embed=rotary_embed
        )
        self.conv = ConformerConvModule(
            dim,
            expansion_factor=conv_expansion_factor,
            kernel_size=conv_kernel_size,
            dropout=ff_dropout,
        )
        self.ff2 = MacaronFeedForward(dim, mult=ff_mult, dropout=ff_dropout)
        self.out_norm = RMSNorm(dim)

    def forward(self, x: Tensor, rotation: Any = None) -> Tensor:
        """(B, n, d) -> (B, n, d); attention and convolution add their own residuals."""
        x = self.conv(self.attn(self.ff1(x), rotation))
        return self.out_norm(self.ff2(x))


class Conformer(nn.Module):
    """A stack of conformer blocks over one axis. Keys: layers.{i}.*, norm.gamma (optional)."""

    def __init__(self, *, depth: int, norm_output: bool = False, **block: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ConformerBlock(**block) for _ in range(depth))
        self.norm = RMSNorm(block["dim"]) if norm_output else _Identity()

    def forward(self, x: Tensor, rotation: Any = None) -> Tensor:
        for block in self.layers:
            x = block(x, rotation)
        return self.norm(x)


class _ConformerTrunk(RoformerBase):
    """Per-axis conformer stacks in place of the RoFormer's transformers."""

    def _block(self, index: int, norm_output: bool) -> list[nn.Module]:
        c = self.config
        kw = self._stack_kwargs(norm_output=False)  # MSST's Conformers pass norm_output=False
        block: list[nn.Module] = []
        if c.linear_conformer_depth > 0:
            block.append(Transformer(depth=c.linear_conformer_depth, linear_attn=True, **kw))
        conv = dict(
            ff_mult=c.ff_mult,
            conv_expansion_factor=c.conv_expansion_factor,
            conv_kernel_size=c.conv_kernel_size,
        )
        for depth, embed in zip((c.time_conformer_depth, c.freq_conformer_depth), self._rotary):
            block.append(Conformer(depth=depth, rotary_embed=embed, **conv, **kw))
        return block


class BSConformer(_ConformerTrunk, BSRoformer):
    """MSST's BS-Conformer. Keyword arguments: an MSST `model:` section."""

    config_class = BSConformerConfig


class MelBandConformer(_ConformerTrunk, MelBandRoformer):
    """MSST's Mel-Band Conformer. Keyword arguments: an MSST `model:` section."""

    config_class = MelConformerConfig
    _extra_mask_layer = 0  # MSST's mel_band_conformer MLP: depth - 1 hidden layers, like BS
    _mel_edges = "neighbour"


_KEYS = {
    "time_conformer_depth",
    "freq_conformer_depth",
    "linear_conformer_depth",
    "conv_expansion_factor",
    "conv_kernel_size",
    "ff_mult",
}


BS_FAMILY = roformer_family("bs_conformer", BSConformer, variant_match(_KEYS, mel=False))
MEL_FAMILY = roformer_family("mel_band_conformer", MelBandConformer, variant_match(_KEYS, mel=True))
