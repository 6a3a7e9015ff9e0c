"""MSST's experimental RoFormers: value-residual learning and hyper-connections.

`bs_roformer_experimental` / `mel_band_roformer_experimental` are the 2025-03 revisions of
BS-/Mel-RoFormer (lucidrains' value residuals, arXiv 2410.17897, and hyper-connections, arXiv
2409.19606), moved aside in MSST when the main files were reverted
(`models/bs_roformer/{bs,mel_band}_roformer_experimental.py`, MSST ccc011a). Everything but the
per-axis transformers is the RoFormer of `roformer.py`: band split, masks, STFT, RoPE.

Axis legend: b batch, t frame, k band, d feature, h head, S residual stream, n sequence.

Reference behaviour that checkpoints trained with this code depend on (ccc011a):
- From layer 1 on, every time/frequency transformer is called with the values of the first
  layer's first attention, and in that code path a block computes x = attn(x); x = ff(x) with
  **no residual adds**. Only layer 0 adds residuals. This holds whatever
  `use_value_residual_learning` says (it only decides whether the values are mixed in), so with
  depth >= 2 these models differ from `bs_roformer` / `mel_band_roformer`.
- Hyper-connections (`num_residual_streams` S > 1, hyper-connections 0.1.11): see
  `HyperConnection`. Layer 0 adds the input *again* on top of its output (x = HC(x) + x).
- `linear_transformer_depth > 0` fails in MSST's forward; the config refuses it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from separator.nn.bs_roformer import BSRoformer
from separator.nn.config import BSRoformerExperimentalConfig, MelRoformerExperimentalConfig
from separator.nn.layers import (
    Attention,
    FeedForward,
    RMSNorm,
    RotaryEmbedding,
    WeightCache,
    _Identity,
)
from separator.nn.mel_roformer import MelBandRoformer
from separator.nn.roformer import RoformerBase, roformer_family, variant_match


class _OffsetRMSNorm(nn.Module):
    """hyper-connections' RMSNorm: F.normalize(x)·sqrt(dim)·(gamma + 1), gamma starting at 0."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(dim))


class HyperConnection(nn.Module):
    """`HyperConnections(S, dim=dim, branch=...)` of hyper-connections 0.1.11, as MSST uses it.

    Input rows hold S streams, the stream index fastest: (rows·S, n, d). Per row and position:
        normed = rmsnorm(x_s)·(gamma + 1)
        alpha_s = tanh(normed·dynamic_alpha_fn[:, 0])·dynamic_alpha_scale + static_alpha[s, 0]
        beta_s  = tanh(normed·dynamic_beta_fn)·dynamic_beta_scale + static_beta[s]
        y       = branch(Σ_s alpha_s·x_s)
        out_s   = x_s + beta_s·y
    In 0.1.11 the residuals are not mixed (alpha's columns 1..S are computed and discarded), so
    only column 0 is computed here; the parameters keep their full shapes for strict loading.
    Inside MSST's transformers the packed leading axis is (batch·S·bands) or (batch·S·frames),
    so a block's "streams" are S consecutive rows of it, not the copies made at the expansion.
    """

    def __init__(self, streams: int, dim: int, branch: nn.Module) -> None:
        super().__init__()
        self.streams = streams
        self.branch = branch
        self.norm = _OffsetRMSNorm(dim)
        alpha0 = torch.zeros(streams, 1)
        # The package reads the branch input from a random stream (no layer index given).
        alpha0[int(torch.randint(streams, (), device="cpu")), 0] = 1.0
        self.static_alpha = nn.Parameter(torch.cat([alpha0, torch.eye(streams)], dim=1))
        self.dynamic_alpha_fn = nn.Parameter(torch.zeros(dim, streams + 1))
        self.dynamic_alpha_scale = nn.Parameter(torch.tensor(1e-2))
        self.static_beta = nn.Parameter(torch.ones(streams))
        self.dynamic_beta_fn = nn.Parameter(torch.zeros(dim))
        self.dynamic_beta_scale = nn.Parameter(torch.tensor(1e-2))
        self._cache = WeightCache()

    def _weights(self) -> Tensor:
        """(dim, 2): the alpha column 0 and beta projections with (gamma + 1) folded in."""
        w = torch.stack([self.dynamic_alpha_fn[:, 0], self.dynamic_beta_fn], dim=1)
        return w * (self.norm.gamma + 1).unsqueeze(1)

    def plain(self, x: Tensor, *args: Any) -> Any:
        """The module's output (residual streams included): (rows·S, n, d), plus whatever else
        the branch returns (an attention's values)."""
        s = self.streams
        rows, n, d = x.shape
        r = x.view(rows // s, s, n, d)
        params = [self.dynamic_alpha_fn, self.dynamic_beta_fn, self.norm.gamma]
        w = self._cache.get(params, self._weights)
        # rmsnorm(r) @ w without materialising the normalised streams
        norm = torch.linalg.vector_norm(r, dim=-1, keepdim=True).clamp_min(1e-12)
        p = torch.tanh((r @ w) * (d**0.5 / norm))  # (rows/S, S, n, 2)
        alpha = p[..., 0] * self.dynamic_alpha_scale + self.static_alpha[:, :1]
        beta = p[..., 1] * self.dynamic_beta_scale + self.static_beta.unsqueeze(1)
        # Σ_s alpha_s·x_s as S fused multiply-adds (S is 2-4; einsum runs it as tiny matmuls,
        # ~100× slower on the CPU)
        mixed = r[:, 0] * alpha[:, 0, :, None]
        for i in range(1, s):
            mixed.addcmul_(r[:, i], alpha[:, i, :, None])
        result = self.branch.plain(mixed, *args)
        y, extra = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        out = torch.addcmul(r, beta.unsqueeze(-1), y.unsqueeze(1)).view(rows, n, d)
        return (out, *extra) if extra else out


class ValueResidualTransformer(nn.Module):
    """MSST experimental `Transformer`: (attention, feed-forward) blocks, optionally wrapped in
    hyper-connections, with value residuals. Keys: layers.{i}.{0,1}[.branch].*, norm.gamma."""

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
        value_residual_mix: bool = False,
        streams: int = 1,
    ) -> None:
        super().__init__()
        layers = []
        for _ in range(depth):
            attn: nn.Module = Attention(
                dim,
                heads=heads,
                dim_head=dim_head,
                dropout=attn_dropout,
                rotary_embed=rotary_embed,
                value_residual_mix=value_residual_mix,
            )
            ff: nn.Module = FeedForward(dim, dropout=ff_dropout)
            if streams > 1:
                attn, ff = HyperConnection(streams, dim, attn), HyperConnection(streams, dim, ff)
            layers.append(nn.ModuleList([attn, ff]))
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(dim) if norm_output else _Identity()

    def forward(
        self, x: Tensor, rotation: Any = None, value_residual: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """x: (batch, seq, dim) -> (output, values of the first attention (batch, seq, h, d))."""
        first = None
        for attn, ff in self.layers:
            y, values = attn.plain(x, rotation, value_residual)
            first = values if first is None else first
            if value_residual is None:  # MSST's path "for compatibility with old weights"
                x = y + x
                x = ff.plain(x) + x
            else:  # MSST ccc011a: with a value residual the blocks add no residuals
                x = ff.plain(y)
        return self.norm(x), first


class _ExperimentalTrunk(RoformerBase):
    """The trunk of MSST's experimental RoFormers (value residuals, residual streams)."""

    def _block(self, index: int, norm_output: bool) -> list[nn.Module]:
        c, kw = self.config, self._stack_kwargs(norm_output)
        depths = (c.time_transformer_depth, c.freq_transformer_depth)
        return [
            ValueResidualTransformer(
                depth=depth,
                rotary_embed=embed,
                value_residual_mix=c.use_value_residual_learning and index > 0,
                streams=c.num_residual_streams,
                **kw,
            )
            for depth, embed in zip(depths, self._rotary)
        ]

    def _trunk(self, x: Tensor) -> Tensor:
        """(b, t, k, d) -> (b, t, k, d), through S residual streams when S > 1."""
        c = self.config
        streams = c.num_residual_streams
        if streams > 1:  # hyper-connections' expand_stream: 'b ... -> (b s) ...'
            x = x.repeat_interleave(streams, dim=0)
        b, t, k, d = x.shape
        rot_t = self._rotary[0].rotation(t).to(x.device)
        rot_f = self._rotary[1].rotation(k).to(x.device)
        v_time = v_freq = None  # values of the first time / frequency attention
        store: list[Tensor] = []
        for time_t, freq_t in self.layers:
            if c.skip_connection:
                for prev in store:
                    x = x + prev
            x = x.transpose(1, 2).reshape(b * k, t, d).contiguous()
            x, values = self._run(time_t, x, rot_t, v_time)
            v_time = values if v_time is None else v_time
            x = x.view(b, k, t, d).transpose(1, 2).reshape(b * t, k, d).contiguous()
            x, values = self._run(freq_t, x, rot_f, v_freq)
            v_freq = values if v_freq is None else v_freq
            x = x.view(b, t, k, d)
            if c.skip_connection:
                store.append(x)
        if streams > 1:  # reduce_stream: sum over the streams
            x = x.view(b // streams, streams, t, k, d).sum(1)
        return x


class BSRoformerExperimental(_ExperimentalTrunk, BSRoformer):
    """MSST's experimental BS-RoFormer. Keyword arguments: an MSST `model:` section."""

    config_class = BSRoformerExperimentalConfig


class MelBandRoformerExperimental(_ExperimentalTrunk, MelBandRoformer):
    """MSST's experimental Mel-Band RoFormer. Keyword arguments: an MSST `model:` section."""

    config_class = MelRoformerExperimentalConfig


_KEYS = {"use_value_residual_learning", "num_residual_streams"}


BS_FAMILY = roformer_family(
    "bs_roformer_experimental", BSRoformerExperimental, variant_match(_KEYS, mel=False)
)
MEL_FAMILY = roformer_family(
    "mel_band_roformer_experimental", MelBandRoformerExperimental, variant_match(_KEYS, mel=True)
)
