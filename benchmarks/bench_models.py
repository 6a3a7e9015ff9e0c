"""Forward-pass speed of our BS-RoFormer against lucidrains' `bs-roformer` package, same config.

    pip install -e ".[bench]"
    python benchmarks/bench_models.py                 # both sizes, fp32, CPU
    python benchmarks/bench_models.py --sizes small --repeats 3 --profile

One process, an 8-second stereo chunk, `num_residual_streams=1` for the package (hyper-connections
off, the checkpoint architecture). Reports the median time of several repeats, the speed ratio,
GFLOP per audio second (torch.utils.flop_counter, with CPU flash attention counted, which the
counter misses by default) and achieved GFLOP/s as a share of a plain fp32 matmul measured in the
same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import machine_info
from torch.utils.flop_counter import FlopCounterMode

SIZES = {"small": dict(dim=128, depth=6), "large": dict(dim=384, depth=6)}
COMMON = dict(
    stereo=True,
    num_stems=1,
    time_transformer_depth=1,
    freq_transformer_depth=1,
    dim_head=64,
    heads=8,
    stft_n_fft=2048,
    stft_hop_length=441,
    stft_win_length=2048,
    mask_estimator_depth=2,
)
SAMPLE_RATE = 44100
SECONDS = 8.0


def sdpa_flops(q_shape, k_shape, v_shape, *args, **kwargs) -> int:
    """FLOPs of softmax(QK^T)V: two matmuls, 2·n·m·d each (the counter has no CPU-flash rule)."""
    *batch, n, d = q_shape
    m = k_shape[-2]
    dv = v_shape[-1]
    b = 1
    for s in batch:
        b *= s
    return 2 * b * n * m * d + 2 * b * n * m * dv


def count_flops(model, x) -> int:
    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: sdpa_flops}
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(x)
    return counter.get_total_flops()


def time_forward(model, x, repeats: int) -> float:
    with torch.inference_mode():
        model(x)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(repeats: int = 5, n: int = 2048) -> float:
    """GFLOP/s of a plain fp32 square matmul, the machine's practical peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def build(size: str):
    from bs_roformer import BSRoformer as Reference

    from separator.nn import BSRoformer

    cfg = dict(COMMON, **SIZES[size])
    ours = BSRoformer(**cfg).eval()
    ref = Reference(**cfg, num_residual_streams=1).eval()
    return ours, ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,large")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--profile", action="store_true", help="print a torch profiler table of ours"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    print(machine_info())
    x = torch.randn(1, 2, int(SECONDS * SAMPLE_RATE))
    rows = []
    for size in args.sizes.split(","):
        ours, ref = build(size)
        peak = matmul_peak()
        flops = {"ours": count_flops(ours, x), "ref": count_flops(ref, x)}
        t = {"ref": time_forward(ref, x, args.repeats), "ours": time_forward(ours, x, args.repeats)}
        peak = max(peak, matmul_peak())  # measured before and after the models
        for name in ("ref", "ours"):
            gflops = flops[name] / t[name] / 1e9
            rows.append(
                (
                    size,
                    name,
                    t[name],
                    flops[name] / SECONDS / 1e9,
                    gflops,
                    100 * gflops / peak,
                    SECONDS / t[name],
                    t["ref"] / t[name],
                    peak,
                )
            )
        if args.profile:
            with torch.inference_mode(), torch.profiler.profile() as prof:
                ours(x)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
    print(
        f"\n{'config':8} {'model':5} {'s/chunk':>8} {'GFLOP/aud-s':>12} {'GFLOP/s':>8} "
        f"{'% peak':>7} {'x realtime':>10} {'speed-up':>8} {'peak GFLOP/s':>12}"
    )
    for size, name, sec, gf_per_s_audio, gflops, pct, rt, ratio, peak in rows:
        print(
            f"{size:8} {name:5} {sec:8.3f} {gf_per_s_audio:12.1f} {gflops:8.1f} {pct:6.1f}% "
            f"{rt:10.2f} {ratio:7.2f}x {peak:12.1f}"
        )


if __name__ == "__main__":
    main()
