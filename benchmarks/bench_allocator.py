"""The `separate` command's allocator settings (separator.cli.memory) against glibc's defaults.

One model forward per call, in a worker thread as `separate` runs it, in fresh child processes
that alternate: "system" (`SEPARATOR_MALLOC=system`: transparent huge pages only) and "kept"
(the default: glibc keeps freed memory, one arena). Each child builds the random-weight model,
then times `--calls` forwards of one `--seconds` stereo input; the first call grows the heap, so
the report takes the median of the later calls, with their page faults and system CPU time.

    python3 benchmarks/bench_allocator.py --seconds 8 --calls 2 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "models" / "bs_roformer_viperx_1297.yaml"
KEYS = ("seconds", "faults", "sys_s")


def child(card: Path, seconds: float, calls: int) -> None:
    """Forwards in a worker thread; prints one JSON line per call."""
    import threading

    from separator.cli.memory import keep_freed_memory

    kept = keep_freed_memory()  # before torch: the CLI's process settings
    import resource
    import time

    import torch

    from separator.zoo import build_model, read_card

    torch.manual_seed(0)
    model = build_model(read_card(card)).eval()
    x = 0.1 * torch.randn(1, 2, int(seconds * 44100), generator=torch.Generator().manual_seed(0))

    def work() -> None:
        with torch.inference_mode():
            for _ in range(calls):
                r0 = resource.getrusage(resource.RUSAGE_SELF)
                start = time.perf_counter()
                model(x)
                took = time.perf_counter() - start
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                print(json.dumps({"kept": kept, "seconds": took,
                                  "faults": r1.ru_minflt - r0.ru_minflt,
                                  "sys_s": r1.ru_stime - r0.ru_stime}), flush=True)  # fmt: skip

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()


def measure(side: str, args: argparse.Namespace) -> list[dict]:
    env = {**os.environ, "SEPARATOR_MALLOC": "system" if side == "system" else ""}
    cmd = [sys.executable, __file__, "--child", "--card", str(args.card), "--seconds",
           str(args.seconds), "--calls", str(args.calls)]  # fmt: skip
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--card", type=Path, default=CARD, help="model shape (random weights)")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        return child(args.card, args.seconds, args.calls)
    from machine import machine_info

    print(machine_info(f"{args.card.name}, {args.seconds:g} s input"))
    runs: dict[str, list[dict]] = {"system": [], "kept": []}
    for _ in range(args.repeats):
        for side in runs:
            calls = measure(side, args)
            print(side, calls, flush=True)
            runs[side] += calls[1:] if len(calls) > 1 else calls
    print("\n| malloc | forward (s), median | page faults per forward | system CPU (s) |")
    print("|---|---|---|---|")
    med = {}
    for side, calls in runs.items():
        m = med[side] = {k: statistics.median(c[k] for c in calls) for k in KEYS}
        print(f"| {side} | {m['seconds']:.1f} | {m['faults']:.0f} | {m['sys_s']:.1f} |")
    print(f"\nkept / system: {med['kept']['seconds'] / med['system']['seconds']:.2f}x the time")


if __name__ == "__main__":
    main()
