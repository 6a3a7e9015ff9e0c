"""Ensembles: several models separate the same input and their stems are combined.

Each member runs its own streaming pipeline (its own rate, chunk and overlap); their finished
outputs, all at the input rate, are aligned and combined stem by stem:

- `avg`: weighted mean of the waveforms (the default, as in MSST's `ensemble.py`);
- `median`: element-wise median of the waveforms (weights ignored);
- `max_spec` / `min_spec`: per STFT bin, the member value with the largest / smallest magnitude,
  then the inverse STFT (weights ignored). The STFT is a streaming weighted overlap-add (periodic
  Hann, 2048 / hop 512), so memory stays constant and equal members give back their input.

A stem that only some members have is combined over those members.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
import torch

from separator.errors import ConfigError, SeparatorError
from separator.inference.pipeline import PipelineBase, pop_samples
from separator.inference.separator import SeparatorBase
from separator.inference.stems import StemPlan
from separator.zoo.cards import ENSEMBLE_METHODS, check_ensemble

SPEC_N_FFT = 2048
SPEC_HOP = 512


class Ensemble(SeparatorBase):
    """Separates with several `Separator`s and combines their stems (see the module doc).

    `stem_models`: optional {stem: member indices} to take a stem from some members only.
    """

    def __init__(
        self,
        members: Sequence[SeparatorBase],
        *,
        method: str = "avg",
        weights: Sequence[float] | None = None,
        stem_models: dict[str, Sequence[int]] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        names = list(names or [f"model{i}" for i in range(len(members))])
        try:
            check_ensemble(names, weights, method, "ensemble")
        except ConfigError as e:
            raise SeparatorError(str(e)) from None
        self.members = list(members)
        self.names = names
        self.method = method
        self.weights = [float(w) for w in weights] if weights is not None else [1.0] * len(members)
        self._stems: list[str] = []
        for m in self.members:
            self._stems += [s for s in m.stems if s not in self._stems]
        self.sources: dict[str, list[int]] = {
            s: [i for i, m in enumerate(self.members) if s in m.stems] for s in self._stems
        }
        for stem, idx in (stem_models or {}).items():
            lacking = [names[i] for i in idx if stem not in self.members[i].stems]
            if stem not in self.sources or lacking or not idx:
                raise SeparatorError(f"ensemble: stem {stem!r} is not a stem of {lacking or names}")
            self.sources[stem] = list(idx)

    @property
    def stems(self) -> tuple[str, ...]:
        return tuple(self._stems)

    @property
    def residuals(self) -> bool:
        """Residual stems exist only if every member has them (see `Family.residuals`)."""
        return all(m.residuals for m in self.members)

    def _pipeline(self, in_rate: int, in_channels: int, plans: list[StemPlan], where: str):
        return _EnsemblePipeline(self, in_rate, in_channels, plans, where)


class _EnsemblePipeline(PipelineBase):
    """Same interface as `ModelPipeline`: push blocks of mixture, get finished stems."""

    def __init__(self, ens: Ensemble, in_rate: int, in_channels: int, plans, where: str) -> None:
        super().__init__(plans, in_channels)
        self.ens = ens
        names = [ens.stems[i] for i in self.needed]
        self.members = []  # (member index, its pipeline, the stems it contributes)
        for i, m in enumerate(ens.members):
            mine = [s for s in names if i in ens.sources[s]]
            if mine:
                member_plans = [StemPlan(s, index=m.stems.index(s)) for s in mine]
                self.members.append(
                    (i, m._pipeline(in_rate, in_channels, member_plans, where), mine)
                )
        # finished member output not yet matched by every other member
        self.buffers = [{s: deque() for s in mine} for _, _, mine in self.members]
        self.ready = [0] * len(self.members)
        spectral = ens.method in ("max_spec", "min_spec")
        self.spec = {s: _SpecCombiner(ens.method, in_channels) for s in names} if spectral else None

    def push(self, block: np.ndarray) -> dict[str, np.ndarray]:
        self._take_input(block)
        for k, (_, pipe, _) in enumerate(self.members):
            self._take(k, pipe.push(block))
        return self._emit(last=False)

    def flush(self) -> dict[str, np.ndarray]:
        for k, (_, pipe, _) in enumerate(self.members):
            self._take(k, pipe.flush())
        return self._emit(last=True)

    def _take(self, k: int, out: dict[str, np.ndarray]) -> None:
        for stem, x in out.items():
            self.buffers[k][stem].append(x)
        if out:
            self.ready[k] += len(next(iter(out.values())))

    def _emit(self, *, last: bool) -> dict[str, np.ndarray]:
        n = min(self.ready)
        self.ready = [r - n for r in self.ready]
        combined = {self.ens.stems[i]: self._combine(self.ens.stems[i], n) for i in self.needed}
        if self.spec is not None:
            combined = {s: self.spec[s].push(x, last=last) for s, x in combined.items()}
        m = len(next(iter(combined.values())))
        self.n_out += m
        return self._assemble(lambda i: combined[self.ens.stems[i]], m)

    def _combine(self, stem: str, n: int) -> np.ndarray:
        """The next `n` samples of `stem` from its members, combined ((K, n, C) for max/min_spec,
        which the spectral combiner picks from)."""
        parts, weights = [], []
        for k, (i, _, mine) in enumerate(self.members):
            if stem in mine:
                parts.append(pop_samples(self.buffers[k][stem], n, self.in_channels))
                weights.append(self.ens.weights[i])
        if self.spec is not None:
            return np.stack(parts)
        if len(parts) == 1:
            return parts[0]
        x = np.stack(parts)
        if self.ens.method == "median":
            return np.median(x, axis=0).astype(np.float32)
        w = np.asarray(weights, np.float32)
        if w.sum() <= 0:
            raise SeparatorError(f"ensemble: the members that have {stem!r} all have weight 0")
        return np.tensordot(w / w.sum(), x, axes=1).astype(np.float32)


class _SpecCombiner:
    """Streaming STFT -> per-bin max/min-magnitude pick -> inverse STFT, for one stem.

    Input blocks (K members, n, C), output (n', C) finished samples; the total output has exactly
    the total input length. Periodic Hann analysis and synthesis windows at hop N/4 sum (squared)
    to 3/2 everywhere, so identical members are reproduced to rounding error.
    """

    def __init__(self, method: str, channels: int) -> None:
        self.pick_max = method == "max_spec"
        self.window = torch.hann_window(SPEC_N_FFT, periodic=True, dtype=torch.float64)
        self.norm = (self.window**2).reshape(4, SPEC_HOP).sum(0).numpy()  # 1.5 at every offset
        self.lead = SPEC_N_FFT - SPEC_HOP  # zeros before the signal: every sample sees 4 frames
        self.buf: np.ndarray | None = None  # (K, m, C) samples not yet consumed by a frame
        self.acc = np.zeros((SPEC_N_FFT, channels))  # overlap-add accumulator
        self.to_skip = self.lead
        self.n_in = self.n_out = 0
        self.channels = channels

    def push(self, x: np.ndarray, *, last: bool) -> np.ndarray:
        k = x.shape[0]
        if self.buf is None:
            self.buf = np.zeros((k, self.lead, self.channels))
        self.n_in += x.shape[1]
        self.buf = np.concatenate([self.buf, x.astype(np.float64)], axis=1)
        if last:  # pad so every real sample is covered by all its frames
            pad = self.lead + (-(self.buf.shape[1] - SPEC_N_FFT) % SPEC_HOP)
            self.buf = np.concatenate([self.buf, np.zeros((k, pad, self.channels))], axis=1)
        frames = (
            1 + (self.buf.shape[1] - SPEC_N_FFT) // SPEC_HOP
            if self.buf.shape[1] >= SPEC_N_FFT
            else 0
        )
        y = np.zeros((0, self.channels))
        if frames > 0:
            buf = torch.from_numpy(self.buf)
            idx = torch.arange(frames)[:, None] * SPEC_HOP + torch.arange(SPEC_N_FFT)
            seg = buf[:, idx] * self.window[None, None, :, None]  # (K, F, N, C)
            spec = torch.fft.rfft(seg, dim=2)
            mag = spec.abs()
            pick = mag.argmax(0) if self.pick_max else mag.argmin(0)
            chosen = torch.gather(spec, 0, pick[None]).squeeze(0)  # (F, bins, C)
            frame_out = (
                torch.fft.irfft(chosen, n=SPEC_N_FFT, dim=1) * self.window[:, None]
            ).numpy()
            done = frames * SPEC_HOP  # samples that every frame covering them has reached
            span = np.zeros((done + SPEC_N_FFT - SPEC_HOP, self.channels))
            span[:SPEC_N_FFT] += self.acc
            for f in range(frames):
                span[f * SPEC_HOP : f * SPEC_HOP + SPEC_N_FFT] += frame_out[f]
            finished = span[:done].reshape(frames, SPEC_HOP, self.channels) / self.norm[:, None]
            y = finished.reshape(done, self.channels)
            self.acc = np.concatenate([span[done:], np.zeros((SPEC_HOP, self.channels))])
            self.buf = self.buf[:, done:]
        skip = min(self.to_skip, len(y))
        self.to_skip -= skip
        y = y[skip:]
        y = y[: max(0, self.n_in - self.n_out)] if last else y
        self.n_out += len(y)
        return y.astype(np.float32)


__all__ = ["ENSEMBLE_METHODS", "Ensemble"]
