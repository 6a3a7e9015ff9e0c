"""The one STFT helper every spectrogram family uses: any leading axes, float32 even under autocast.

Families differ in window (Hann, none, a stored buffer), normalisation and padding; they pass those
as arguments. What they share is here: flattening the leading axes for `torch.stft`, restoring
them, and keeping the transform out of reduced precision (masks and iSTFT stay float32 too).

`normalized` takes torch's and torchaudio's conventions, which differ:
    False            no scaling;
    True             torch's: the spectrum times frame_length^-0.5 (torchaudio "frame_length");
    "window"         torchaudio's `normalized=True`: the spectrum divided by the window's L2 norm
                     sqrt(sum(w^2)), and the iSTFT input multiplied by it again (BandIt).
"""

from __future__ import annotations

import torch
from torch import Tensor

from separator.errors import ConfigError


def stft(
    audio: Tensor,
    *,
    n_fft: int,
    hop_length: int,
    win_length: int | None = None,
    window: Tensor | None = None,
    normalized: bool | str = False,
    center: bool = True,
    pad_mode: str = "reflect",
) -> Tensor:
    """(..., time) real -> (..., n_fft // 2 + 1, frames) complex64."""
    by_torch, by_window = _norms(normalized)
    lead, length = audio.shape[:-1], audio.shape[-1]
    with torch.autocast(audio.device.type, enabled=False):
        spec = torch.stft(
            audio.reshape(-1, length).float(),
            n_fft=n_fft,
            hop_length=hop_length,
            win_length=win_length,
            window=None if window is None else window.float(),
            normalized=by_torch,
            center=center,
            pad_mode=pad_mode,
            return_complex=True,
        )
        if by_window:
            spec = spec / _l2(window, win_length or n_fft)
    return spec.view(*lead, *spec.shape[-2:])


def istft(
    spec: Tensor,
    *,
    n_fft: int,
    hop_length: int,
    win_length: int | None = None,
    window: Tensor | None = None,
    normalized: bool | str = False,
    center: bool = True,
    length: int | None = None,
) -> Tensor:
    """(..., bins, frames) complex -> (..., time) float32; `length` trims or pads the output."""
    lead = spec.shape[:-2]
    by_torch, by_window = _norms(normalized)
    with torch.autocast(spec.device.type, enabled=False):
        if by_window:
            spec = spec * _l2(window, win_length or n_fft)
        wav = torch.istft(
            spec.reshape(-1, *spec.shape[-2:]),
            n_fft=n_fft,
            hop_length=hop_length,
            win_length=win_length,
            window=None if window is None else window.float(),
            normalized=by_torch,
            center=center,
            length=length,
        )
    return wav.view(*lead, wav.shape[-1])


def _norms(normalized: bool | str) -> tuple[bool, bool]:
    """(torch's frame-length normalisation, torchaudio's window normalisation) for `normalized`."""
    if isinstance(normalized, str):
        if normalized != "window":
            raise ConfigError(
                f"STFT normalized must be False, True or 'window', got {normalized!r}"
            )
        return False, True
    return bool(normalized), False


def _l2(window: Tensor | None, win_length: int) -> Tensor | float:
    """The window's L2 norm, as torchaudio computes it (from the stored window, in float32)."""
    if window is None:  # torch.stft's default: a rectangular window of win_length ones
        return float(win_length) ** 0.5
    return window.float().pow(2.0).sum().sqrt()
