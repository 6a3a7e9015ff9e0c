"""HTDemucs's cross-domain transformer (demucs 4.1.0 `demucs/transformer.py`).

Two stacks run side by side, one on the spectrogram branch (every (frame, bin) a token) and one
on the time branch; layers alternate between self-attention within a branch and cross-attention
to the other branch. Parameter names follow demucs (which builds on `nn.TransformerEncoderLayer`
and `nn.MultiheadAttention`): self_attn.in_proj_weight, linear1, norm1, gamma_1.scale, ...

Positional embeddings are recomputed with demucs's exact float32 operations: the phases reach
thousands of radians, where a different operation order moves sin/cos by more than 1e-5.

Axis legend: b batch, c channels (model width), f bins, t frames, n tokens, h heads, d head dim.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from separator.nn.demucs.blocks import LayerScale, check


def sin_embedding(
    length: int, dim: int, shift: int = 0, max_period: float = 10000.0, device: Any = "cpu"
) -> Tensor:
    """(length, 1, dim): cos then sin of pos / max_period^(k / (dim/2 - 1))."""
    pos = shift + torch.arange(length, device=device).view(-1, 1, 1)
    half = dim // 2
    adim = torch.arange(half, device=device).view(1, 1, -1)
    phase = pos / (max_period ** (adim / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


def sin_embedding_2d(dim: int, height: int, width: int, max_period: float = 10000.0) -> Tensor:
    """(1, dim, height, width): the first dim/2 channels encode the width (time) position, the
    others the height (bin), alternating sin and cos."""
    pe = torch.zeros(dim, height, width)
    half = dim // 2
    div = torch.exp(torch.arange(0.0, half, 2) * -(math.log(max_period) / half))
    pos_w = torch.arange(0.0, width).unsqueeze(1)
    pos_h = torch.arange(0.0, height).unsqueeze(1)
    pe[0:half:2] = torch.sin(pos_w * div).t().unsqueeze(1).repeat(1, height, 1)
    pe[1:half:2] = torch.cos(pos_w * div).t().unsqueeze(1).repeat(1, height, 1)
    pe[half::2] = torch.sin(pos_h * div).t().unsqueeze(2).repeat(1, 1, width)
    pe[half + 1 :: 2] = torch.cos(pos_h * div).t().unsqueeze(2).repeat(1, 1, width)
    return pe[None]


def cape_embedding(
    length: int,
    dim: int,
    batch: int,
    *,
    mean_normalize: bool,
    augment: bool,
    glob_loc_scale: tuple[float, float, float] = (0.0, 0.0, 1.0),
    max_period: float = 10000.0,
    device: Any = "cpu",
) -> Tensor:
    """CAPE (arXiv 2106.03143) positions, (length, batch, dim). Augmentation draws from numpy's
    global RNG, as demucs does (training only)."""
    pos = 1.0 * torch.arange(length).view(-1, 1, 1).repeat(1, batch, 1)
    if mean_normalize:
        pos -= torch.nanmean(pos, dim=0, keepdim=True)
    if augment:
        glob, local, scale = glob_loc_scale
        delta = np.random.uniform(-glob, glob, size=[1, batch, 1])
        delta_local = np.random.uniform(-local, local, size=[length, batch, 1])
        log_lambdas = np.random.uniform(-np.log(scale), np.log(scale), size=[1, batch, 1])
        pos = (pos + delta + delta_local) * np.exp(log_lambdas)
    pos = pos.to(device)
    half = dim // 2
    adim = torch.arange(half, device=device).view(1, 1, -1)
    phase = pos / (max_period ** (adim / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1).float()


class ChannelLastGroupNorm(nn.GroupNorm):
    """GroupNorm over (b, n, c) tokens (demucs's `MyGroupNorm`): 1 group = all of n and c."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class Attention(nn.Module):
    """`nn.MultiheadAttention`'s parameters (in_proj_weight/bias, out_proj) with SDPA.
    (b, n, c) queries, (b, m, c) keys/values -> (b, n, c)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, mem: Tensor | None = None) -> Tensor:
        w, bias = self.in_proj_weight, self.in_proj_bias
        dim = x.shape[-1]
        if mem is None:  # self-attention: one matmul for q, k, v
            q, k, v = F.linear(x, w, bias).chunk(3, dim=-1)
        else:
            q = F.linear(x, w[:dim], bias[:dim])
            k, v = F.linear(mem, w[dim:], bias[dim:]).chunk(2, dim=-1)
        q, k, v = (rearrange(a, "b n (h d) -> b h n d", h=self.heads) for a in (q, k, v))
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        return self.out_proj(rearrange(out, "b h n d -> b n (h d)"))


class EncoderLayer(nn.Module):
    """Self-attention (`cross=False`, demucs's `MyTransformerEncoderLayer`) or cross-attention
    (`CrossTransformerEncoderLayer`) + feed-forward, pre- or post-norm, with LayerScale and an
    optional GroupNorm on the output. Tokens are (b, n, c)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        hidden: int,
        *,
        cross: bool,
        dropout: float = 0.0,
        gelu: bool = True,
        group_norm: Any = False,
        norm_first: bool = False,
        norm_out: Any = False,
        layer_scale: bool = False,
        init_values: float = 1e-4,
    ) -> None:
        super().__init__()
        self.cross, self.norm_first = cross, norm_first
        self.activation = F.gelu if gelu else F.relu
        attn = Attention(dim, heads, dropout)
        if cross:
            self.cross_attn = attn
        else:
            self.self_attn = attn
        self.linear1 = nn.Linear(dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(hidden, dim)
        for name in ("norm1", "norm2", "norm3") if cross else ("norm1", "norm2"):
            norm = ChannelLastGroupNorm(int(group_norm), dim) if group_norm else nn.LayerNorm(dim)
            setattr(self, name, norm)
        self.norm_out = None
        # demucs tests `norm_first & norm_out` (bitwise) and makes int(norm_out) groups.
        if norm_first & norm_out:
            self.norm_out = ChannelLastGroupNorm(num_groups=int(norm_out), num_channels=dim)
        self.gamma_1 = LayerScale(dim, init_values, True) if layer_scale else nn.Identity()
        self.gamma_2 = LayerScale(dim, init_values, True) if layer_scale else nn.Identity()
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def _attend(self, q: Tensor, mem: Tensor | None) -> Tensor:
        attn = self.cross_attn if self.cross else self.self_attn
        return self.dropout1(attn(q, mem))

    def forward(self, x: Tensor, mem: Tensor | None = None) -> Tensor:
        """x (b, n, c); mem (b, m, c), the other branch, for cross-attention layers."""
        if self.norm_first:
            if self.cross:
                x = x + self.gamma_1(self._attend(self.norm1(x), self.norm2(mem)))
                x = x + self.gamma_2(self._feed_forward(self.norm3(x)))
            else:
                x = x + self.gamma_1(self._attend(self.norm1(x), None))
                x = x + self.gamma_2(self._feed_forward(self.norm2(x)))
            return self.norm_out(x) if self.norm_out is not None else x
        x = self.norm1(x + self.gamma_1(self._attend(x, mem if self.cross else None)))
        return self.norm2(x + self.gamma_2(self._feed_forward(x)))


class PositionEmbedding(nn.Module):
    """demucs's `transformer.ScaledEmbedding`: (n,) -> (n, c), weights read x `boost`."""

    def __init__(self, num: int, dim: int, scale: float = 1.0, boost: float = 3.0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num, dim)
        with torch.no_grad():
            self.embedding.weight *= scale / boost
        self.boost = boost

    def forward(self, index: Tensor) -> Tensor:
        return self.embedding(index) * self.boost


class CrossTransformerEncoder(nn.Module):
    """(b, c, f, t) spectrogram tokens and (b, c, t') time tokens -> the same shapes."""

    def __init__(
        self,
        dim: int,
        *,
        emb: str = "sin",
        hidden_scale: float = 4.0,
        heads: int = 8,
        layers: int = 6,
        cross_first: bool = False,
        dropout: float = 0.0,
        max_positions: int = 1000,
        norm_in: bool = True,
        norm_in_group: Any = False,
        group_norm: Any = False,
        norm_first: bool = False,
        norm_out: Any = False,
        max_period: float = 10000.0,
        layer_scale: bool = False,
        gelu: bool = True,
        sin_random_shift: int = 0,
        weight_pos_embed: float = 1.0,
        cape_mean_normalize: bool = True,
        cape_augment: bool = True,
        cape_glob_loc_scale: tuple = (5000.0, 1.0, 1.4),
    ) -> None:
        super().__init__()
        check(dim % heads == 0, f"transformer width {dim} not divisible by t_heads={heads}")
        check(dim % 4 == 0, f"transformer width {dim} must be a multiple of 4 (2-D positions)")
        check(emb in ("sin", "cape", "scaled"), f"t_emb={emb!r}: expected sin, cape or scaled")
        self.num_layers, self.classic_parity = layers, 1 if cross_first else 0
        self.emb, self.max_period = emb, max_period
        self.weight_pos_embed, self.sin_random_shift = weight_pos_embed, sin_random_shift
        self.cape = (cape_mean_normalize, cape_augment, tuple(cape_glob_loc_scale))
        if emb == "scaled":
            self.position_embeddings = PositionEmbedding(max_positions, dim, scale=0.2)
        if norm_in:
            self.norm_in, self.norm_in_t = nn.LayerNorm(dim), nn.LayerNorm(dim)
        elif norm_in_group:
            groups = int(norm_in_group)
            self.norm_in = ChannelLastGroupNorm(groups, dim)
            self.norm_in_t = ChannelLastGroupNorm(groups, dim)
        else:
            self.norm_in, self.norm_in_t = nn.Identity(), nn.Identity()
        kw = dict(
            dropout=dropout,
            gelu=gelu,
            group_norm=group_norm,
            norm_first=norm_first,
            norm_out=norm_out,
            layer_scale=layer_scale,
        )
        hidden = int(dim * hidden_scale)
        self.layers, self.layers_t = nn.ModuleList(), nn.ModuleList()
        for idx in range(layers):
            cross = idx % 2 != self.classic_parity
            self.layers.append(EncoderLayer(dim, heads, hidden, cross=cross, **kw))
            self.layers_t.append(EncoderLayer(dim, heads, hidden, cross=cross, **kw))

    def forward(self, x: Tensor, xt: Tensor) -> tuple[Tensor, Tensor]:
        b, c, f, t = x.shape
        pos_2d = sin_embedding_2d(c, f, t, self.max_period).to(x.device)
        pos_2d = rearrange(pos_2d, "b c f t -> b (t f) c")
        x = self.norm_in(rearrange(x, "b c f t -> b (t f) c")) + self.weight_pos_embed * pos_2d
        t2 = xt.shape[-1]
        pos = rearrange(self._time_positions(t2, b, c, xt.device), "t b c -> b t c")
        xt = self.norm_in_t(rearrange(xt, "b c t -> b t c")) + self.weight_pos_embed * pos
        for idx in range(self.num_layers):
            if idx % 2 == self.classic_parity:
                x, xt = self.layers[idx](x), self.layers_t[idx](xt)
            else:
                x, xt = self.layers[idx](x, xt), self.layers_t[idx](xt, x)
        return rearrange(x, "b (t f) c -> b c f t", t=t), rearrange(xt, "b t c -> b c t")

    def _time_positions(self, length: int, batch: int, dim: int, device: Any) -> Tensor:
        """(length, 1 or batch, dim) positions of the time tokens."""
        if self.emb == "sin":
            # demucs draws the shift from Python's global `random` on every forward, eval too
            # (randrange(1) still consumes the generator); apply_model's shifts share that
            # generator, so a pipeline replaying demucs must see the same draws.
            shift = random.randrange(self.sin_random_shift + 1)
            return sin_embedding(length, dim, shift, self.max_period, device)
        if self.emb == "cape":
            mean_normalize, augment, scales = self.cape
            return cape_embedding(
                length,
                dim,
                batch,
                mean_normalize=mean_normalize,
                augment=augment and self.training,
                glob_loc_scale=scales,
                max_period=self.max_period,
                device=device,
            )
        index = torch.arange(length, device=device)
        return self.position_embeddings(index)[:, None]
