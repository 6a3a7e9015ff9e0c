"""MUSDB18 / MUSDB18HQ evaluation: score a model or a folder of estimates, museval-compatible.

Layouts read (see `separator.datasets`):
  * MUSDB18HQ: ``ROOT/{train,test}/<track>/{mixture,vocals,drums,bass,other}.wav``;
  * MUSDB18: ``ROOT/{train,test}/<track>.stem.mp4`` through the ``musdb`` package (needs ffmpeg);
  * estimates: ``DIR/<track>/<stem>.wav`` (or museval's ``DIR/<subset>/<track>/<stem>.wav``).

What is written is described in `separator.evaluation.report`. A track that cannot be read is
recorded as failed, with its error, and the others are still scored.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from separator.datasets import MUSDB_STEMS, Track, open_track, track_dirs
from separator.errors import SeparatorError
from separator.evaluation.metrics import IllConditionedWarning, bss_eval, framewise_sdr, sdr
from separator.evaluation.report import (
    METRICS,
    is_scored,
    plot_boxes,
    summarize,
    track_json,
    write_summary,
)
from separator.files import atomic_write
from separator.inference.audio import read_audio
from separator.names import check_name

BASELINES = ("mixture", "scaled-mixture")


class TensorSeparator(Protocol):
    """What evaluation needs from `separator.inference.Separator`."""

    stems: tuple[str, ...]

    def separate_tensor(
        self, wav: Any, sample_rate: int, stems: Sequence[str] | None = None
    ) -> dict[str, Any]: ...


def load_estimates(
    folder: Path, track: Track, rate: int, like: np.ndarray, stems: Sequence[str] = MUSDB_STEMS
) -> dict[str, np.ndarray]:
    """Estimates {stem: (channels, time)} found for `track`, padded or cut to the reference.

    museval ``pad_or_truncate`` does the same: zeros at the end, or the tail dropped.
    """
    candidates = [Path(folder) / track.name, Path(folder) / track.subset / track.name]
    track_dir = next((c for c in candidates if c.is_dir()), None)
    if track_dir is None:
        raise SeparatorError(f"{candidates[0]}: no estimates for track {track.name!r}")
    out = {}
    for stem in stems:
        path = track_dir / f"{stem}.wav"
        if not path.is_file():
            continue
        audio, est_rate = read_audio(path)
        if est_rate != rate or audio.shape[0] != like.shape[0]:
            raise SeparatorError(
                f"{path}: {audio.shape[0]} channels at {est_rate} Hz, "
                f"expected {like.shape[0]} at {rate} Hz"
            )
        out[stem] = _fit_length(audio, like.shape[-1])
    if not out:
        raise SeparatorError(f"{track_dir}: none of {', '.join(stems)} (.wav) found")
    return out


def _fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    if audio.shape[-1] >= length:
        return audio[:, :length]
    return np.pad(audio, ((0, 0), (0, length - audio.shape[-1])))


def separate_track(
    sep: TensorSeparator,
    mixture: np.ndarray,
    rate: int,
    stems: Sequence[str] = MUSDB_STEMS,
    stem_map: dict[str, tuple[str, ...]] | None = None,
) -> dict[str, np.ndarray]:
    """Estimates from a model for the reference `stems` it has. `stem_map` builds a reference
    stem from a sum of model stems (e.g. rest = vocals + drums + bass)."""
    import torch

    stem_map = stem_map or {}
    sources = {s: stem_map.get(s, (s,)) for s in stems}
    sources = {s: src for s, src in sources.items() if all(x in sep.stems for x in src)}
    if not sources:
        raise SeparatorError(f"the model's stems {tuple(sep.stems)} include none of {stems}")
    needed = sorted({x for src in sources.values() for x in src}, key=sep.stems.index)
    out = sep.separate_tensor(torch.from_numpy(mixture), rate, stems=needed)
    ests = {s: sum(np.asarray(out[x], dtype=np.float32) for x in src) for s, src in sources.items()}
    return {s: _fit_length(a, mixture.shape[-1]) for s, a in ests.items()}


def best_scaled_mixture(mixture: np.ndarray, refs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The oracle baseline: per stem, the mixture times the one gain that minimises the squared
    error to that stem's reference (a = <mix, ref> / <mix, mix>, over all channels and samples).
    """
    mix = mixture.astype(np.float64)
    energy = float(np.sum(mix * mix))
    out = {}
    for stem, ref in refs.items():
        gain = float(np.sum(mix * ref)) / energy if energy > 0 else 0.0
        out[stem] = (gain * mixture).astype(np.float32)
    return out


def score_track(
    refs: dict[str, np.ndarray], ests: dict[str, np.ndarray], rate: int, metrics: str = "sdr"
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """Framewise v4 metrics {stem: {metric: (frames,)}} (1 s frames) and global SDR {stem: dB}.

    The stems present are scored jointly, as museval ``eval_mus_track`` does; with
    metrics="sdr" the ISR/SIR/SAR frames are NaN.
    """
    stems = [s for s in refs if s in ests]
    ref = np.stack([refs[s] for s in stems])
    est = np.stack([ests[s] for s in stems])
    if metrics == "all":
        values = dict(zip(("SDR", "ISR", "SIR", "SAR"), bss_eval(ref, est, rate, rate)))
    else:
        values = {"SDR": framewise_sdr(ref, est, rate, rate)}
        values.update({m: np.full_like(values["SDR"], np.nan) for m in ("ISR", "SIR", "SAR")})
    frames = {s: {m: values[m][i] for m in METRICS} for i, s in enumerate(stems)}
    global_sdr = {s: float(v) for s, v in zip(stems, sdr(ref, est))}
    return frames, global_sdr


@dataclass
class Report:
    """Result of `evaluate_dataset`: the summary rows and where everything was written."""

    rows: list[dict[str, Any]]
    output_dir: Path
    scored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    ill_conditioned: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # track -> its one-line error


def evaluate_dataset(
    root: Path,
    output_dir: Path,
    *,
    estimates: Path | None = None,
    model: str | None = None,
    separator: TensorSeparator | None = None,
    subset: str = "test",
    tracks: Sequence[str] | None = None,
    metrics: str = "sdr",
    device: str = "auto",
    plot: bool = True,
    progress: bool = True,
    stems: Sequence[str] = MUSDB_STEMS,
    stem_map: dict[str, tuple[str, ...]] | None = None,
    baseline: str | None = None,
) -> Report:
    """Score every selected track and write per-track JSON, the summary and the box plot.

    Exactly one source of estimates: `estimates` (a folder), `model` (a name, card or path, or
    "a,b" / an ensemble card, run with the same engine as `separate`), `separator` (any object
    with `separate_tensor`) or `baseline` ("mixture": the mixture itself; "scaled-mixture": the
    best scaled mixture, see `best_scaled_mixture`). `stems` are the reference stems
    (`<stem>.wav` beside `mixture.wav`); `stem_map` sums model stems into a reference stem.
    Tracks whose JSON already holds the requested metrics are skipped (resume); a track that
    fails is recorded in `Report.failed` and left out of the summary.
    """
    _check_arguments(metrics, estimates, model, separator, baseline, stems)
    if model is not None:
        from separator.inference import load_separator  # the streaming engine: only when needed

        separator = load_separator(model, device=device)
    selected = track_dirs(Path(root), subset, names=tracks)
    out_dir = Path(output_dir)
    (out_dir / subset).mkdir(parents=True, exist_ok=True)
    report = Report([], out_dir)
    for folder in _progress(selected, progress):
        _score_one(
            folder,
            out_dir / subset,
            report,
            stems,
            metrics,
            (separator, baseline, estimates, stem_map),
        )
    done = [
        n for n in (f.name.removesuffix(".stem.mp4") for f in selected) if n not in report.failed
    ]
    report.rows = summarize(out_dir, subset, done, metrics)
    write_summary(report.rows, out_dir, metrics)
    if plot and done:
        plot_boxes(out_dir, subset, done)
    return report


def _score_one(folder: Path, out: Path, report: Report, stems, metrics: str, source) -> None:
    """Score one track into `out/<track>.json` and note the outcome in `report`."""
    name = folder.name.removesuffix(".stem.mp4")
    path = out / f"{name}.json"
    if is_scored(path, metrics):
        report.skipped.append(name)
        return
    try:
        track = open_track(folder, stems, with_mixture=True)
        ests, refs = _estimates(track, stems, *source)
    except SeparatorError as e:
        report.failed[name] = str(e)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IllConditionedWarning)
        frames, global_sdr = score_track(refs, ests, track.sample_rate, metrics)
    if any(issubclass(w.category, IllConditionedWarning) for w in caught):
        report.ill_conditioned.append(name)
    atomic_write(path, track_json(frames, global_sdr, metrics).encode())
    report.scored.append(name)


def _check_arguments(metrics, estimates, model, separator, baseline, stems) -> None:
    if metrics not in ("sdr", "all"):
        raise SeparatorError(f"`metrics` {metrics!r}: use 'sdr' or 'all'")
    if sum(x is not None for x in (estimates, model, separator, baseline)) != 1:
        raise SeparatorError("give exactly one of `model`, `estimates` or `baseline`")
    if estimates is not None and not Path(estimates).is_dir():
        raise SeparatorError(f"{estimates}: no such folder of estimates")
    if baseline not in (None, *BASELINES):
        raise SeparatorError(f"`baseline` {baseline!r}: use {' or '.join(BASELINES)}")
    for stem in stems:
        check_name(stem)


def _estimates(
    track: Track, stems, separator, baseline, estimates, stem_map
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(estimates, references) {stem: (channels, time)} of one track."""
    refs = {s: track.read(s) for s in stems}
    mixture = track.mixture(stems)
    rate = track.sample_rate
    if separator is not None:
        return separate_track(separator, mixture, rate, stems, stem_map), refs
    if baseline == "mixture":
        return {s: mixture.copy() for s in stems}, refs
    if baseline is not None:
        return best_scaled_mixture(mixture, refs), refs
    return load_estimates(Path(estimates), track, rate, mixture, stems), refs


def _progress(items: list[Path], show: bool):
    if not show:
        yield from items
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("evaluating", total=len(items))
        for item in items:
            bar.update(task, description=f"evaluating {item.name[:40]}")
            yield item
            bar.advance(task)
