"""Forward-pass time of RoFormer shapes in fp32 and bf16, as a share of the matmul peak.

For each config: seconds per chunk in fp32 and under bf16 autocast (what `--precision bf16`
runs), interleaved, median of `--repeats` after a warm-up; GFLOP counted by
`torch.utils.flop_counter` with CPU flash attention added (the counter has no rule for it);
and the achieved rate as a share of a plain 2048² matmul in the same dtype, measured in the same
run. `--profile` prints the bf16 profile (self time per op). The goal of the issue: bf16 at
>= 50% of the bf16 matmul rate on dim-384 and larger configs.

bf16 numbers mean something only where the CPU runs bf16 natively (AVX512-BF16 or AMX; the script
says which); elsewhere torch emulates bf16 products in software and they are ~50x slower than fp32.

    python3 benchmarks/bench_precision.py --configs kim_mel,bs384 --seconds 4 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import COMMON, count_flops
from machine import machine_info

from separator.inference.precision import cpu_bf16_native
from separator.zoo import build_model, read_card

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "default": ROOT / "pretrained" / "separator_default.yaml",
    "kim_mel": ROOT / "models" / "mel_band_roformer_kim_vocals.yaml",
    "viperx_bs": ROOT / "models" / "bs_roformer_viperx_1297.yaml",
    "bs384": dict(COMMON, dim=384, depth=6),  # bench_models.py's large config
}


def build(name: str) -> torch.nn.Module:
    spec = CONFIGS[name]
    if isinstance(spec, dict):
        from separator.nn import BSRoformer

        model = BSRoformer(**spec)
        model.set_io(sample_rate=44100, stems=None, chunk_size=8 * 44100)
        return model.eval()
    return build_model(read_card(spec)).eval()


def matmul_rate(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def run(model, x, bf16: bool) -> float:
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="kim_mel,bs384")
    ap.add_argument("--seconds", type=float, default=4.0, help="chunk length")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    native = cpu_bf16_native()
    print(machine_info(f"bf16 {'native' if native else 'EMULATED (no AVX512-BF16/AMX)'}"))
    peak = {"fp32": matmul_rate(torch.float32)}
    peak["bf16"] = matmul_rate(torch.bfloat16) if native else float("nan")
    print(f"matmul 2048²: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    print("| config | fp32 s | bf16 s | speed-up | GFLOP | fp32 % of peak | bf16 % of peak |")
    print("|---|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        torch.manual_seed(0)
        model = build(name)
        x = torch.randn(1, model.audio_channels, int(args.seconds * model.sample_rate))
        flops = count_flops(model, x)
        times: dict[bool, list[float]] = {False: [], True: []}
        for bf16 in (False, True) if native else (False,):
            run(model, x, bf16)  # warm-up
        for _ in range(args.repeats):
            for bf16 in (False, True) if native else (False,):
                times[bf16].append(run(model, x, bf16))
        t32 = statistics.median(times[False])
        t16 = statistics.median(times[True]) if native else float("nan")
        print(f"| {name} | {t32:.2f} | {t16:.2f} | {t32 / t16:.2f}x | {flops / 1e9:.0f} | "
              f"{100 * flops / t32 / 1e9 / peak['fp32']:.0f}% | "
              f"{100 * flops / t16 / 1e9 / peak['bf16']:.0f}% |", flush=True)  # fmt: skip
        if args.profile and native:
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
                with torch.profiler.profile() as prof:
                    model(x)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
