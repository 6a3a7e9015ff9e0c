"""Training throughput: steps per second of our BS-RoFormer against lucidrains' `bs-roformer`.

    pip install -e ".[bench]"
    python benchmarks/bench_train.py                  # CPU, fp32
    python benchmarks/bench_train.py --device cuda --amp bf16 --seconds 6 --batch 4 --dim 384

A step is forward + the MSST loss (L1 + multi-resolution STFT) + backward + AdamW, on random
stereo chunks, same config on both sides (`num_residual_streams=1` for the package, which is the
checkpoint architecture). Median of several repeats after a warm-up, in one process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_models import COMMON, machine_info

from separator.training.losses import separation_loss


def steps_per_second(step, repeats: int) -> float:
    step()  # warm-up (allocations, optimizer state)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1.0 / statistics.median(times)


def make_steps(args):
    from bs_roformer import BSRoformer as Reference

    from separator.nn import BSRoformer

    cfg = dict(COMMON, dim=args.dim, depth=args.depth, num_stems=4)
    device = torch.device(args.device)
    ours = BSRoformer(**cfg).to(device).train()
    ref = Reference(**cfg, num_residual_streams=1).to(device).train()
    n = int(args.seconds * 44100)
    x = torch.randn(args.batch, 2, n, device=device)
    y = torch.randn(args.batch, 4, 2, n, device=device)
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def stepper(model, loss_fn):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            with autocast():
                loss = loss_fn(model)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    # The package computes the same MSST objective itself when given the target.
    ref_step = stepper(ref, lambda m: m(x, target=y))
    our_step = stepper(ours, lambda m: separation_loss(m(x), y, m.config))
    return ref_step, our_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    args = parser.parse_args()
    torch.manual_seed(0)
    print(machine_info())
    ref_step, our_step = make_steps(args)
    ref = steps_per_second(ref_step, args.repeats)
    ours = steps_per_second(our_step, args.repeats)
    audio = args.batch * args.seconds
    print(
        f"\nconfig: dim {args.dim}, depth {args.depth}, 4 stems, batch {args.batch} × "
        f"{args.seconds:g} s stereo, {args.device}, amp {args.amp}"
    )
    print(f"{'model':6} {'steps/s':>8} {'s/step':>8} {'audio s/s':>10} {'speed-up':>8}")
    for name, sps in (("ref", ref), ("ours", ours)):
        print(f"{name:6} {sps:8.3f} {1 / sps:8.2f} {sps * audio:10.2f} {sps / ref:7.2f}x")


if __name__ == "__main__":
    main()
