"""Multitrack datasets in the MUSDB18HQ layout, for evaluation and training alike.

    ROOT/{train,test}/<track>/{mixture,vocals,drums,bass,other}.wav      (MUSDB18HQ; .flac too)
    ROOT/{train,test}/<track>.stem.mp4                                    (MUSDB18, via `musdb`)

`find_tracks` lists and opens tracks; `Track.read` reads a stem or an excerpt of it. Also here:
writing a track folder, decoding MUSDB18 into the HQ layout, and the tiny example folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from separator.errors import SeparatorError
from separator.files import atomic_output

MUSDB_STEMS = ("vocals", "drums", "bass", "other")  # museval evaluates them jointly, in this order
STEM_MP4_ORDER = ("mixture", "drums", "bass", "other", "vocals")  # streams of a .stem.mp4

# musdb 0.4's validation subset of the train split (musdb/configs/mus.yaml, `validation_tracks`).
MUSDB_VALIDATION = (
    "Actions - One Minute Smile",
    "Clara Berry And Wooldog - Waltz For My Victims",
    "Johnny Lokke - Promises & Lies",
    "Patrick Talbot - A Reason To Leave",
    "Triviul - Angelsaint",
    "Alexander Ross - Goodbye Bolero",
    "Fergessen - Nos Palpitants",
    "Leaf - Summerghost",
    "Skelpolu - Human Mistakes",
    "Young Griffo - Pennies",
    "ANiMAL - Rockshow",
    "James May - On The Line",
    "Meaxic - Take A Step",
    "Traffic Experiment - Sirens",
)


@dataclass(frozen=True)
class Track:
    """One multitrack song: stem name -> file (MUSDB18HQ) or a musdb Track (`.stem.mp4`).

    `frames`, `sample_rate` and `channels` are shared by all its stems (checked on opening).
    """

    name: str
    subset: str
    files: dict[str, Path]
    frames: int
    sample_rate: int
    channels: int
    musdb: Any = None

    def read(self, stem: str, start: int = 0, frames: int = -1) -> np.ndarray:
        """(channels, frames) float32 samples of one stem, whole or an excerpt."""
        if self.musdb is not None:
            source = self.musdb if stem == "mixture" else self.musdb.targets[stem]
            audio = source.audio.T.astype(np.float32)
            return audio[:, start : None if frames < 0 else start + frames]
        from separator.inference.audio import read_audio

        return read_audio(self.files[stem], start, frames)[0]

    def mixture(self, stems: Sequence[str]) -> np.ndarray:
        """(channels, time): the mixture file when there is one, else the sum of `stems`."""
        if "mixture" in self.files or self.musdb is not None:
            return self.read("mixture")
        return np.sum([self.read(s) for s in stems], axis=0, dtype=np.float32)


def _select(names: Sequence[str], split: str) -> set[str]:
    valid = set(MUSDB_VALIDATION)
    if split == "train":
        return {n for n in names if n not in valid}
    if split == "valid":
        return {n for n in names if n in valid}
    return set(names)


def track_dirs(
    root: str | Path,
    subset: str = "train",
    *,
    split: str | None = None,
    names: Sequence[str] | None = None,
) -> list[Path]:
    """Track folders (or `.stem.mp4` files) of `root/subset`, sorted by name.

    split: for subset "train", "train" (without musdb's 14 validation tracks), "valid" (only
    those) or None (all). names: only these tracks (each must exist).
    """
    base = Path(root) / subset
    if not base.is_dir():
        raise SeparatorError(
            f"{base}: no such folder (expected a MUSDB18HQ layout: "
            f"{Path(root)}/{{train,test}}/<track>/<stem>.wav, or MUSDB18's .stem.mp4 files)"
        )
    found = sorted(base.glob("*.stem.mp4")) or sorted(d for d in base.iterdir() if d.is_dir())
    by_name = {_track_name(p): p for p in found}
    if split is not None:
        keep = _select(list(by_name), split)
        by_name = {n: p for n, p in by_name.items() if n in keep}
    if names:
        missing = sorted(set(names) - set(by_name))
        if missing:
            raise SeparatorError(f"{base}: no track named {', '.join(missing)}")
        by_name = {n: p for n, p in by_name.items() if n in set(names)}
    if not by_name:
        raise SeparatorError(
            f"{base}: no tracks found" + (f" for split {split!r}" if split else "")
        )
    return list(by_name.values())


def _track_name(path: Path) -> str:
    return path.name.removesuffix(".stem.mp4")


def open_track(path: Path, stems: Sequence[str], *, with_mixture: bool = False) -> Track:
    """Open one track folder (or .stem.mp4) with these stems; errors name the file."""
    if path.is_file():
        return _open_stem_mp4(path, stems)
    names = list(stems) + (["mixture"] if with_mixture else [])
    if not with_mixture and (path / "mixture.wav").is_file():
        names.append("mixture")
    files = {}
    for stem in names:
        found = next(
            (f for f in (path / f"{stem}.wav", path / f"{stem}.flac") if f.is_file()), None
        )
        if found is None:
            raise SeparatorError(f"{path}: missing stem {stem!r} ({stem}.wav)")
        files[stem] = found
    rate, channels, frames = _common_format(files)
    return Track(path.name, path.parent.name, files, frames, rate, channels)


def _common_format(files: dict[str, Path]) -> tuple[int, int, int]:
    """(rate, channels, frames) shared by every file; a file that differs is an error."""
    infos = {}
    for stem, path in files.items():
        try:
            infos[stem] = sf.info(str(path))
        except (RuntimeError, sf.LibsndfileError) as e:
            raise SeparatorError(f"{path}: unreadable audio ({e})") from None
    first = next(iter(infos.values()))
    for stem, info in infos.items():
        if info.samplerate != first.samplerate:
            raise SeparatorError(
                f"{files[stem]}: sample rate {info.samplerate} differs from "
                f"{first.samplerate} of the other stems"
            )
        if info.channels != first.channels:
            raise SeparatorError(
                f"{files[stem]}: {info.channels} channels, the other stems have {first.channels}"
            )
        if info.frames != first.frames:
            raise SeparatorError(
                f"{files[stem]}: {info.frames} samples, the other stems have {first.frames}"
            )
    return first.samplerate, first.channels, first.frames


def _open_stem_mp4(path: Path, stems: Sequence[str]) -> Track:
    try:
        import musdb
    except Exception as e:
        raise SeparatorError(f"{path}: reading .stem.mp4 needs musdb and ffmpeg ({e})") from None
    subset = path.parent.name
    db = musdb.DB(root=str(path.parent.parent), subsets=subset, is_wav=False)
    track = next((t for t in db.tracks if t.name == _track_name(path)), None)
    if track is None:
        raise SeparatorError(f"{path}: musdb does not list this track")
    missing = [s for s in stems if s not in track.targets]
    if missing:
        raise SeparatorError(f"{path}: no stem {', '.join(missing)}")
    audio = track.audio
    return Track(track.name, subset, {}, len(audio), int(track.rate), audio.shape[1], track)


def find_tracks(
    root: str | Path,
    stems: Sequence[str] = MUSDB_STEMS,
    *,
    subset: str = "train",
    split: str | None = None,
    names: Sequence[str] | None = None,
    with_mixture: bool = False,
) -> list[Track]:
    """Every track of `root/subset` opened with `stems` (see `track_dirs` and `open_track`)."""
    dirs = track_dirs(root, subset, split=split, names=names)
    return [open_track(d, stems, with_mixture=with_mixture) for d in dirs]


# --- writing -----------------------------------------------------------------------------------
def write_track(folder: Path, stems: dict[str, np.ndarray], sample_rate: int) -> None:
    """Write {stem: (channels, frames)} as `folder/<stem>.wav` (float32 WAV), MUSDB18HQ style,
    in dict order, each through a temporary file, so an interrupted write leaves no partial stem."""
    for stem, audio in stems.items():
        with atomic_output(folder / f"{stem}.wav") as tmp:
            sf.write(tmp, np.ascontiguousarray(audio.T), sample_rate, subtype="FLOAT", format="WAV")


def musdb_to_folder(
    root: str | Path,
    out: str | Path,
    subsets: Sequence[str] = ("train", "test"),
) -> Path:
    """Decode MUSDB18 `.stem.mp4` files (through `musdb`, needs ffmpeg) into a MUSDB18HQ-layout
    folder of WAV files, so training reads excerpts without decoding whole songs each time."""
    try:
        import musdb
    except ImportError:
        raise SeparatorError(
            "reading MUSDB18 .stem.mp4 needs `pip install musdb` and ffmpeg"
        ) from None
    out = Path(out)
    for subset in subsets:
        db = musdb.DB(root=str(root), subsets=subset, is_wav=False)
        for track in db.tracks:
            stems = {"mixture": track.audio.T}
            stems.update({name: src.audio.T for name, src in track.sources.items()})
            write_track(out / subset / track.name, stems, int(track.rate))
    return out


def example_folder(out: str | Path) -> Path:
    """Write a small MUSDB18HQ-layout folder from the real multitrack excerpt that ships with
    `stempeg` (6 s, CC BY-NC-SA; needs `pip install stempeg` and ffmpeg).

    train/: the two 3-second halves (the second with its channels swapped) as training tracks,
    and the whole excerpt under the name of one of musdb's validation tracks, so the standard
    split has something to validate on; test/: the whole excerpt. Enough to run a recipe end to
    end on a fresh machine, not to train a useful model.
    """
    try:
        import stempeg

        audio, rate = stempeg.read_stems(stempeg.example_stem_path())
    except ImportError:
        raise SeparatorError("the example data needs `pip install stempeg` (and ffmpeg)") from None
    except Exception as e:  # stempeg raises bare errors when ffmpeg is missing
        raise SeparatorError(
            f"cannot decode stempeg's example (is ffmpeg installed?): {e}"
        ) from None
    full = {
        n: np.ascontiguousarray(audio[i].T, dtype=np.float32) for i, n in enumerate(STEM_MP4_ORDER)
    }
    half = full["mixture"].shape[1] // 2
    tracks = {
        ("train", "Example - First Half"): {k: v[:, :half] for k, v in full.items()},
        ("train", "Example - Second Half"): {k: v[:, half:][::-1] for k, v in full.items()},
        ("train", MUSDB_VALIDATION[0]): full,
        ("test", "Example - Falcon 69"): full,
    }
    out = Path(out)
    for (subset, name), stems in tracks.items():
        write_track(out / subset / name, stems, int(rate))
    return out
