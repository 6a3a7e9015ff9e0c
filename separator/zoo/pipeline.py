"""How the engine runs a model: the card's `pipeline:` (DESIGN.md, "Contracts").

Most families run in the engine's overlap-add (`engine: overlap_add`, the default: nothing to
declare). A family whose reference cuts the track differently declares it in its `Family` record
and a card may override any key; demucs:

    pipeline:
      engine: apply_model     # demucs.apply.apply_model: triangular weights, centred context
      overlap: 0.25           # fraction of a segment shared by neighbouring chunks
      transition_power: 1.0   # the triangle's exponent
      shifts: 1               # random time shifts averaged (0: none), offsets from our seed
      normalize: true         # demucs.api.Separator: (mix - mean) / std of the mono mixture

`normalize` works with either engine; the statistics come from a first pass over the input.
Every module the zoo builds from a card carries the result as `module.pipeline`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from separator.errors import ConfigError
from separator.nn import get_family

ENGINES = ("overlap_add", "apply_model")


@dataclass(frozen=True)
class PipelineSpec:
    """A validated `pipeline:`; `overlap` is apply_model's fraction (None with overlap_add)."""

    engine: str = "overlap_add"
    overlap: float | None = None
    transition_power: float = 1.0
    shifts: int = 0
    normalize: bool = False

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"pipeline.engine {self.engine!r}: use {' or '.join(ENGINES)}")
        if not isinstance(self.normalize, bool):
            raise ConfigError(f"pipeline.normalize must be true or false, got {self.normalize!r}")
        if self.engine == "overlap_add":
            if self.overlap is not None or self.shifts or self.transition_power != 1.0:
                raise ConfigError(
                    "pipeline: overlap, shifts and transition_power need engine: apply_model"
                )
            return
        overlap = 0.25 if self.overlap is None else self.overlap
        if not _number(overlap) or not 0 <= overlap < 1:
            raise ConfigError(f"pipeline.overlap must be in [0, 1), got {self.overlap!r}")
        object.__setattr__(self, "overlap", float(overlap))
        if not _number(self.transition_power) or self.transition_power < 1:
            raise ConfigError(
                f"pipeline.transition_power must be >= 1, got {self.transition_power!r}"
            )
        if not isinstance(self.shifts, int) or isinstance(self.shifts, bool) or self.shifts < 0:
            raise ConfigError(f"pipeline.shifts must be an integer >= 0, got {self.shifts!r}")

    @property
    def apply_model(self) -> bool:
        return self.engine == "apply_model"


def _number(value: Any) -> bool:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    return ok and math.isfinite(value)


def resolve_pipeline(architecture: str, pipeline: Mapping[str, Any] | None) -> PipelineSpec:
    """The family's pipeline with the card's keys over it (a ConfigError names a bad key)."""
    if pipeline is not None and not isinstance(pipeline, Mapping):
        raise ConfigError("`pipeline:` must be a mapping (engine, overlap, shifts, ...)")
    card = dict(pipeline or {})
    known = [f.name for f in fields(PipelineSpec)]
    unknown = sorted(set(card) - set(known))
    if unknown:
        raise ConfigError(f"unknown pipeline key(s) {', '.join(unknown)} ({', '.join(known)})")
    values = dict(get_family(architecture).pipeline or {})
    if card.get("engine") == "overlap_add":
        # a card may switch its family's reference pipeline off: keep only what both engines read
        values = {k: v for k, v in values.items() if k == "normalize"}
    return PipelineSpec(**{**values, **card})
