"""The training objective of BS-RoFormer / Mel-Band RoFormer (training code, not the models).

As in the papers and MSST's `forward(..., target)`: L1 on the waveform plus, weighted by
`multi_stft_resolution_loss_weight`, the sum over window sizes (4096 … 256, hop 147) of the L1
distance of complex STFTs (mean modulus of the difference). MSST uses
`n_fft = max(window, stft_n_fft)` and a Hann window of the window size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from separator.nn.config import RoformerConfig


def separation_loss(estimate: Tensor, target: Tensor, config: RoformerConfig) -> Tensor:
    """estimate, target: (batch, stems, channels, time). Returns a scalar, computed in float32."""
    estimate, target = estimate.float(), target.float()
    loss = F.l1_loss(estimate, target)
    if config.multi_stft_resolution_loss_weight == 0:
        return loss
    # The STFT is linear, so |STFT(est) - STFT(ref)| = |STFT(est - ref)|: one transform, not two.
    diff = (estimate - target).reshape(-1, estimate.shape[-1])
    multi = estimate.new_zeros(())
    for window in config.multi_stft_resolutions_window_sizes:
        kw = dict(
            n_fft=max(window, config.stft_n_fft),
            win_length=window,
            hop_length=config.multi_stft_hop_size,
            normalized=config.multi_stft_normalized,
            window=torch.hann_window(window, device=estimate.device),
            return_complex=True,
        )
        multi = multi + torch.stft(diff, **kw).abs().mean()
    return loss + config.multi_stft_resolution_loss_weight * multi
