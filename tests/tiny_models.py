"""Tiny models that implement the engine's protocol, so outputs are checkable by hand.

Not a conftest: other test modules import these helpers explicitly.
"""

from __future__ import annotations

import numpy as np
import soundfile as sf
import torch
from torch import Tensor, nn

STEMS = ("vocals", "drums", "bass", "other")
GAINS = (0.5, 0.25, 0.125, 0.125)  # sum to 1: the stems add up to the mixture


class _Protocol(nn.Module):
    """The engine's protocol attributes, shared by the test models."""

    def __init__(self, sample_rate: int, chunk_size: int, audio_channels: int, stems) -> None:
        super().__init__()
        self.sample_rate, self.chunk_size = sample_rate, chunk_size
        self.audio_channels, self.stems = audio_channels, tuple(stems)


class GainModel(_Protocol):
    """Stem s = gains[s] * input: (B, C, T) -> (B, S, C, T). Gains of 1 make it an identity."""

    def __init__(
        self,
        *,
        sample_rate: int = 8000,
        chunk_size: int = 1000,
        audio_channels: int = 2,
        stems: tuple[str, ...] = STEMS,
        gains: tuple[float, ...] = GAINS,
    ) -> None:
        super().__init__(sample_rate, chunk_size, audio_channels, stems)
        self.register_buffer("gains", torch.tensor(gains, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(1) * self.gains


class ConvModel(_Protocol):
    """Random per-stem filters: output depends on context, so chunking errors show up."""

    def __init__(
        self,
        *,
        sample_rate: int = 8000,
        chunk_size: int = 1000,
        audio_channels: int = 2,
        stems: tuple[str, ...] = STEMS,
    ) -> None:
        super().__init__(sample_rate, chunk_size, audio_channels, stems)
        torch.manual_seed(0)
        c, s = audio_channels, len(stems)
        self.conv = nn.Conv1d(c, s * c, kernel_size=31, padding=15)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.tanh(self.conv(x))
        return y.view(x.shape[0], len(self.stems), self.audio_channels, x.shape[-1])


def identity_model(chunk_size: int, channels: int = 2) -> GainModel:
    return GainModel(
        chunk_size=chunk_size, audio_channels=channels, stems=("a", "b"), gains=(1.0, 1.0)
    )


def noise(channels: int, frames: int, seed: int = 0, scale: float = 0.3) -> np.ndarray:
    """(frames, channels) float32 test signal in [-1, 1]."""
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal((frames, channels))).clip(-1, 1).astype(np.float32)


def write_wav(path, data: np.ndarray, sample_rate: int, subtype: str = "FLOAT"):
    sf.write(str(path), data, sample_rate, subtype=subtype)
    return path
