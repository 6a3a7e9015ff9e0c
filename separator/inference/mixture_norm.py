"""Mixture normalisation, as `demucs.api.Separator` does it, with streaming statistics.

demucs (4.1.0, demucs/api.py `separate_tensor`), on the track at the model's rate and channels:
ref = wav.mean(0) (the mono mix), mean = ref.mean(), std = ref.std() + 1e-8 (unbiased), the model
pipeline runs on (wav − mean) / std and its output comes back as out · std + mean.

demucs holds the whole track to take these; here they come from a first pass over the input
blocks (`mixture_stats`: the file is read twice, the first time only to sum), combined block by
block in float64 (Chan et al.'s parallel mean/variance), so memory does not grow with the track.
`NormalizedEngine` then wraps any engine with the same push/flush.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from separator.inference.audio import Resampler

STD_EPS = 1e-8  # demucs adds it to the std


@dataclass(frozen=True)
class MixtureStats:
    """mean and std (+1e-8) of the mono mixture, as float32 scalars like demucs's tensors."""

    mean: Tensor
    std: Tensor
    frames: int


class RunningMoments:
    """Count, mean and sum of squared deviations of a stream of 1-D float arrays (float64)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: np.ndarray) -> None:
        if len(x) == 0:
            return
        x = x.astype(np.float64)
        n, mean = len(x), float(x.mean())
        m2 = float(((x - mean) ** 2).sum())
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

    @property
    def std(self) -> float:
        """Unbiased standard deviation (0 for fewer than two values)."""
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0


def mixture_stats(blocks: Iterable[np.ndarray], in_rate: int, model_rate: int) -> MixtureStats:
    """The statistics of the mono mix of (n, channels) float32 input blocks at the model's rate
    (resampled as the separation pass resamples; the mean over channels commutes with it)."""
    resample = Resampler(in_rate, model_rate, 1)
    moments = RunningMoments()
    for block in blocks:
        mono = block.mean(axis=1, dtype=np.float32, keepdims=True)
        moments.add(resample(mono)[:, 0])
    moments.add(resample(np.zeros((0, 1), np.float32), last=True)[:, 0])
    mean = torch.tensor(moments.mean, dtype=torch.float32)
    std = torch.tensor(moments.std, dtype=torch.float32) + STD_EPS
    return MixtureStats(mean, std, moments.n)


class NormalizedEngine:
    """Any engine (push/flush of (channels, n) -> (stems, channels, m)) run on the normalised
    mixture, its output brought back: (x − mean) / std in, out · std + mean out."""

    def __init__(self, engine, stats: MixtureStats) -> None:
        self.engine, self.stats = engine, stats

    def push(self, block: Tensor) -> Tensor:
        return self._back(self.engine.push((block - self.stats.mean) / self.stats.std))

    def flush(self) -> Tensor:
        return self._back(self.engine.flush())

    def _back(self, out: Tensor) -> Tensor:
        return out * self.stats.std + self.stats.mean
