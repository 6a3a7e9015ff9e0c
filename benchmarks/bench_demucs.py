"""Demucs: `separate` against the `demucs` package (4.1.0) on the same htdemucs-size model.

One random-weight package with the real `htdemucs` structure (the kwargs of our `htdemucs` card,
segment 39/5 s; ~42M parameters, fp16 state, written the way demucs writes its releases) and
real audio (the Fret's on Fire songs that Debian ships, each song.ogg + guitar.ogg mixed, played
one after another; else stempeg's example track looped). Both sides run with their defaults,
which are equal: shifts 1 (demucs's offset drawn from `random` is patched to ours, seed 0),
overlap 0.25, the model's segment, the mixture normalisation of `demucs.api.Separator`, float32
output, no clipping.

- ours: `separate IN --model PKG.th --float32 --clip none` (the CLI: reads, streams, writes);
- demucs: `demucs.api.Separator(PKG's signature, repo=FOLDER).separate_tensor` on the file read
  with soundfile, stems written with soundfile (demucs's own CLI needs torchaudio for its I/O,
  which this project never installs).

Every measurement is a fresh child process (peak RSS = its ru_maxrss; wall time from before the
model is loaded to the last stem written); ours and demucs alternate, median of `--repeats`.
The long input (`--long-minutes`) runs once per side. Outputs are compared sample by sample.

    python3 benchmarks/bench_demucs.py --seconds 60 --long-minutes 10 --repeats 3
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, too
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

RATE = 44100
SIG = "955717e8"  # htdemucs's signature; the file name's second half is the sha256 prefix
SONGS = "/usr/share/games/fretsonfire/data/songs/*/*/song.ogg"


# --- inputs --------------------------------------------------------------------------------------
def audio_sources() -> list[list[str]]:
    """Groups of files mixed into one piece each (Fret's on Fire: song + guitar); [] if none."""
    songs = sorted(glob.glob(SONGS))
    return [[s, *glob.glob(os.path.join(os.path.dirname(s), "guitar.ogg"))] for s in songs]


def pieces():
    """Endless (frames, 2) float32 blocks of real music at 44.1 kHz."""
    groups = audio_sources()
    while True:
        if not groups:  # stempeg's example (6 s of a real mixture), looped
            import stempeg

            audio, rate = stempeg.read_stems(stempeg.example_stem_path())
            assert rate == RATE
            yield audio[0].astype(np.float32)
            continue
        for group in groups:
            tracks = [sf.read(p, dtype="float32", always_2d=True)[0] for p in group]
            n = min(len(t) for t in tracks)
            yield (sum(t[:n] for t in tracks) / len(tracks)).astype(np.float32)


def write_input(path: Path, seconds: float) -> None:
    """`seconds` of real music as a float WAV, written piece by piece."""
    left = int(seconds * RATE)
    with sf.SoundFile(path, "w", RATE, 2, "FLOAT") as f:
        for piece in pieces():
            f.write(piece[:left])
            left -= min(left, len(piece))
            if not left:
                return


def write_package(folder: Path) -> Path:
    """A random-weight package with htdemucs's structure, as demucs writes its releases."""
    from demucs.htdemucs import HTDemucs

    from separator.zoo import all_cards

    kwargs = dict(all_cards()["htdemucs"].model["kwargs"], segment=Fraction(39, 5))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HTDemucs(**kwargs)
    package = {
        "klass": HTDemucs, "args": (), "kwargs": kwargs,
        "state": {k: v.half() for k, v in model.state_dict().items()},
        "training_args": {"model": "htdemucs"}, "metrics": (None, None),
    }  # fmt: skip
    buffer = io.BytesIO()
    torch.save(package, buffer)
    body = buffer.getvalue()
    path = folder / f"{SIG}-{hashlib.sha256(body).hexdigest()[:8]}.th"
    path.write_bytes(body)
    return path


# --- the two sides (child processes) -------------------------------------------------------------
def run_ours(src: Path, package: Path, out: Path, offset: int) -> None:
    from separator.cli import separate_main

    argv = [str(src), "--model", str(package), "-o", str(out), "--filename", "{stem}.{ext}",
            "--float32", "--clip", "none", "--force", "-q"]  # fmt: skip
    if separate_main(argv) != 0:
        raise SystemExit("separate failed")


def run_demucs(src: Path, package: Path, out: Path, offset: int) -> None:
    from demucs.api import Separator

    random.randint = lambda a, b: offset  # demucs draws its shift here; ours is `offset`
    sep = Separator(model=SIG, repo=package.parent, device="cpu", shifts=1, overlap=0.25)
    wav, rate = sf.read(src, dtype="float32", always_2d=True)
    _, stems = sep.separate_tensor(torch.from_numpy(wav.T.copy()), rate)
    del wav
    out.mkdir(parents=True, exist_ok=True)
    for name, stem in stems.items():
        sf.write(out / f"{name}.wav", stem.numpy().T, rate, subtype="FLOAT")


def child(mode: str, src: Path, package: Path, out: Path, offset: int, threads: int) -> None:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    (run_ours if mode == "ours" else run_demucs)(src, package, out, offset)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb}))


def measure(mode: str, src: Path, package: Path, out: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--input", str(src), "--package",
           str(package), "--out", str(out), "--offset", str(args.offset),
           "--threads", str(args.threads)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{mode} child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def max_diff(a: Path, b: Path) -> float:
    """Largest |a - b| over every stem file of two output folders (read in blocks)."""
    worst = 0.0
    for stem in sorted(p.name for p in a.glob("*.wav")):
        blocks = zip(sf.blocks(a / stem, 1 << 20, dtype="float32"),
                     sf.blocks(b / stem, 1 << 20, dtype="float32"))  # fmt: skip
        for x, y in blocks:
            worst = max(worst, float(np.abs(x - y).max()))
        assert sf.info(a / stem).frames == sf.info(b / stem).frames, stem
    return worst


# --- driver --------------------------------------------------------------------------------------
def run_length(tmp: Path, package: Path, seconds: float, repeats: int, sides, args) -> list[dict]:
    src = tmp / f"in{int(seconds)}.wav"
    write_input(src, seconds)
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for r in range(repeats):
        order = sides if r % 2 == 0 else sides[::-1]  # alternate who runs first
        for side in order:
            runs[side].append(measure(side, src, package, tmp / side, args))
            print(
                json.dumps({"side": side, "seconds_of_audio": seconds, **runs[side][-1]}),
                flush=True,
            )
    diff = max_diff(tmp / "ours", tmp / "demucs") if len(sides) == 2 else None
    src.unlink()
    rows = []
    for side in sides:
        row = {"side": side, "audio_s": seconds, "repeats": repeats,
               "wall_s": statistics.median(x["seconds"] for x in runs[side]),
               "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in runs[side]),
               "max_abs_diff": diff}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def report(rows: list[dict]) -> None:
    print("\n| input | side | wall time | RTF | peak RSS | max abs diff ours vs demucs |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        rtf = r["wall_s"] / r["audio_s"]
        print(f"| {r['audio_s'] / 60:g} min | {r['side']} | {r['wall_s']:.1f} s | {rtf:.3f} | "
              f"{r['peak_rss_mb']:.0f} MB | {diff} |")  # fmt: skip
    by = {(r["side"], r["audio_s"]): r for r in rows}
    short = min(r["audio_s"] for r in rows)
    long = max(r["audio_s"] for r in rows)
    if ("demucs", short) in by:
        ratio = by[("ours", short)]["wall_s"] / by[("demucs", short)]["wall_s"]
        print(f"\ntime ours / demucs at {short:g} s: {ratio:.2f}x")
    for side in ("ours", "demucs"):
        if (side, short) in by and (side, long) in by and long != short:
            grow = by[(side, long)]["peak_rss_mb"] / by[(side, short)]["peak_rss_mb"]
            print(f"{side}: peak RSS at {long / 60:g} min / {short / 60:g} min: {grow:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--long-minutes", type=float, default=10, help="0: skip the long input")
    ap.add_argument("--long-demucs", action=argparse.BooleanOptionalAction, default=True,
                    help="run demucs on the long input too (it holds the whole track)")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", choices=["ours", "demucs"])
    ap.add_argument("--input", type=Path)
    ap.add_argument("--package", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--offset", type=int, default=None)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.input, args.package, args.out, args.offset, args.threads)
    from separator.inference.apply_model import shift_offsets

    args.offset = shift_offsets(1, 1, RATE // 2, None, seed=0)[0][0]  # the CLI's seed 0
    print(machine_info(f"child threads {args.threads}"))
    source = "Fret's on Fire songs" if audio_sources() else "stempeg example, looped"
    print(f"random-weight htdemucs package, {source}, shifts 1 (offset {args.offset}), "
          "overlap 0.25, float32 WAV out", flush=True)  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        package = write_package(tmp)
        rows += run_length(tmp, package, args.seconds, args.repeats, ["ours", "demucs"], args)
        if args.long_minutes:
            sides = ["ours", "demucs"] if args.long_demucs else ["ours"]
            rows += run_length(tmp, package, 60 * args.long_minutes, 1, sides, args)
    report(rows)


if __name__ == "__main__":
    main()
