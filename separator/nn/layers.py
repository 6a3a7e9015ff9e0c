"""Transformer blocks shared by BS-RoFormer and Mel-Band RoFormer.

Parameter names and shapes follow the checkpoint layout of ZFTurbo's
Music-Source-Separation-Training (MSST, `models/bs_roformer/bs_roformer.py`), so community
checkpoints load with `strict=True`:

    Attention:        norm.gamma, to_qkv.weight, to_gates.{weight,bias}, to_out.0.weight,
                      rotary_embed.freqs or pope_embed.{inv_freqs,bias} (shared by every layer
                      of one axis), to_value_residual_mix.{weight,bias} (experimental RoFormers)
    FeedForward:      net.0.gamma, net.1.{weight,bias}, net.4.{weight,bias}
    LinearAttention:  norm.gamma, to_qkv.0.weight, temperature, to_out.1.weight
    Transformer:      layers.{i}.0 (attention), layers.{i}.1 (feed-forward), norm.gamma (optional)

The computation is the same as MSST's, written for speed: a fused RMSNorm, rotary embeddings applied
as one complex multiplication with angles computed once per forward, and
`scaled_dot_product_attention`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# F.normalize clamps the norm at 1e-12; an RMS epsilon of (1e-12)^2 / dim gives the same result for
# every vector whose norm is not vanishingly small, and zero (not NaN) for an all-zero vector.
_NORM_EPS = 1e-24


class WeightCache:
    """Caches weights derived from parameters (folded, stacked) while no gradient is recorded.

    The key holds each parameter's identity, version counter, device and dtype, so
    `load_state_dict`, optimiser steps and `.to()` all invalidate it. With gradients on, the
    derived weights are rebuilt every call so that autograd sees them.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: object = None

    def get(self, params: Sequence[Tensor], build: Callable[[], Any]) -> Any:
        # Under torch.compile the derived weights are part of the traced graph: a Python-side
        # cache would add guards on its key that fail between calls and force recompiles.
        if torch.compiler.is_compiling():
            return build()
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return build()
        key = tuple((id(p), p._version, p.device, p.dtype) for p in params)
        if key != self._key:
            self._value, self._key = build(), key
        return self._value


def unit_rms(x: Tensor) -> Tensor:
    """x scaled to unit RMS over the last axis: MSST's `F.normalize(x) * sqrt(dim)` without gamma.

    One reduction pass and one multiply; the norms' gammas are folded into the next Linear.
    """
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)
    return x * (x.shape[-1] ** 0.5 / norm)


class RMSNorm(nn.Module):
    """x / rms(x) * gamma over the last axis, i.e. MSST's `F.normalize(x) * sqrt(dim) * gamma`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Under autocast x arrives in bf16/fp16 while gamma stays float32: rms_norm has no fused
        # kernel for mixed dtypes (it warns, "Mismatch dtype between input and weight", and takes
        # a slower path). Normalising in gamma's dtype gives the same separation bit for bit
        # (the next matmul casts down), and is a no-op in float32.
        return F.rms_norm(x.to(self.gamma.dtype), (self.dim,), self.gamma, eps=_NORM_EPS / self.dim)


class _Identity(nn.Module):
    """Stand-in for a missing output norm (no parameters, like nn.Identity)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class RotaryEmbedding(nn.Module):
    """Holds the rotary frequencies (`freqs`, dim_head // 2 values) of one attention axis.

    The checkpoint stores `freqs`; MSST applies whatever values it holds (they need not be the
    standard 1/10000^(2k/d)), so we do the same. Pairs of adjacent features (2k, 2k+1) are rotated
    by the angle position * freqs[k], as rotary-embedding-torch does.
    """

    def __init__(self, dim_head: int, theta: float = 10000.0) -> None:
        super().__init__()
        freqs = 1.0 / theta ** (torch.arange(0, dim_head, 2).float() / dim_head)
        # A frozen parameter (not a buffer) because that is where checkpoints keep it.
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def rotation(self, seq_len: int) -> Tensor:
        """Unit complex numbers exp(i·pos·freq) of shape (seq_len, dim_head // 2), complex64."""
        pos = torch.arange(seq_len, device=self.freqs.device, dtype=torch.float32)
        angles = torch.outer(pos, self.freqs.float())
        return torch.polar(torch.ones_like(angles), angles)


class PolarAngles(NamedTuple):
    """PoPE factors of one forward: [cos, sin] of the query phases, (seq, 1, 2, d), and of the
    key phases, (seq, heads, 2, d)."""

    q: Tensor
    k: Tensor

    def to(self, device: torch.device) -> PolarAngles:
        return PolarAngles(self.q.to(device), self.k.to(device))


class PolarEmbedding(nn.Module):
    """PoPE, polar positional embedding (Gopalakrishnan et al. 2025, arXiv 2509.10534).

    State as in PoPE-pytorch's `PoPE(dim=dim_head, heads=heads)`, which MSST (ccc011a) shares
    between the layers of one axis: the buffer `inv_freqs` (dim_head values, theta^(-i/dim_head):
    one frequency per feature, not per pair) and the parameter `bias` (heads, dim_head), clamped
    to [-2π, 0] at use. A query feature i at position p becomes softplus(q_i)·e^(i·p·inv_freqs[i]),
    a key feature the same with the phase shifted by bias[head, i]; the attention logit is the
    real part of q·conj(k). Checkpoints hold `inv_freqs`, and MSST uses whatever it holds.
    """

    def __init__(self, dim_head: int, heads: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv_freqs = theta ** -(torch.arange(dim_head).float() / dim_head)
        self.register_buffer("inv_freqs", inv_freqs)
        self.bias = nn.Parameter(torch.zeros(heads, dim_head))

    def rotation(self, seq_len: int) -> PolarAngles:
        """Phases of `seq_len` positions, float32 (PoPE-pytorch computes them outside autocast)."""
        inv = self.inv_freqs.float()
        phase = torch.outer(torch.arange(seq_len, device=inv.device, dtype=inv.dtype), inv)
        k_phase = phase + self.bias.float().clamp(-2.0 * math.pi, 0.0).unsqueeze(1)  # (h, n, d)
        q = torch.stack([phase.cos(), phase.sin()], dim=1).unsqueeze(1)
        k = torch.stack([k_phase.cos(), k_phase.sin()], dim=2).transpose(0, 1)
        return PolarAngles(q, k)


def polar_attention(qk: Tensor, v: Tensor, angles: PolarAngles, scale: float) -> Tensor:
    """Attention with PoPE positions, as PoPE-pytorch's non-fused `flash_attn_with_pope`.

    qk: (batch, seq, 2, heads, d) queries and keys; v: (batch, seq, heads, d).
    Returns (batch, heads, seq, d).
    Magnitudes softplus(q), softplus(k) are expanded to 2·d features [m·cos | m·sin] by one
    broadcast multiply (PoPE-pytorch interleaves them; the dot product is the same sum). The scale
    is the model's d^-0.5, not (2d)^-0.5. v is zero-padded to 2·d so that the CPU's flash kernel
    serves equal head sizes (the reference's unequal sizes fall back to the math kernel, about 2×
    slower); the padding is dropped after.
    """
    d = qk.shape[-1]
    with torch.autocast(qk.device.type, enabled=False):
        m = F.softplus(qk.float()).unsqueeze(-2)  # (b, n, 2, h, 1, d)
        qc = (m[:, :, 0] * angles.q).flatten(-2).to(v.dtype)  # (b, n, h, 2d)
        kc = (m[:, :, 1] * angles.k).flatten(-2).to(v.dtype)
    out = F.scaled_dot_product_attention(
        qc.transpose(1, 2), kc.transpose(1, 2), F.pad(v, (0, d)).transpose(1, 2), scale=scale
    )
    return out[..., :d]


def apply_rotary(qk: Tensor, rotation: Tensor) -> Tensor:
    """Rotate queries and keys together.

    qk: (batch, seq, 2, heads, dim_head) real; rotation: (seq, dim_head // 2) complex.
    Returns a tensor of the same shape, float32 (rotation is done in float32 like MSST's).
    """
    shape = qk.shape
    pairs = qk.float().reshape(*shape[:-1], shape[-1] // 2, 2)
    rotated = torch.view_as_complex(pairs) * rotation[:, None, None, :]
    return torch.view_as_real(rotated).reshape(shape)


class Attention(nn.Module):
    """Multi-head self-attention with RoPE or PoPE positions and per-head sigmoid output gates.

    value_residual_mix: MSST's experimental RoFormers (2025-03, "value residual learning") give
    attention layers after the first a Linear(dim, heads) that mixes each head's values with the
    values of the model's first attention layer: v <- lerp(v, v_first, sigmoid(mix(norm(x)))).
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        dim_head: int,
        dropout: float = 0.0,
        rotary_embed: RotaryEmbedding | None = None,
        pope_embed: PolarEmbedding | None = None,
        value_residual_mix: bool = False,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.dropout = dropout
        inner = heads * dim_head
        self.rotary_embed = rotary_embed
        self.pope_embed = pope_embed
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_value_residual_mix = nn.Linear(dim, heads) if value_residual_mix else None
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False), nn.Dropout(dropout))

        self._cache = WeightCache()

    def _params(self) -> list[Tensor]:
        out = [self.to_qkv.weight, self.to_gates.weight, self.to_gates.bias, self.norm.gamma]
        if self.to_value_residual_mix is not None:
            out += [self.to_value_residual_mix.weight, self.to_value_residual_mix.bias]
        return out

    def _weights(self) -> tuple[Tensor, Tensor]:
        """[to_qkv; to_gates; mix] with the norm's gamma folded in, and [gate; mix] biases."""
        mix = self.to_value_residual_mix
        rows = [self.to_qkv.weight, self.to_gates.weight] + ([mix.weight] if mix else [])
        bias = torch.cat([self.to_gates.bias, mix.bias]) if mix else self.to_gates.bias
        return torch.cat(rows) * self.norm.gamma, bias

    def _heads(
        self, x: Tensor, rotation: Any, value_residual: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Gated head outputs (batch·seq, heads·d) before `to_out`, and the values (b, n, h, d)
        as projected (before any value-residual mix)."""
        b, n, _ = x.shape
        h, d = self.heads, self.dim_head
        w, bias = self._cache.get(self._params(), self._weights)
        proj = F.linear(unit_rms(x), w)  # one matmul for q, k, v, the gates (and the mix)
        qkv = proj[..., : 3 * h * d].unflatten(-1, (3, h, d))
        v = values = qkv[:, :, 2]
        if self.to_value_residual_mix is not None:
            mix = torch.sigmoid(proj[..., 3 * h * d + h :] + bias[h:])  # (b, n, h)
            v = torch.lerp(v, value_residual, mix.unsqueeze(-1))
        if self.pope_embed is not None:
            # PoPE-pytorch's path applies no attention dropout (MSST passes none).
            out = polar_attention(qkv[:, :, :2], v, rotation, d**-0.5)
        else:
            if rotation is not None:
                qk = apply_rotary(qkv[:, :, :2], rotation).to(qkv.dtype)
                q, k = qk.unbind(2)
            else:
                q, k = qkv[:, :, 0], qkv[:, :, 1]
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                dropout_p=self.dropout if self.training else 0.0,
            )
        gates = torch.sigmoid(proj[..., 3 * h * d : 3 * h * d + h] + bias[:h])  # (b, n, h)
        # Gates in the attention output's dtype: under bf16 autocast a float32 product would
        # write (and the next matmul re-cast) the whole output at twice the bytes.
        out = out.transpose(1, 2) * gates.to(out.dtype).unsqueeze(-1)  # (b, n, h, d)
        return out.reshape(b * n, h * d), values

    def forward(self, x: Tensor, rotation: Any = None) -> Tensor:
        """x + attention(x): (batch, seq, dim) -> (batch, seq, dim). The residual is included.

        rotation: from the positional embedding's `rotation(seq)` (complex RoPE rotations or
        `PolarAngles`), or None for no positions.
        """
        if self.training and self.dropout > 0:  # the output dropout must not touch the residual
            return x + self.plain(x, rotation)[0]
        b, n, dim = x.shape
        out, _ = self._heads(x, rotation, None)
        # Residual add fused into the output matmul (addmm's beta=1 accumulation).
        return torch.addmm(x.reshape(b * n, dim), out, self.to_out[0].weight.t()).view(b, n, dim)

    def plain(
        self, x: Tensor, rotation: Any = None, value_residual: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """attention(x) without the residual, and the projected values (batch, seq, heads, d)
        that later layers mix in (MSST's experimental `Attention.forward` returns the same)."""
        b, n, dim = x.shape
        out, values = self._heads(x, rotation, value_residual)
        out = F.dropout(F.linear(out, self.to_out[0].weight), self.dropout, self.training)
        return out.view(b, n, dim), values


class LinearAttention(nn.Module):
    """Cross-covariance ("linear") attention over the feature axis (El-Nouby et al. 2021, XCiT).

    Same layout as MSST's `LinearAttention`: l2-normalised queries and keys along the sequence,
    scaled by exp(temperature), softmax with scale 8 over dim_head × dim_head.
    """

    def __init__(self, dim: int, *, heads: int, dim_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.dropout = dropout
        inner = heads * dim_head
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Sequential(nn.Linear(dim, inner * 3, bias=False))
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.to_out = nn.Sequential(nn.Identity(), nn.Linear(inner, dim, bias=False))

    def forward(self, x: Tensor, rotation: Tensor | None = None) -> Tensor:
        """x + attention(x) (the residual is included, as in `Attention`)."""
        b, n, _ = x.shape
        h, d = self.heads, self.dim_head
        qkv = self.to_qkv(self.norm(x)).view(b, n, 3, h, d).permute(2, 0, 3, 4, 1)  # 3 b h d n
        q, k, v = qkv.unbind(0)
        q = F.normalize(q, dim=-1) * self.temperature.exp()
        k = F.normalize(k, dim=-1)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, scale=8.0
        )
        return x + self.to_out(out.permute(0, 3, 1, 2).reshape(b, n, h * d))


class FeedForward(nn.Module):
    """RMSNorm → Linear(dim, mult·dim) → GELU → Linear(mult·dim, dim), MSST's `net.{0,1,4}`."""

    def __init__(self, dim: int, *, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.Sequential(
            RMSNorm(dim),
            nn.Linear(dim, inner),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(inner, dim),
            nn.Dropout(dropout),
        )

        self.dropout = dropout
        self._cache = WeightCache()

    def _weights(self) -> Tensor:
        return self.net[1].weight * self.net[0].gamma

    def _hidden(self, x: Tensor) -> Tensor:
        w1 = self._cache.get([self.net[1].weight, self.net[0].gamma], self._weights)
        hidden = F.linear(unit_rms(x), w1, self.net[1].bias)
        if torch.is_grad_enabled():
            return F.dropout(F.gelu(hidden), self.dropout, self.training)
        return torch.ops.aten.gelu_(hidden)  # inference: in place, sparing an allocation

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        """x + scale·feed_forward(x): (batch, seq, dim) -> (batch, seq, dim).

        scale: ½ in the conformers' macaron blocks."""
        if self.training and self.dropout > 0:  # the output dropout must not touch the residual
            return torch.add(x, self.plain(x), alpha=scale)
        hidden = self._hidden(x)
        shape = x.shape
        out = torch.addmm(
            x.reshape(-1, shape[-1]),
            hidden.reshape(-1, hidden.shape[-1]),
            self.net[4].weight.t(),
            alpha=scale,
        )
        return out.add_(self.net[4].bias, alpha=scale).view(shape)

    def plain(self, x: Tensor) -> Tensor:
        """feed_forward(x) without the residual."""
        out = F.linear(self._hidden(x), self.net[4].weight, self.net[4].bias)
        return F.dropout(out, self.dropout, self.training)


class Transformer(nn.Module):
    """Pre-norm residual stack of (attention, feed-forward) pairs, with an optional output norm."""

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        norm_output: bool = True,
        rotary_embed: RotaryEmbedding | None = None,
        pope_embed: PolarEmbedding | None = None,
        linear_attn: bool = False,
    ) -> None:
        super().__init__()
        layers = []
        for _ in range(depth):
            if linear_attn:
                attn: nn.Module = LinearAttention(
                    dim, heads=heads, dim_head=dim_head, dropout=attn_dropout
                )
            else:
                attn = Attention(
                    dim,
                    heads=heads,
                    dim_head=dim_head,
                    dropout=attn_dropout,
                    rotary_embed=rotary_embed,
                    pope_embed=pope_embed,
                )
            layers.append(nn.ModuleList([attn, FeedForward(dim, dropout=ff_dropout)]))
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(dim) if norm_output else _Identity()

    def forward(self, x: Tensor, rotation: Any = None) -> Tensor:
        """x: (batch, seq, dim) -> (batch, seq, dim)."""
        for attn, ff in self.layers:  # both blocks add their own residual
            x = ff(attn(x, rotation))
        return self.norm(x)
