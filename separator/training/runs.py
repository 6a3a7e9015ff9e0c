"""A training run's folder and its progress on the terminal.

- `prepare_run_folder`: a run folder that already holds a run is refused unless the run is
  resumed or replaced (`force`), so a new run never silently overwrites an earlier one's best
  weights.
- `ProgressLog`: one line per logging interval (step, loss, steps/s, ETA), beside the CSV log.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from separator.errors import ConfigError, SeparatorError
from separator.files import read_yaml

# What a run writes (besides recipe.yaml, its exported card and tensorboard/).
RUN_FILES = ("last.ckpt", "best.safetensors", "train.csv")


def prepare_run_folder(folder: Path, *, resume: bool, force: bool, main: bool = True) -> None:
    """Refuse a folder holding an earlier run unless `resume` or `force`; with `force` (and not
    `resume`) the main process removes that run's files, so none of them outlive the new run."""
    if resume:
        return
    found = [name for name in RUN_FILES if (folder / name).exists()]
    if not found:
        return
    if not force:
        raise SeparatorError(
            f"{folder}: holds an earlier run ({', '.join(found)}); pass `resume=True` to "
            "continue it or `force=True` to replace it, or choose another `output_dir`"
        )
    if main:
        for path in [folder / name for name in found] + exported_cards(folder):
            path.unlink(missing_ok=True)


def exported_cards(folder: Path) -> list[Path]:
    """The model cards a run exported into `folder` (their weights are its best.safetensors)."""
    cards = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            data = read_yaml(path)
        except ConfigError:
            continue
        weights = data.get("weights")
        if "architecture" in data and isinstance(weights, dict):
            if weights.get("file") == "best.safetensors":
                cards.append(path)
    return cards


class ProgressLog:
    """One line per logging interval: `step 120/300  loss 0.1234  2.41 steps/s  ETA 0:01:15`.

    The loss is the mean over the interval's steps (non-finite ones left out); the rate counts
    training only, not the time spent validating.
    """

    def __init__(self, emit: Callable[[str], None] | None, start: int, end: int) -> None:
        self.emit, self.end = emit, end
        self.last_step, self.last_time = start, time.perf_counter()
        self.losses: list[float] = []

    def add(self, loss: float) -> None:
        self.losses.append(loss)

    def report(self, step: int) -> None:
        now = time.perf_counter()
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        finite = [x for x in self.losses if math.isfinite(x)]
        loss = sum(finite) / len(finite) if finite else math.nan
        self.last_step, self.last_time, self.losses = step, now, []
        if self.emit is not None:
            eta = format_seconds((self.end - step) / rate) if rate > 0 else "?"
            self.emit(f"step {step}/{self.end}  loss {loss:.4f}  {rate:.2f} steps/s  ETA {eta}")

    def validation(self, step: int, sdr: float, best: float, seconds: float) -> None:
        """A validation that took `seconds` scored `sdr` (`best`: the best before it)."""
        self.last_time += seconds  # not training time: keep it out of steps/s
        if self.emit is not None:
            self.emit(f"step {step}: validation SDR {sdr:.2f} dB (best {max(sdr, best):.2f} dB)")


def format_seconds(seconds: float) -> str:
    """h:mm:ss."""
    total = round(seconds)
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"
