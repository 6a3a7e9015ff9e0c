"""Pack an excerpt of every rendered track as OGG Vorbis, small enough to travel to a GPU machine
(the device tool carries at most 64 MiB), and unpack it there to WAV for training.

    python3 recipes/default/pack_data.py pack data/default/rendered .gpudata --seconds 8
    python3 recipes/default/pack_data.py unpack .gpudata /tmp/data        # on the GPU machine

Vorbis at quality 0.9 (~63 kbit/s a stereo stem) keeps the targets ~19 dB above the codec noise,
well above the SDRs the model reaches, so the loss is not limited by it.
"""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

STEMS = ("vocals", "drums", "bass", "other")


def _pack_track(src: Path, dest: Path, seconds: float) -> int:
    info = sf.info(str(src / "mixture.wav"))
    n = int(seconds * info.samplerate)
    long = src.name.startswith("hydrogen-")  # drums only: the silent stems cost nothing
    n = min(int(40 * info.samplerate) if long else n, info.frames)
    start = 0 if long else max(0, min(info.frames - n, info.frames // 4))
    dest.mkdir(parents=True, exist_ok=True)
    size = 0
    for stem in STEMS:
        x, rate = sf.read(src / f"{stem}.wav", start=start, frames=n, dtype="float32")
        out = dest / f"{stem}.ogg"
        x = np.clip(x, -1, 1)
        # in blocks: libsndfile's Vorbis encoder overflows its stack on very long single writes
        with sf.SoundFile(out, "w", rate, x.shape[1], format="OGG", subtype="VORBIS",
                          compression_level=0.9) as f:  # fmt: skip
            for i in range(0, len(x), rate):
                f.write(x[i : i + rate])
        size += out.stat().st_size
    return size


def pack(root: Path, out: Path, seconds: float) -> None:
    jobs = []
    for split, secs in (("train", seconds), ("valid", 20.0)):
        for track in sorted((root / split).iterdir()):
            jobs.append((track, out / split / track.name, secs))
    with ProcessPoolExecutor(2) as pool:
        sizes = list(pool.map(_pack_track, *zip(*jobs)))
    print(f"packed {len(jobs)} tracks, {sum(sizes) / 2**20:.1f} MiB")


def _unpack_track(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    stems = {s: sf.read(src / f"{s}.ogg", dtype="float32", always_2d=True) for s in STEMS}
    n = min(len(x) for x, _ in stems.values())
    for stem, (x, rate) in stems.items():
        sf.write(dest / f"{stem}.wav", x[:n], rate, subtype="FLOAT")


def unpack(src: Path, out: Path) -> None:
    tracks = [t for split in ("train", "valid") for t in sorted((src / split).iterdir())]
    dests = [out / t.parent.name / t.name for t in tracks]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_unpack_track, tracks, dests))
    print(f"unpacked {len(tracks)} tracks to {out}")


if __name__ == "__main__":
    if sys.argv[1] == "pack":
        seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 8.0
        pack(Path(sys.argv[2]), Path(sys.argv[3]), seconds)
    else:
        unpack(Path(sys.argv[2]), Path(sys.argv[3]))
