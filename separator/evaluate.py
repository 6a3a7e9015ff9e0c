"""MUSDB18 / MUSDB18HQ evaluation: score a model or a folder of estimates, museval-compatible.

Layouts read:
  * MUSDB18HQ: ``ROOT/{train,test}/<track>/{mixture,vocals,drums,bass,other}.wav``;
  * MUSDB18: ``ROOT/{train,test}/<track>.stem.mp4`` through the ``musdb`` package (needs ffmpeg);
  * estimates: ``DIR/<track>/<stem>.wav`` (or museval's ``DIR/<subset>/<track>/<stem>.wav``).

Written to the output folder:
  * ``<subset>/<track>.json``: museval's per-track format (``museval.EvalStore.add_eval_dir`` and
    ``MethodStore`` read it), plus a ``"separator"`` key with the global SDR per stem;
  * ``summary.md`` / ``summary.csv``: per stem, cSDR (median over tracks of the median over
    frames) and the global (MDX) SDR averaged over tracks, plus ISR/SIR/SAR with metrics="all";
  * ``sdr_boxplot.png`` with the ``plot`` extra (matplotlib).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile as sf

from separator.cards import check_name
from separator.errors import SeparatorError
from separator.metrics import IllConditionedWarning, bss_eval, framewise_sdr, sdr

STEMS = ("vocals", "drums", "bass", "other")  # museval evaluates them jointly, in this order
METRICS = ("SDR", "SIR", "ISR", "SAR")
BASELINES = ("mixture", "scaled-mixture")
MUSEVAL_VERSION = "0.4.1"  # the format version we write (museval/aggregate.py TrackStore)


class TensorSeparator(Protocol):
    """What evaluation needs from `separator.api.Separator`."""

    stems: tuple[str, ...]

    def separate_tensor(
        self, wav: Any, sample_rate: int, stems: Sequence[str] | None = None
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Track:
    """One dataset track: `source` is a MUSDB18HQ folder or a musdb Track object."""

    name: str
    subset: str
    source: Any


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(channels, time) float32 and the sample rate."""
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise SeparatorError(f"{path}: cannot read audio ({e})") from None
    return np.ascontiguousarray(audio.T), int(rate)


def find_tracks(root: Path, subset: str, names: Sequence[str] | None = None) -> list[Track]:
    """Tracks of `subset` under a MUSDB18HQ (wav folders) or MUSDB18 (.stem.mp4) root."""
    folder = Path(root) / subset
    if not folder.is_dir():
        raise SeparatorError(f"{folder}: no such folder (expected ROOT/{{train,test}}/<track>)")
    if any(folder.glob("*.stem.mp4")):
        found = _musdb_tracks(Path(root), subset)
    else:
        found = [Track(p.name, subset, p) for p in sorted(folder.iterdir()) if p.is_dir()]
    if names:
        missing = sorted(set(names) - {t.name for t in found})
        if missing:
            raise SeparatorError(f"{folder}: no track named {', '.join(missing)}")
        found = [t for t in found if t.name in set(names)]
    if not found:
        raise SeparatorError(f"{folder}: no tracks found")
    return found


def _musdb_tracks(root: Path, subset: str) -> list[Track]:
    try:
        import musdb
    except Exception as e:
        raise SeparatorError(f"{root}: reading .stem.mp4 needs musdb and ffmpeg ({e})") from None
    db = musdb.DB(root=str(root), subsets=subset, is_wav=False)
    return [Track(t.name, subset, t) for t in db.tracks]


def load_track(
    track: Track, stems: Sequence[str] = STEMS
) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """Mixture (channels, time), references {stem: (channels, time)} and the sample rate."""
    if not isinstance(track.source, Path):  # a musdb Track: (time, channels) float64 arrays
        refs = {s: track.source.targets[s].audio.T.astype(np.float32) for s in stems}
        return track.source.audio.T.astype(np.float32), refs, int(track.source.rate)
    mixture, rate = _read_wav(track.source / "mixture.wav")
    refs = {}
    for stem in stems:
        path = track.source / f"{stem}.wav"
        if not path.is_file():
            raise SeparatorError(f"{path}: missing reference stem")
        refs[stem], stem_rate = _read_wav(path)
        if stem_rate != rate or refs[stem].shape != mixture.shape:
            raise SeparatorError(f"{path}: rate or shape differs from mixture.wav")
    return mixture, refs, rate


def load_estimates(
    folder: Path, track: Track, rate: int, like: np.ndarray, stems: Sequence[str] = STEMS
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
        audio, est_rate = _read_wav(path)
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
    stems: Sequence[str] = STEMS,
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


def track_json(
    frames: dict[str, dict[str, np.ndarray]], global_sdr: dict[str, float], metrics: str
) -> str:
    """museval's per-track JSON (TrackStore.json): 1 s frames, values rounded to 5 decimals,
    infinities written as NaN (TrackStore._q)."""

    def q(x: float) -> float:
        return float("nan") if math.isinf(x) else round(float(x), 5)

    targets = [
        {
            "name": stem,
            "frames": [
                {
                    "time": float(t),
                    "duration": 1.0,
                    "metrics": {m: q(per_metric[m][t]) for m in METRICS},
                }
                for t in range(len(per_metric["SDR"]))
            ],
        }
        for stem, per_metric in frames.items()
    ]
    extra = {"metrics": metrics, "global_sdr": {s: round(v, 5) for s, v in global_sdr.items()}}
    doc = {"targets": targets, "museval_version": MUSEVAL_VERSION, "separator": extra}
    return json.dumps(doc, indent=2, allow_nan=True)


def _done(path: Path, metrics: str) -> bool:
    """A track is already scored if its JSON exists with at least the metrics asked for."""
    if not path.is_file():
        return False
    try:
        have = json.loads(path.read_text())["separator"]["metrics"]
    except (ValueError, KeyError, TypeError):
        return False  # written by museval or damaged: score again
    return have == "all" or have == metrics


@dataclass
class Report:
    """Result of `evaluate_dataset`: the summary rows and where everything was written."""

    rows: list[dict[str, Any]]
    output_dir: Path
    scored: list[str]
    skipped: list[str]
    ill_conditioned: list[str]


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
    stems: Sequence[str] = STEMS,
    stem_map: dict[str, tuple[str, ...]] | None = None,
    baseline: str | None = None,
) -> Report:
    """Score every selected track and write per-track JSON, the summary and the box plot.

    Exactly one source of estimates: `estimates` (a folder), `model` (a name, card or path, or
    "a,b" / an ensemble card, run with the same engine as `separate`), `separator` (any object
    with `separate_tensor`) or `baseline` ("mixture": the mixture itself; "scaled-mixture": the
    best scaled mixture, see `best_scaled_mixture`). `stems` are the reference stems
    (`<stem>.wav` beside `mixture.wav`); `stem_map` sums model stems into a reference stem.
    Tracks whose JSON already holds the requested metrics are skipped (resume).
    """
    if metrics not in ("sdr", "all"):
        raise SeparatorError(f"--metrics {metrics!r}: use 'sdr' or 'all'")
    if sum(x is not None for x in (estimates, model, separator, baseline)) != 1:
        raise SeparatorError("give exactly one of --model, --estimates or --baseline")
    if baseline not in (None, *BASELINES):
        raise SeparatorError(f"--baseline {baseline!r}: use {' or '.join(BASELINES)}")
    for stem in stems:
        check_name(stem)
    if model is not None:
        from separator.api import load_separator  # the streaming engine: only when needed

        separator = load_separator(model, device=device)
    selected = find_tracks(Path(root), subset, tracks)
    out_dir = Path(output_dir)
    (out_dir / subset).mkdir(parents=True, exist_ok=True)
    report = Report([], out_dir, [], [], [])
    for track in _progress(selected, progress):
        path = out_dir / subset / f"{track.name}.json"
        if _done(path, metrics):
            report.skipped.append(track.name)
            continue
        mixture, refs, rate = load_track(track, stems)
        if separator is not None:
            ests = separate_track(separator, mixture, rate, stems, stem_map)
        elif baseline == "mixture":
            ests = {s: mixture.copy() for s in stems}
        elif baseline is not None:
            ests = best_scaled_mixture(mixture, refs)
        else:
            ests = load_estimates(Path(estimates), track, rate, mixture, stems)  # type: ignore[arg-type]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", IllConditionedWarning)
            frames, global_sdr = score_track(refs, ests, rate, metrics)
        if any(issubclass(w.category, IllConditionedWarning) for w in caught):
            report.ill_conditioned.append(track.name)
        path.write_text(track_json(frames, global_sdr, metrics))
        report.scored.append(track.name)
    report.rows = summarize(out_dir, subset, [t.name for t in selected], metrics)
    write_summary(report.rows, out_dir, metrics)
    if plot:
        plot_boxes(out_dir, subset, [t.name for t in selected])
    return report


def _progress(items: list[Track], show: bool):
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


def _frame_medians(out_dir: Path, subset: str, names: Sequence[str]) -> dict[str, dict]:
    """{track: {stem: {metric: median over frames (NaN skipped)}, "global": {stem: dB}}}."""
    out = {}
    for name in names:
        doc = json.loads((out_dir / subset / f"{name}.json").read_text())
        per_stem = {}
        for target in doc["targets"]:
            values = {m: [f["metrics"][m] for f in target["frames"]] for m in METRICS}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN metrics
                per_stem[target["name"]] = {
                    m: float(np.nanmedian(np.asarray(v, dtype=float))) for m, v in values.items()
                }
        out[name] = {"stems": per_stem, "global": doc.get("separator", {}).get("global_sdr", {})}
    return out


def summarize(
    out_dir: Path, subset: str, names: Sequence[str], metrics: str = "sdr"
) -> list[dict[str, Any]]:
    """Per stem: cSDR (median over tracks of frame medians, as museval EvalStore), global SDR
    (mean over tracks, as MDX/SDX), and with metrics="all" the ISR/SIR/SAR medians."""
    per_track = _frame_medians(out_dir, subset, names)
    rows = []
    for stem in _stem_order(per_track):
        scored = [t for t in per_track.values() if stem in t["stems"]]
        if not scored:
            continue
        row: dict[str, Any] = {"stem": stem, "tracks": len(scored)}
        shown = METRICS if metrics == "all" else ("SDR",)
        for m in shown:
            key = "cSDR" if m == "SDR" else m
            row[key] = float(np.nanmedian([t["stems"][stem][m] for t in scored]))
        row["global SDR"] = float(np.mean([t["global"][stem] for t in scored]))
        rows.append(row)
    if rows:
        mean = {"stem": "mean", "tracks": max(r["tracks"] for r in rows)}
        for key in rows[0]:
            if key not in mean:
                mean[key] = float(np.mean([r[key] for r in rows]))
        rows.append(mean)
    return rows


def _stem_order(per_track: dict[str, dict]) -> list[str]:
    """Stems scored in any track: MUSDB18's order first, then others as first seen."""
    seen = list(dict.fromkeys(s for t in per_track.values() for s in t["stems"]))
    return [s for s in STEMS if s in seen] + [s for s in seen if s not in STEMS]


def write_summary(rows: list[dict[str, Any]], out_dir: Path, metrics: str) -> None:
    """summary.md (Markdown table, dB) and summary.csv."""
    if not rows:
        return
    keys = list(rows[0])
    lines = [
        (
            f"Evaluation ({'all v4 metrics' if metrics == 'all' else 'SDR'}), dB: "
            "cSDR = median over tracks of the median over 1 s frames (museval); "
            "global SDR = MDX definition, mean over tracks."
        ),
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    for row in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    with open(out_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def plot_boxes(out_dir: Path, subset: str, names: Sequence[str]) -> Path | None:
    """sdr_boxplot.png: per stem, the distribution over tracks of the frame-median SDR.

    Returns None (and draws nothing) without matplotlib (`pip install separator[plot]`).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    per_track = _frame_medians(out_dir, subset, names)
    stems = _stem_order(per_track)
    data = [[t["stems"][s]["SDR"] for t in per_track.values() if s in t["stems"]] for s in stems]
    data = [[v for v in d if np.isfinite(v)] for d in data]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(stems), 4))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(stems) + 1), stems)
    ax.set_ylabel("SDR per track (median over 1 s frames), dB")
    ax.set_title(f"{subset}: {len(per_track)} tracks")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = out_dir / "sdr_boxplot.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
