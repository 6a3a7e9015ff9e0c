"""The one STFT helper every spectrogram family uses: any leading axes, float32 even under autocast.

Families differ in window (Hann, none, a stored buffer), normalisation and padding; they pass those
as arguments. What they share is here: flattening the leading axes for `torch.stft`, restoring
them, and keeping the transform out of reduced precision (masks and iSTFT stay float32 too).
"""

from __future__ import annotations

import torch
from torch import Tensor


def stft(
    audio: Tensor,
    *,
    n_fft: int,
    hop_length: int,
    win_length: int | None = None,
    window: Tensor | None = None,
    normalized: bool = False,
    center: bool = True,
    pad_mode: str = "reflect",
) -> Tensor:
    """(..., time) real -> (..., n_fft // 2 + 1, frames) complex64."""
    lead, length = audio.shape[:-1], audio.shape[-1]
    with torch.autocast(audio.device.type, enabled=False):
        spec = torch.stft(
            audio.reshape(-1, length).float(),
            n_fft=n_fft,
            hop_length=hop_length,
            win_length=win_length,
            window=None if window is None else window.float(),
            normalized=normalized,
            center=center,
            pad_mode=pad_mode,
            return_complex=True,
        )
    return spec.view(*lead, *spec.shape[-2:])


def istft(
    spec: Tensor,
    *,
    n_fft: int,
    hop_length: int,
    win_length: int | None = None,
    window: Tensor | None = None,
    normalized: bool = False,
    center: bool = True,
    length: int | None = None,
) -> Tensor:
    """(..., bins, frames) complex -> (..., time) float32; `length` trims or pads the output."""
    lead = spec.shape[:-2]
    with torch.autocast(spec.device.type, enabled=False):
        wav = torch.istft(
            spec.reshape(-1, *spec.shape[-2:]),
            n_fft=n_fft,
            hop_length=hop_length,
            win_length=win_length,
            window=None if window is None else window.float(),
            normalized=normalized,
            center=center,
            length=length,
        )
    return wav.view(*lead, wav.shape[-1])
