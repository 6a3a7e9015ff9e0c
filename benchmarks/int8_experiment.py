"""Experiment: dynamic int8 quantisation of the Linear layers (the issue's `--precision int8`).

Our modules call `F.linear` / `torch.addmm` with weights derived on the fly (norm gains folded in,
residuals fused), so `torch.ao.quantization.quantize_dynamic`, which swaps `nn.Linear` modules,
would not touch the hot path. This script intercepts those two calls instead (a
`TorchFunctionMode`): each weight is quantised once per channel to int8 (cached) and the product
runs in fbgemm's dynamic int8 kernel (activations quantised per call; VNNI where the CPU has it,
AVX2 otherwise). Attention, norms, the band split and the mask estimators' grouped products stay
float32. The rule for keeping it: at least 1.3x faster than bf16, with an output SNR against
fp32 that we report.

    python3 benchmarks/int8_experiment.py --configs kim_mel,bs384 --seconds 4 --repeats 3 \
        --audio "data/default/real/fof/muldjord - armygeddon"
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_precision import build
from machine import machine_info
from overlap_sdr import load_tracks


class DynamicInt8(TorchFunctionMode):
    """F.linear and torch.addmm(c, a, W.t()) through fbgemm's dynamic int8 linear."""

    def __init__(self) -> None:
        super().__init__()
        self.packed: dict[tuple, object] = {}

    def _pack(self, weight: torch.Tensor, bias: torch.Tensor | None):
        key = (weight.data_ptr(), tuple(weight.shape), None if bias is None else bias.data_ptr())
        if key not in self.packed:
            w = weight.detach().float().contiguous()
            scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127
            zero = torch.zeros_like(scale, dtype=torch.long)
            wq = torch.quantize_per_channel(w, scale.double(), zero, 0, torch.qint8)
            self.packed[key] = torch.ops.quantized.linear_prepack(wq, bias)
        return self.packed[key]

    def _linear(self, x, weight, bias=None):
        shape = x.shape
        y = torch.ops.quantized.linear_dynamic(
            x.reshape(-1, shape[-1]).contiguous(), self._pack(weight, bias), True
        )
        return y.view(*shape[:-1], weight.shape[0])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            return self._linear(*args, **kwargs)
        if func is torch.addmm and not kwargs:
            c, a, bt = args
            return self._linear(a, bt.t()) + c
        return func(*args, **kwargs)


def snr(ref: torch.Tensor, est: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - est).pow(2).sum().clamp_min(1e-30)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="kim_mel,bs384")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--audio", type=Path, help="a track folder: real music in, else noise")
    args = ap.parse_args()
    print(machine_info(f"quantized engine {torch.backends.quantized.engine}"))
    print("| config | fp32 s | int8 s | int8 speed-up | output SNR int8 vs fp32 (dB) |")
    print("|---|---|---|---|---|")
    for name in args.configs.split(","):
        torch.manual_seed(0)
        model = build(name)
        n = int(args.seconds * model.sample_rate)
        if args.audio:
            mix = torch.from_numpy(load_tracks([args.audio], 1)[0][2]["mixture"])
            x = mix[None, :, mix.shape[-1] // 3 : mix.shape[-1] // 3 + n].contiguous()
        else:
            x = 0.1 * torch.randn(1, model.audio_channels, n)
        int8 = DynamicInt8()
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        outs = {}
        with torch.inference_mode():
            for rep in range(args.repeats + 1):  # the first round warms up
                for mode in ("fp32", "int8"):
                    start = time.perf_counter()
                    if mode == "int8":
                        with int8:
                            outs[mode] = model(x)
                    else:
                        outs[mode] = model(x)
                    if rep:
                        times[mode].append(time.perf_counter() - start)
        t32, t8 = (statistics.median(times[m]) for m in ("fp32", "int8"))
        print(f"| {name} | {t32:.2f} | {t8:.2f} | {t32 / t8:.2f}x | "
              f"{snr(outs['fp32'], outs['int8']):.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
