"""Hybrid Transformer Demucs (v4, demucs 4.1.0 `demucs/htdemucs.py` `HTDemucs`; the `htdemucs`,
`htdemucs_ft` and `htdemucs_6s` models): the hybrid U-Net with a cross-domain transformer
between the innermost encoder and decoder layers.

Axis legend: b batch, c audio channels, s sources, f bins, t frames, n samples.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from separator.nn.demucs.blocks import check, rescale_convs
from separator.nn.demucs.hybrid import HybridBase, UNetArgs, layer_plan
from separator.nn.demucs.transformer import CrossTransformerEncoder


class HTDemucs(HybridBase):
    """(b, c, n) -> (b, s, c, n). Keyword arguments are demucs's.

    With `use_train_segment` (demucs's default) the model in eval mode runs at its training
    length `int(segment * samplerate)`: a shorter input is right-padded with zeros and the output
    cut back; a longer one is an error. MSST's copy of the class defaults to False (run at the
    input's length). The sparse-attention options need xformers and are refused.
    """

    # long function: the signature lists demucs's constructor arguments, one per line
    def __init__(
        self,
        sources: Sequence[str],
        audio_channels: int = 2,
        channels: int = 48,
        channels_time: int | None = None,
        growth: float = 2,
        nfft: int = 4096,
        wiener_iters: int = 0,
        end_iters: int = 0,
        wiener_residual: bool = False,
        cac: bool = True,
        depth: int = 4,
        rewrite: bool = True,
        multi_freqs: Sequence[float] | None = None,
        multi_freqs_depth: int = 3,
        freq_emb: float = 0.2,
        emb_scale: float = 10,
        emb_smooth: bool = True,
        kernel_size: int = 8,
        time_stride: int = 2,
        stride: int = 4,
        context: int = 1,
        context_enc: int = 0,
        norm_starts: int = 4,
        norm_groups: int = 4,
        dconv_mode: int = 1,
        dconv_depth: int = 2,
        dconv_comp: float = 8,
        dconv_init: float = 1e-3,
        bottom_channels: int = 0,
        t_layers: int = 5,
        t_emb: str = "sin",
        t_hidden_scale: float = 4.0,
        t_heads: int = 8,
        t_dropout: float = 0.0,
        t_max_positions: int = 10000,
        t_norm_in: bool = True,
        t_norm_in_group: bool = False,
        t_group_norm: bool = False,
        t_norm_first: bool = True,
        t_norm_out: bool = True,
        t_max_period: float = 10000.0,
        t_weight_decay: float = 0.0,
        t_lr: float | None = None,
        t_layer_scale: bool = True,
        t_gelu: bool = True,
        t_weight_pos_embed: float = 1.0,
        t_sin_random_shift: int = 0,
        t_cape_mean_normalize: bool = True,
        t_cape_augment: bool = True,
        t_cape_glob_loc_scale: Sequence[float] = (5000.0, 1.0, 1.4),
        t_sparse_self_attn: bool = False,
        t_sparse_cross_attn: bool = False,
        t_mask_type: str = "diag",
        t_mask_random_seed: int = 42,
        t_sparse_attn_window: int = 500,
        t_global_window: int = 100,
        t_sparsity: float = 0.95,
        t_auto_sparsity: bool = False,
        t_cross_first: bool = False,
        rescale: float = 0.1,
        samplerate: int = 44100,
        segment: Any = 10,
        use_train_segment: bool = True,
    ) -> None:
        super().__init__()
        check(wiener_iters == end_iters, "HTDemucs needs wiener_iters == end_iters")
        check(
            cac or max(wiener_iters, end_iters) <= 0 or audio_channels <= 2,
            "HTDemucs: Wiener filtering supports 1 or 2 audio channels",
        )
        check(
            not (t_sparse_self_attn or t_sparse_cross_attn),
            "HTDemucs: t_sparse_self_attn / t_sparse_cross_attn need xformers' sparse "
            "kernels, which separator does not support",
        )
        plan = layer_plan(depth, nfft, kernel_size, stride, time_stride)
        check(
            t_layers <= 0 or all(freq and not last for freq, _, _, _, last, _ in plan),
            f"HTDemucs: depth={depth} brings the {nfft // 2} bins down to one, but the "
            "transformer needs frequencies at the bottom; lower depth or raise nfft",
        )
        self.wiener_iters, self.end_iters = wiener_iters, end_iters
        self.wiener_residual = wiener_residual
        self.bottom_channels, self.use_train_segment = bottom_channels, use_train_segment
        self.samplerate, self.segment = samplerate, segment
        self.t_weight_decay, self.t_lr = t_weight_decay, t_lr  # optimiser settings, kept as data
        self._build(UNetArgs.pick(locals()))
        if rescale:  # before the bottom convs and the transformer exist, as in demucs
            rescale_convs(self, rescale)
        width = int(channels * growth ** (depth - 1))
        if bottom_channels:
            self.channel_upsampler = nn.Conv1d(width, bottom_channels, 1)
            self.channel_downsampler = nn.Conv1d(bottom_channels, width, 1)
            self.channel_upsampler_t = nn.Conv1d(width, bottom_channels, 1)
            self.channel_downsampler_t = nn.Conv1d(bottom_channels, width, 1)
            width = bottom_channels
        self.crosstransformer = None
        if t_layers > 0:
            # the t_* arguments are the transformer's, without the prefix
            names = inspect.signature(CrossTransformerEncoder).parameters
            transformer = {
                k[2:]: v for k, v in locals().items() if k[2:] in names and k[:2] == "t_"
            }
            self.crosstransformer = CrossTransformerEncoder(width, **transformer)

    @property
    def training_length(self) -> int:
        """int(segment · samplerate) with Python semantics (a float segment truncates)."""
        return int(self.segment * self.samplerate)

    def valid_length(self, length: int) -> int:
        """The length a chunk of `length` samples is run at: the training length (an error if
        the chunk is longer), or `length` itself without `use_train_segment`."""
        if not self.use_train_segment:
            return length
        if self.training_length < length:
            raise ValueError(
                f"Given length {length} is longer than training length {self.training_length}"
            )
        return self.training_length

    def forward(self, mix: Tensor) -> Tensor:
        """(b, c, n) -> (b, s, c, n)."""
        length = mix.shape[-1]
        if not self.use_train_segment:
            return self._forward(mix)
        if self.training:
            # demucs records the training length it saw; its export stores this Fraction.
            self.segment = Fraction(length, self.samplerate)
            return self._forward(mix)
        target = self.valid_length(length)
        return self._forward(F.pad(mix, (0, target - length)))[..., :length]

    def _bottom(self, x: Tensor, xt: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The cross-transformer (with the optional width change around it)."""
        if self.crosstransformer is None:
            return x, xt
        f = x.shape[2]
        if self.bottom_channels:
            x = rearrange(
                self.channel_upsampler(rearrange(x, "b c f t -> b c (f t)")),
                "b c (f t) -> b c f t",
                f=f,
            )
            xt = self.channel_upsampler_t(xt)
        x, xt = self.crosstransformer(x, xt)
        if self.bottom_channels:
            x = rearrange(
                self.channel_downsampler(rearrange(x, "b c f t -> b c (f t)")),
                "b c (f t) -> b c f t",
                f=f,
            )
            xt = self.channel_downsampler_t(xt)
        return x, xt
