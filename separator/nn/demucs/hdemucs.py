"""Hybrid Demucs (v3, demucs 4.1.0 `demucs/hdemucs.py` `HDemucs`): a spectrogram U-Net and a
waveform U-Net that merge once the frequency axis is down to one bin (the MDX and
`hdemucs_mmi` models). With `hybrid=False` it is a spectrogram-only model.

Axis legend: b batch, c audio channels, s sources, n samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from separator.nn.demucs.blocks import check, rescale_convs
from separator.nn.demucs.hybrid import HybridBase, UNetArgs, layer_plan


class HDemucs(HybridBase):
    """(b, c, n) -> (b, s, c, n) at any length n. Keyword arguments are demucs's.

    `hybrid_old` reproduces the zero padding (instead of reflection) and the iSTFT crop of the
    MDX-era models that were trained with that bug.
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
        depth: int = 6,
        rewrite: bool = True,
        hybrid: bool = True,
        hybrid_old: bool = False,
        multi_freqs: Sequence[float] | None = None,
        multi_freqs_depth: int = 2,
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
        dconv_comp: float = 4,
        dconv_attn: int = 4,
        dconv_lstm: int = 4,
        dconv_init: float = 1e-4,
        rescale: float = 0.1,
        samplerate: int = 44100,
        segment: Any = 4 * 10,
    ) -> None:
        super().__init__()
        check(hybrid or not hybrid_old, "HDemucs: hybrid_old=True needs hybrid=True")
        check(
            not hybrid or wiener_iters == end_iters,
            "HDemucs: a hybrid model needs wiener_iters == end_iters",
        )
        check(
            cac or max(wiener_iters, end_iters) <= 0 or audio_channels <= 2,
            "HDemucs: Wiener filtering supports 1 or 2 audio channels",
        )
        plan = layer_plan(depth, nfft, kernel_size, stride, time_stride)
        check(
            not hybrid or any(step[4] for step in plan),
            f"HDemucs: depth={depth} never brings the {nfft // 2} bins down to one, so the "
            "time and frequency branches cannot merge; increase depth or set hybrid=False",
        )
        self.hybrid, self.hybrid_old = hybrid, hybrid_old
        self.wiener_iters, self.end_iters = wiener_iters, end_iters
        self.wiener_residual = wiener_residual
        self.samplerate, self.segment = samplerate, segment
        self._build(UNetArgs.pick(locals()))
        if rescale:
            rescale_convs(self, rescale)

    def forward(self, mix: Tensor) -> Tensor:
        """(b, c, n) -> (b, s, c, n)."""
        return self._forward(mix)

    def _bottom(self, x: Tensor, xt: Tensor | None) -> tuple[Tensor, Tensor | None]:
        # HDemucs starts decoding from zeros: the signal reaches the decoder through the skips.
        return torch.zeros_like(x), xt
