"""Ensembles: several models separate the same input and their stems are combined.

Each member runs its own streaming pipeline (its own rate, chunk and overlap); their finished
outputs, all at the input rate, are aligned and combined stem by stem by one of the methods of
`separator.inference.combine` (ENSEMBLE_METHODS): `avg` (weighted mean of the waveforms, the
default, as MSST's `ensemble.py`), `median`, `min_wave` / `max_wave` (smallest / largest
magnitude per sample), `max_spec` / `min_spec` (per STFT bin), and MSST's `avg_fft`,
`median_fft`, `min_fft`, `max_fft`. The spectral ones stream too, so memory stays constant.

A stem that only some members have is combined over those members.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from separator.errors import ConfigError, SeparatorError
from separator.inference.combine import WAVE_METHODS, SpecCombiner, combine_waves
from separator.inference.pipeline import PipelineBase, pop_samples
from separator.inference.separator import SeparatorBase
from separator.inference.stems import StemPlan
from separator.zoo.cards import ENSEMBLE_METHODS, canonical_method, check_ensemble


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
        method = canonical_method(method)
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

    def _pipeline(self, in_rate, in_channels, plans, where, rewind=None):
        return _EnsemblePipeline(self, in_rate, in_channels, plans, where, rewind)


class _EnsemblePipeline(PipelineBase):
    """Same interface as `ModelPipeline`: push blocks of mixture, get finished stems."""

    def __init__(
        self, ens: Ensemble, in_rate: int, in_channels: int, plans, where: str, rewind=None
    ) -> None:
        super().__init__(plans, in_channels)
        self.ens = ens
        names = [ens.stems[i] for i in self.needed]
        self.members = []  # (member index, its pipeline, the stems it contributes)
        for i, m in enumerate(ens.members):
            mine = [s for s in names if i in ens.sources[s]]
            if mine:
                member_plans = [StemPlan(s, index=m.stems.index(s)) for s in mine]
                self.members.append(
                    (i, m._pipeline(in_rate, in_channels, member_plans, where, rewind), mine)
                )
        # finished member output not yet matched by every other member
        self.buffers = [{s: deque() for s in mine} for _, _, mine in self.members]
        self.ready = [0] * len(self.members)
        self.weights = {
            s: [ens.weights[i] for i, _, mine in self.members if s in mine] for s in names
        }
        for stem, w in self.weights.items():
            if ens.method in ("avg", "avg_fft") and sum(w) <= 0:
                raise SeparatorError(f"ensemble: the members that have {stem!r} all have weight 0")
        spectral = ens.method not in WAVE_METHODS
        self.spec = (
            {s: SpecCombiner(ens.method, in_channels, self.weights[s]) for s in names}
            if spectral
            else None
        )

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
        """The next `n` samples of `stem` from its members, combined ((K, n, C) for a spectral
        method, which the spectral combiner picks from)."""
        parts = [
            pop_samples(self.buffers[k][stem], n, self.in_channels)
            for k, (_, _, mine) in enumerate(self.members)
            if stem in mine
        ]
        if self.spec is not None:
            return np.stack(parts)
        if len(parts) == 1:
            return parts[0]
        return combine_waves(self.ens.method, np.stack(parts), self.weights[stem])


_SpecCombiner = SpecCombiner  # the name older code imports

__all__ = ["ENSEMBLE_METHODS", "Ensemble"]
