"""Training data: MUSDB18HQ-layout folders (or MUSDB18 `.stem.mp4` through `musdb`) and random-mix
sampling with augmentation.

Every training example is a pure function of (seed, index): stems drawn from random tracks at
random offsets, random gain, channel swap, polarity inversion, stem dropout and (when asked) a
random EQ or saturation per stem, all from a generator seeded with (seed, index). Any number of
workers, and a resumed run, therefore see exactly the same batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf
import torch

from separator.errors import SeparatorError

MUSDB_STEMS = ("vocals", "drums", "bass", "other")

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
    """One multitrack song: a stem name -> file path map, all at one rate and length."""

    name: str
    files: dict[str, Path]
    frames: int
    sample_rate: int
    channels: int

    def read(self, stem: str, start: int = 0, frames: int = -1) -> np.ndarray:
        """(channels, frames) float32 excerpt of one stem."""
        data, _ = sf.read(
            self.files[stem], start=start, frames=frames, dtype="float32", always_2d=True
        )
        return np.ascontiguousarray(data.T)


def _select(names: Sequence[str], split: str) -> set[str]:
    valid = set(MUSDB_VALIDATION)
    if split == "train":
        return {n for n in names if n not in valid}
    if split == "valid":
        return {n for n in names if n in valid}
    return set(names)


def find_tracks(
    root: str | Path,
    stems: Sequence[str] = MUSDB_STEMS,
    *,
    subset: str = "train",
    split: str | None = None,
    with_mixture: bool = False,
) -> list[Track]:
    """Tracks of a MUSDB18HQ-layout folder: `root/<subset>/<track>/<stem>.wav`.

    split: for subset "train", "train" (without musdb's 14 validation tracks), "valid" (only
    those) or None (all). Raises SeparatorError for an empty folder, a missing stem, or stems
    whose rates, channels or lengths differ.
    """
    base = Path(root) / subset
    if not base.is_dir():
        raise SeparatorError(
            f"{base}: no such folder (expected a MUSDB18HQ layout: "
            f"{Path(root)}/{{train,test}}/<track>/<stem>.wav)"
        )
    dirs = sorted(d for d in base.iterdir() if d.is_dir())
    if split is not None:
        keep = _select([d.name for d in dirs], split)
        dirs = [d for d in dirs if d.name in keep]
    names = list(stems) + (["mixture"] if with_mixture else [])
    tracks = [_track(d, names) for d in dirs]
    if not tracks:
        raise SeparatorError(
            f"{base}: no tracks found" + (f" for split {split!r}" if split else "")
        )
    return tracks


def _track(folder: Path, stems: Sequence[str]) -> Track:
    files = {}
    for stem in stems:
        matches = [folder / f"{stem}{ext}" for ext in (".wav", ".flac")]
        path = next((p for p in matches if p.is_file()), None)
        if path is None:
            raise SeparatorError(f"{folder}: missing stem {stem!r} ({stem}.wav)")
        files[stem] = path
    infos = {}
    for stem, path in files.items():
        try:
            infos[stem] = sf.info(str(path))
        except RuntimeError as e:
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
    return Track(folder.name, files, first.frames, first.samplerate, first.channels)


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


def load_track_arrays(track: Track, stems: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Whole mixture (channels, time) and stems (n, channels, time) of a validation track.

    The mixture file is used when present, else the sum of the stems.
    """
    refs = np.stack([track.read(s) for s in stems])
    mix = track.read("mixture") if "mixture" in track.files else refs.sum(0)
    return mix, refs


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
    names = ("mixture", "drums", "bass", "other", "vocals")  # stem order of .stem.mp4 files
    full = {n: np.ascontiguousarray(audio[i].T, dtype=np.float32) for i, n in enumerate(names)}
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


def write_track(folder: Path, stems: dict[str, np.ndarray], sample_rate: int) -> None:
    """Write {stem: (channels, frames)} as `folder/<stem>.wav` (float32 WAV), MUSDB18HQ style,
    in dict order, each through a temporary file, so an interrupted write leaves no partial stem."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, audio in stems.items():
        tmp = folder / f".{stem}.tmp.wav"
        sf.write(tmp, np.ascontiguousarray(audio.T), sample_rate, subtype="FLOAT")
        tmp.replace(folder / f"{stem}.wav")
