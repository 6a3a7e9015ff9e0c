"""Peak RSS and time of `separate` (streaming) against an MSST-style whole-track loop.

Every measurement runs in a fresh child process (peak RSS = the child's ru_maxrss), on a stub
model that obeys the engine protocol, so what is measured is the engine and its I/O, not model
activations. Both paths use the same model, chunk, overlap (2 evaluations per sample), batch
size, stems and output format (16-bit WAV, clamped). Results are medians over repeats.

    python3 benchmarks/engine_memory_speed.py --minutes 1 10 60 --msst-minutes 1 10 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, too
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info

RATE = 44100
CHUNK = 8 * RATE  # the usual 8 s training segment
OVERLAP = 2


class StubModel(nn.Module):
    """Two stems from a fixed random 31-tap filter bank: cheap, deterministic, context-dependent."""

    sample_rate, audio_channels, chunk_size, stems = RATE, 2, CHUNK, ("vocals", "other")

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(2, 4, kernel_size=31, padding=15)

    def forward(self, x: Tensor) -> Tensor:  # (B, 2, T) -> (B, 2, 2, T)
        return self.conv(x).view(x.shape[0], 2, 2, x.shape[-1])


def run_ours(src: Path, out: Path) -> None:
    from separator.inference import Separator

    sep = Separator(StubModel(), device="cpu", overlap=OVERLAP, batch_size=1)
    sep.separate_file(src, output_dir=out, bits=16, clip="clamp", force=True)


def run_msst_style(src: Path, out: Path) -> None:
    """Whole-track loop as MSST's demix does: track, result and counter all in memory."""
    from msst_style import msst_demix

    mix, rate = sf.read(src, dtype="float32", always_2d=True)
    est, _ = msst_demix(StubModel().eval(), torch.from_numpy(mix.T.copy()), num_overlap=OVERLAP)
    (out / src.stem).mkdir(parents=True, exist_ok=True)
    for name, stem in zip(StubModel.stems, est.numpy()):
        sf.write(out / src.stem / f"{name}.wav", stem.T, rate, subtype="PCM_16")


def child(mode: str, src: Path, out: Path) -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    start = time.perf_counter()
    (run_ours if mode == "ours" else run_msst_style)(src, out)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb}))


def make_input(path: Path, minutes: float) -> None:
    """Write `minutes` of stereo noise at 44.1 kHz, one minute at a time (16-bit WAV)."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", RATE, 2, "PCM_16") as f:
        for _ in range(int(minutes)):
            f.write((0.1 * rng.standard_normal((60 * RATE, 2))).astype(np.float32))


def measure(mode: str, src: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--input", str(src), "--out", str(out)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    ap.add_argument("--msst-minutes", type=float, nargs="*", default=[1, 10])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long-repeats", type=int, default=1, help="repeats for inputs >= 30 min")
    ap.add_argument("--child", choices=["ours", "msst"])
    ap.add_argument("--input", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.input, args.out)
    print(machine_info(f"child threads {os.environ.get('BENCH_THREADS', '2')}"))
    print(
        f"stub model, 2 stems, chunk {CHUNK} samples, overlap {OVERLAP}, batch 1, 16-bit WAV out",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            src = Path(tmp) / f"in{int(minutes)}.wav"
            make_input(src, minutes)
            modes = ["ours"] + (["msst"] if minutes in args.msst_minutes else [])
            reps = args.long_repeats if minutes >= 30 else args.repeats
            for mode in modes:
                runs = [measure(mode, src, Path(tmp) / "out") for _ in range(reps)]
                row = {
                    "mode": mode,
                    "minutes": minutes,
                    "repeats": reps,
                    "seconds": statistics.median(r["seconds"] for r in runs),
                    "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
            src.unlink()
    report(rows)


def report(rows: list[dict]) -> None:
    ours = {r["minutes"]: r for r in rows if r["mode"] == "ours"}
    msst = {r["minutes"]: r for r in rows if r["mode"] == "msst"}
    print(
        "\n| input | ours: peak RSS | ours: time | RTF | MSST-style: peak RSS | MSST-style: time |"
        " RSS ratio | time ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for m, r in ours.items():
        b = msst.get(m)
        cells = [
            f"{m:g} min",
            f"{r['peak_rss_mb']:.0f} MB",
            f"{r['seconds']:.1f} s",
            f"{r['seconds'] / (60 * m):.3f}",
        ]
        cells += (
            [
                f"{b['peak_rss_mb']:.0f} MB",
                f"{b['seconds']:.1f} s",
                f"{b['peak_rss_mb'] / r['peak_rss_mb']:.2f}×",
                f"{r['seconds'] / b['seconds']:.2f}×",
            ]
            if b
            else ["-"] * 4
        )
        print("| " + " | ".join(cells) + " |")
    lo, hi = min(ours), max(ours)
    print(
        f"\npeak RSS {hi:g} min / {lo:g} min: "
        f"{ours[hi]['peak_rss_mb'] / ours[lo]['peak_rss_mb']:.3f} (limit 1.25)"
    )


if __name__ == "__main__":
    main()
