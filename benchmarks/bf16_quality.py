"""What bf16 costs in quality against fp32: SDR of the default model, output SNR of large shapes.

1. The embedded default model on real and rendered tracks: global SDR per stem (the MUSDB
   "global SDR", as in `overlap_sdr.py`) with the engine at its defaults, fp32 against bf16
   autocast, and the bf16 output's SNR against fp32's.
2. Random-weight models of the viperx BS-RoFormer and Kim Mel-RoFormer shapes (their cards in
   `models/`), one chunk of real music: output SNR of bf16 against fp32.

bf16 runs as `precision="bf16"` does (autocast; STFT, masks and iSTFT fp32). On a CPU without
AVX512-BF16/AMX, torch emulates bf16 matrix products in software, ~50x slower than fp32 here;
`--emulate` (the default on such CPUs) computes those products as the hardware would instead:
bf16 operands, float32 products and sums, the result rounded to bf16 (oneDNN's bf16 GEMM). The
only difference to native kernels is the order of the sums. `--check-emulation` compares the two
on a small model.

    python3 benchmarks/bf16_quality.py --tracks data/default/real/stempeg data/default/rendered/test
    python3 benchmarks/bf16_quality.py --large-only --audio data/default/real/fof
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info
from overlap_sdr import global_sdr, load_tracks

from separator.inference.audio import resample
from separator.inference.engine import separate_tensor
from separator.inference.precision import cpu_bf16_native
from separator.zoo import build_model, load_model, read_card

ROOT = Path(__file__).resolve().parents[1]
LARGE = {"viperx BS-RoFormer": "bs_roformer_viperx_1297", "Kim Mel-RoFormer":
         "mel_band_roformer_kim_vocals"}  # fmt: skip
aten = torch.ops.aten
_PRODUCTS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
             aten.linear.default, aten.matmul.default}  # fmt: skip


class EmulateBF16(TorchDispatchMode):
    """bf16 matrix products and attention computed in float32 and rounded to bf16."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        bf16 = any(isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 for a in args)
        if bf16 and func in _PRODUCTS:
            up = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
            return func(*up, **kwargs).to(torch.bfloat16)
        if bf16 and func is aten._scaled_dot_product_flash_attention_for_cpu.default:
            up = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
            out = func(*up, **kwargs)
            return (out[0].to(torch.bfloat16), *out[1:])
        return func(*args, **kwargs)


def bf16_context(emulate: bool):
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
    if emulate:
        stack.enter_context(EmulateBF16())
    return stack


def snr(ref: torch.Tensor, est: torch.Tensor) -> float:
    ref, est = ref.double(), est.double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - est).pow(2).sum().clamp_min(1e-30)))


def default_model_sdr(tracks: list[Path], seconds: float | None, emulate: bool) -> None:
    model = load_model(ROOT / "pretrained" / "separator_default.yaml").eval()
    rate = int(model.sample_rate)
    rows = []
    print("| track | stem | SDR fp32 | SDR bf16 | Δ (dB) | output SNR (dB) |")
    print("|---|---|---|---|---|---|")
    for name, track_rate, audio in load_tracks(tracks, None):
        if track_rate != rate:
            audio = {k: resample(v.T, track_rate, rate).T for k, v in audio.items()}
        if seconds:
            audio = {k: v[:, : int(seconds * rate)] for k, v in audio.items()}
        mix = torch.from_numpy(np.ascontiguousarray(audio["mixture"]))
        fp32 = separate_tensor(model, mix)
        with bf16_context(emulate):
            bf16 = separate_tensor(model, mix)
        for i, stem in enumerate(model.stems):
            if stem not in audio:
                continue
            a = global_sdr(audio[stem], fp32[i].numpy())
            b = global_sdr(audio[stem], bf16[i].numpy())
            rows.append((a, b, snr(fp32[i], bf16[i])))
            print(f"| {name} | {stem} | {a:.3f} | {b:.3f} | {b - a:+.3f} | {rows[-1][2]:.1f} |",
                  flush=True)  # fmt: skip
    a, b, s = (np.mean([r[i] for r in rows]) for i in range(3))
    print(f"| **mean** | | {a:.3f} | {b:.3f} | {b - a:+.3f} | {s:.1f} |")
    print(f"largest loss of one stem: {min(r[1] - r[0] for r in rows):+.3f} dB")


def large_snr(audio_dir: Path, emulate: bool, seconds: float | None) -> None:
    tracks = load_tracks([audio_dir], 1)
    audio = tracks[0][2]
    print("| shape | chunk (s) | output SNR bf16 vs fp32 (dB) |")
    print("|---|---|---|")
    for label, card_name in LARGE.items():
        torch.manual_seed(0)
        model = build_model(read_card(ROOT / "models" / f"{card_name}.yaml")).eval()
        chunk = int(seconds * model.sample_rate) if seconds else int(model.chunk_size)
        mix = torch.from_numpy(np.ascontiguousarray(audio["mixture"]))
        start = mix.shape[-1] // 3  # past any intro
        x = mix[None, :, start : start + chunk]
        with torch.inference_mode():
            ref = model(x)
            with bf16_context(emulate):
                out = model(x).float()
        print(f"| {label} (random weights) | {chunk / model.sample_rate:g} | {snr(ref, out):.1f} |",
              flush=True)  # fmt: skip


def check_emulation() -> None:
    """Torch's software bf16 against the emulation, small model: each vs fp32, and each other."""
    model = load_model(ROOT / "pretrained" / "separator_default.yaml").eval()
    x = 0.1 * torch.randn(1, 2, model.chunk_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(x)
        with bf16_context(False):
            native = model(x).float()
        with bf16_context(True):
            emulated = model(x).float()
    print(f"SNR vs fp32: native {snr(ref, native):.2f} dB, emulated {snr(ref, emulated):.2f} dB; "
          f"native vs emulated {snr(native, emulated):.1f} dB")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracks", type=Path, nargs="*", default=[])
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--audio", type=Path, help="a track folder (or folder of them) for part 2")
    ap.add_argument("--large-seconds", type=float, default=None, help="shorter chunk for part 2")
    ap.add_argument("--emulate", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--check-emulation", action="store_true")
    args = ap.parse_args()
    emulate = not cpu_bf16_native() if args.emulate is None else args.emulate
    print(machine_info(f"bf16 {'emulated as hardware does' if emulate else 'native kernels'}"))
    if args.check_emulation:
        check_emulation()
    if args.tracks:
        default_model_sdr(args.tracks, args.seconds, emulate)
    if args.audio:
        large_snr(args.audio, emulate, args.large_seconds)


if __name__ == "__main__":
    main()
