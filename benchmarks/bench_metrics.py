"""BSS Eval v4: separator.metrics against museval.evaluate on one 3-minute, 4-stem stereo track.

Usage: python3 benchmarks/bench_metrics.py [--repeats 3] [--seconds 180]

The track is the stempeg example's real stems (6 s) looped to length; the estimates add
leakage, a delay, filtering and in-band noise. Each measurement runs in a fresh process that
loads the same .npy files; the peak memory is the kernel's peak RSS (reset just before the call)
minus the RSS before the call, i.e. what the call itself adds. Methods are interleaved per
repeat so that they share the machine's load; medians.
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
from machine import machine_info

METHODS = ("museval", "bss_eval", "sdr_only")


def make_track(folder: Path, seconds: float) -> None:
    import scipy.signal
    import stempeg

    audio, rate = stempeg.read_stems(stempeg.example_stem_path())  # (5, time, 2): mix first
    stems = audio[[4, 1, 2, 3]]  # vocals, drums, bass, other
    n = int(seconds * rate)
    ref = np.tile(stems, (1, -(-n // stems.shape[1]), 1))[:, :n]
    rng = np.random.default_rng(0)
    est = 0.9 * ref + 0.15 * np.roll(ref, 1, axis=0)
    est[:, 3:] += 0.2 * ref[:, :-3]
    est = scipy.signal.lfilter([0.8, 0.15, 0.05], [1.0], est, axis=1)
    sos = scipy.signal.butter(8, 0.5, output="sos")
    est += 0.03 * ref.std() * scipy.signal.sosfiltfilt(sos, rng.standard_normal(ref.shape), axis=1)
    np.save(folder / "ref.npy", ref)  # museval layout (sources, time, channels), float64
    np.save(folder / "est.npy", est)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> None:
    """Reset the kernel's peak RSS (VmHWM), so that set-up transients do not count (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(method: str, folder: Path) -> None:
    import warnings

    ref, est = np.load(folder / "ref.npy"), np.load(folder / "est.npy")
    if method == "museval":
        import museval

        def run():
            return museval.evaluate(ref, est, win=44100, hop=44100)
    else:
        from separator.evaluation.metrics import bss_eval, framewise_sdr

        # Our layout is (sources, channels, time): contiguous copies made before timing.
        ref_t = np.ascontiguousarray(ref.transpose(0, 2, 1))
        est_t = np.ascontiguousarray(est.transpose(0, 2, 1))
        fn = bss_eval if method == "bss_eval" else framewise_sdr

        def run():
            return fn(ref_t, est_t, 44100, 44100)

    reset_peak()
    before = rss_bytes()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = run()
    wall = time.perf_counter() - start
    peak = peak_bytes()
    sdr = np.asarray(out[0] if method != "sdr_only" else out)
    print(
        json.dumps(
            {
                "wall_s": wall,
                "peak_mb": (peak - before) / 2**20,
                "median_sdr": float(np.nanmedian(sdr)),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--worker", choices=METHODS)
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.folder)
        return
    import importlib.metadata as md

    print(machine_info(f"numpy {np.__version__}", f"museval {md.version('museval')}"), flush=True)
    results: dict[str, list[dict]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        make_track(Path(tmp), args.seconds)
        for r in range(args.repeats):
            for method in METHODS:
                cmd = [sys.executable, __file__, "--worker", method, "--folder", tmp]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                results[method].append(json.loads(out.strip().splitlines()[-1]))
                print(f"repeat {r} {method}: {results[method][-1]}", flush=True)
    med = {
        m: {k: statistics.median(x[k] for x in v) for k in ("wall_s", "peak_mb")}
        for m, v in results.items()
    }
    base = med["museval"]
    print(f"\n{args.seconds:.0f} s, 4 stereo stems, median of {args.repeats}:")
    print("| method | wall time (s) | speed-up | peak memory (MB) | memory vs museval |")
    print("|---|---|---|---|---|")
    for m, v in med.items():
        print(
            f"| {m} | {v['wall_s']:.2f} | {base['wall_s'] / v['wall_s']:.1f}x | "
            f"{v['peak_mb']:.0f} | {v['peak_mb'] / base['peak_mb']:.3f} |"
        )


if __name__ == "__main__":
    main()
