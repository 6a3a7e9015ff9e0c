"""How an ensemble combines K estimates of one stem, streaming in blocks.

Element-wise, sample by sample (`combine_waves`):
- `avg`: weighted mean (MSST's `avg_wave`); `median`: median (MSST's `median_wave`);
- `min_wave` / `max_wave`: the member value with the smallest / largest magnitude (MSST's
  `lambda_min` / `lambda_max` over `np.abs`; the first member wins a tie). Weights are ignored.

Per STFT bin (`SpecCombiner`), then the inverse STFT:
- `max_spec` / `min_spec` (ours): the member value with the largest / smallest magnitude, on a
  periodic-Hann 2048-point STFT at hop 512 whose frames cover every sample four times;
- `avg_fft`, `median_fft`, `min_fft`, `max_fft` (MSST's `ensemble.py`, ccc011a): a 2048-point STFT
  at hop 1024 framed as `librosa.stft(center=True)` (zeros padded, periodic Hann), then the
  weighted mean of the complex values, their median (numpy's: complex values ordered by real,
  then imaginary part; the mean of the two middle ones for an even count), or the smallest /
  largest magnitude; `librosa.istft` (overlap-add divided by the summed squared window of the
  frames present) back to the exact length. Only `avg_fft` uses the weights.

Both spectral framings stream: samples are released once every frame that covers them is done,
so memory is a few frames whatever the length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

WAVE_METHODS = ("avg", "median", "min_wave", "max_wave")
SPEC_METHODS = ("max_spec", "min_spec")
FFT_METHODS = ("avg_fft", "median_fft", "min_fft", "max_fft")
SPEC_N_FFT, SPEC_HOP = 2048, 512  # ours: four frames per sample
FFT_N_FFT, FFT_HOP = 2048, 1024  # MSST's ensemble.py: stft(nfft=2048, hl=1024)


def combine_waves(method: str, x: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """(K, n, C) member samples -> (n, C) float32 by an element-wise method."""
    if method == "median":
        return np.median(x, axis=0).astype(np.float32)
    if method in ("min_wave", "max_wave"):
        mag = np.abs(x)
        pick = mag.argmin(axis=0) if method == "min_wave" else mag.argmax(axis=0)
        return np.take_along_axis(x, pick[None], axis=0)[0].astype(np.float32)
    w = np.asarray(weights, np.float64)
    return np.tensordot(w / w.sum(), x, axes=1).astype(np.float32)


def _pick_bins(method: str, spec: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(K, frames, bins, C) complex member spectra -> (frames, bins, C), one value per bin."""
    if method == "avg_fft":
        return torch.tensordot(weights / weights.sum(), spec, dims=1)
    if method == "median_fft":
        # numpy orders complex values lexicographically (real, then imaginary): MSST's median
        return torch.from_numpy(np.median(spec.numpy(), axis=0))
    mag = spec.abs()
    pick = mag.argmax(0) if method in ("max_spec", "max_fft") else mag.argmin(0)
    return torch.gather(spec, 0, pick[None]).squeeze(0)


class SpecCombiner:
    """Streaming STFT -> per-bin combination of K members -> inverse STFT, for one stem.

    Input blocks (K members, n, C), output (n', C) finished samples; the total output has exactly
    the total input length. `lead` zeros precede the signal (n_fft - hop: every sample sees
    n_fft / hop frames; for MSST's framing that is librosa's centre padding of n_fft / 2).
    """

    def __init__(self, method: str, channels: int, weights: Sequence[float] | None = None) -> None:
        self.method = method
        self.msst = method in FFT_METHODS
        self.n_fft, self.hop = (FFT_N_FFT, FFT_HOP) if self.msst else (SPEC_N_FFT, SPEC_HOP)
        self.window = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float64)
        self.weights = torch.tensor(
            [] if weights is None else list(weights), dtype=torch.complex128
        )
        self.lead = self.n_fft - self.hop
        self.buf: np.ndarray | None = None  # (K, m, C) samples not yet consumed by a frame
        self.acc = np.zeros((self.n_fft, channels))  # overlap-add of the frames' output
        self.wacc = np.zeros(self.n_fft)  # overlap-add of the frames' squared window
        self.to_skip = self.lead
        self.n_in = self.n_out = 0
        self.channels = channels

    def push(self, x: np.ndarray, *, last: bool) -> np.ndarray:
        k = x.shape[0]
        if self.weights.numel() == 0:
            self.weights = torch.ones(k, dtype=torch.complex128)
        if self.buf is None:
            self.buf = np.zeros((k, self.lead, self.channels))
        self.n_in += x.shape[1]
        self.buf = np.concatenate([self.buf, x.astype(np.float64)], axis=1)
        if last:
            self.buf = np.concatenate([self.buf, np.zeros((k, self._tail(), self.channels))], 1)
        y = self._frames()
        if last:  # no frame comes after: what the accumulator holds is final
            y = np.concatenate([y, self._normalized(self.acc, self.wacc)])
        skip = min(self.to_skip, len(y))
        self.to_skip -= skip
        y = y[skip:]
        y = y[: max(0, self.n_in - self.n_out)] if last else y
        self.n_out += len(y)
        return y.astype(np.float32)

    def _tail(self) -> int:
        """Zeros after the signal: librosa's centre padding (MSST framing), or enough for every
        sample to be covered by all its frames (ours)."""
        if self.msst:
            return self.n_fft // 2
        return self.lead + (-(self.buf.shape[1] - self.n_fft) % self.hop)

    def _frames(self) -> np.ndarray:
        """Run every frame the buffer holds; return the samples no later frame can change."""
        n, hop = self.n_fft, self.hop
        frames = 1 + (self.buf.shape[1] - n) // hop if self.buf.shape[1] >= n else 0
        if frames <= 0:
            return np.zeros((0, self.channels))
        buf = torch.from_numpy(self.buf)
        idx = torch.arange(frames)[:, None] * hop + torch.arange(n)
        seg = buf[:, idx] * self.window[None, None, :, None]  # (K, F, N, C)
        chosen = _pick_bins(self.method, torch.fft.rfft(seg, dim=2), self.weights)
        frame_out = (torch.fft.irfft(chosen, n=n, dim=1) * self.window[:, None]).numpy()
        done = frames * hop  # samples that every frame covering them has reached
        span = np.zeros((done + n - hop, self.channels))
        wspan = np.zeros(done + n - hop)
        span[:n] += self.acc
        wspan[:n] += self.wacc
        w2 = (self.window**2).numpy()
        for f in range(frames):  # overlap-add: a few frames per block, not a hot loop
            span[f * hop : f * hop + n] += frame_out[f]
            wspan[f * hop : f * hop + n] += w2
        self.acc = np.concatenate([span[done:], np.zeros((hop, self.channels))])
        self.wacc = np.concatenate([wspan[done:], np.zeros(hop)])
        self.buf = self.buf[:, done:]
        return self._normalized(span[:done], wspan[:done])

    @staticmethod
    def _normalized(span: np.ndarray, wsum: np.ndarray) -> np.ndarray:
        """Overlap-add divided by the summed squared window where it is not ~0 (librosa.istft)."""
        safe = wsum > np.finfo(np.float32).tiny
        return np.where(safe[:, None], span / np.where(safe, wsum, 1.0)[:, None], span)
