"""Training data: random-mix sampling with augmentation, from MUSDB18HQ-layout tracks
(`separator.datasets`).

Every training example is a pure function of (seed, index): stems drawn from random tracks at
random offsets, random gain, channel swap, polarity inversion, stem dropout and (when asked) a
random EQ or saturation per stem, all from a generator seeded with (seed, index). Any number of
workers, and a resumed run, therefore see exactly the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.signal
import torch

from separator.datasets import Track
from separator.errors import SeparatorError


@dataclass(frozen=True)
class Augment:
    """Augmentations of random-mix training (MSST/demucs style), each per stem."""

    gain_db: tuple[float, float] = (-3.0, 3.0)  # uniform random gain in dB
    channel_swap: float = 0.5  # probability of swapping left and right
    polarity: float = 0.5  # probability of inverting the polarity
    drop_stem: float = 0.0  # probability of silencing a stem (it stays a target of zeros)
    # Timbre (MSST's per-stem seven-band EQ and tanh distortion, in brief): applied to the stem
    # before mixing, so the target changes with the mixture. Off (0) draws no random numbers, so
    # recipes without them see the same batches as before they existed.
    eq: float = 0.0  # probability of a random EQ: two peaking filters of gain within ±eq_db
    eq_db: float = 6.0
    distortion: float = 0.0  # probability of tanh saturation, 0-18 dB of drive, same RMS


@dataclass
class RandomMixDataset(torch.utils.data.Dataset):
    """Random mixes of `chunk_size` samples: each stem from a random track at a random offset.

    Item i is (mixture (channels, chunk), targets (n_targets, channels, chunk)); it depends only on
    (seed, i). `min_mean_abs` skips near-silent excerpts as MSST does (redraws up to 20 times).
    """

    tracks: list[Track]
    stems: tuple[str, ...]  # stems summed into the mixture
    targets: tuple[str, ...]  # stems returned as targets (all of `stems`, or one of them)
    chunk_size: int
    length: int
    seed: int = 0
    augment: Augment = field(default_factory=Augment)
    min_mean_abs: float = 0.0
    channels: int = 2

    def __post_init__(self) -> None:
        if not self.tracks:
            raise SeparatorError("no training tracks")
        unknown = [t for t in self.targets if t not in self.stems]
        if unknown:
            raise SeparatorError(f"target stem(s) {unknown} are not among the stems {self.stems}")
        self._target_index = [self.stems.index(t) for t in self.targets]
        rates = {t.sample_rate for t in self.tracks}
        if len(rates) > 1:
            raise SeparatorError(f"training tracks have several sample rates: {sorted(rates)}")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        out = np.stack([self._excerpt(stem, rng) for stem in self.stems])
        out = self._augment(out, rng)
        stems = torch.from_numpy(out)
        return stems.sum(0), stems[self._target_index]

    def _excerpt(self, stem: str, rng: np.random.Generator) -> np.ndarray:
        for _ in range(20):
            track = self.tracks[rng.integers(len(self.tracks))]
            start = int(rng.integers(max(1, track.frames - self.chunk_size + 1)))
            x = track.read(stem, start, self.chunk_size)
            if x.shape[1] < self.chunk_size:  # track shorter than a chunk: zero-pad
                x = np.pad(x, ((0, 0), (0, self.chunk_size - x.shape[1])))
            x = _to_channels(x, self.channels)
            if self.min_mean_abs <= 0 or np.abs(x).mean() >= self.min_mean_abs:
                break
        return x

    def _augment(self, stems: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        a = self.augment
        n = stems.shape[0]
        gains = 10 ** (rng.uniform(a.gain_db[0], a.gain_db[1], n) / 20)
        swap = rng.random(n) < a.channel_swap
        flip = rng.random(n) < a.polarity
        drop = rng.random(n) < a.drop_stem
        if a.eq > 0 or a.distortion > 0:
            self._timbre(stems, rng)
        for i in range(n):
            if swap[i] and stems.shape[1] == 2:
                stems[i] = stems[i, ::-1]
            sign = -1.0 if flip[i] else 1.0
            stems[i] *= 0.0 if drop[i] else sign * gains[i]
        return np.ascontiguousarray(stems, dtype=np.float32)

    def _timbre(self, stems: np.ndarray, rng: np.random.Generator) -> None:
        a, rate = self.augment, self.tracks[0].sample_rate
        for i in range(stems.shape[0]):
            if rng.random() < a.eq:
                freqs = np.exp(rng.uniform(np.log(60.0), np.log(min(12000.0, 0.45 * rate)), 2))
                sos = np.concatenate(
                    [peaking_sos(f, rng.uniform(-a.eq_db, a.eq_db), rng.uniform(0.5, 2.0), rate)
                     for f in freqs]
                )  # fmt: skip
                stems[i] = scipy.signal.sosfilt(sos, stems[i], axis=-1)
            if rng.random() < a.distortion:
                stems[i] = saturate(stems[i], rng.uniform(0.0, 18.0))


def peaking_sos(freq: float, gain_db: float, q: float, rate: int) -> np.ndarray:
    """One peaking-EQ biquad as a (1, 6) SOS row: `gain_db` at `freq`, unity far from it
    (coefficients from R. Bristow-Johnson's "Audio EQ Cookbook")."""
    amp = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * freq / rate
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * amp, -2 * np.cos(w0), 1 - alpha * amp])
    a = np.array([1 + alpha / amp, -2 * np.cos(w0), 1 - alpha / amp])
    return np.concatenate([b / a[0], a / a[0]])[None]


def saturate(x: np.ndarray, drive_db: float) -> np.ndarray:
    """tanh saturation: the 99th percentile of |x| is driven to `drive_db` above 1, and the
    result is scaled back to the RMS of `x` (a silent input comes back unchanged)."""
    level = np.percentile(np.abs(x), 99)
    rms = np.sqrt(np.mean(x**2))
    if level < 1e-6 or rms < 1e-9:
        return x
    y = np.tanh(x * (10 ** (drive_db / 20) / level))
    return y * (rms / max(np.sqrt(np.mean(y**2)), 1e-12))


def _to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    if x.shape[0] == channels:
        return x
    if x.shape[0] == 1:
        return np.repeat(x, channels, axis=0)
    if channels == 1:
        return x.mean(0, keepdims=True)
    raise SeparatorError(f"cannot use {x.shape[0]}-channel audio for a {channels}-channel model")
