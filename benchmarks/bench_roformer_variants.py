"""Forward speed of our 2025-26 RoFormer variants and Conformers against MSST's own classes.

    python3 benchmarks/bench_roformer_variants.py                  # every case, fp32, CPU
    python3 benchmarks/bench_roformer_variants.py --cases bs_conformer --repeats 5 --profile

MSST (ccc011a, else HEAD) is exported from the mirror at run time (see `msst_reference.py` for
its dependencies). Each case builds MSST's class from a real MSST config (tests/fixtures/
msst_configs) with the options it names switched on, copies its weights (perturbed by N(0, 0.02)
so that zero-initialised gates and streams do something) into ours with `strict=True`, checks
that the outputs agree (which also warms both up), then times `forward` under
`torch.inference_mode`, the two models interleaved, median of `--repeats`, one process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from machine import machine_info
from msst_reference import msst_classes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIGS = ROOT / "tests" / "fixtures" / "msst_configs"
SAMPLE_RATE = 44100
# name -> (model_type, MSST config, keys set on top of it)
CASES = {
    "bs_roformer+pope": ("bs_roformer", "config_vocals_bs_roformer.yaml", {"use_pope": True}),
    "mel_band_roformer+pope": (
        "mel_band_roformer",
        "config_vocals_mel_band_roformer.yaml",
        {"use_pope": True},
    ),
    "bs_roformer_experimental VRL": (
        "bs_roformer_experimental",
        "config_vocals_bs_roformer.yaml",
        {"use_value_residual_learning": True, "num_residual_streams": 1},
    ),
    "bs_roformer_experimental VRL 2-streams": (
        "bs_roformer_experimental",
        "config_vocals_bs_roformer.yaml",
        {"use_value_residual_learning": True, "num_residual_streams": 2},
    ),
    "mel_band_roformer_experimental VRL 2-streams": (
        "mel_band_roformer_experimental",
        "config_vocals_mel_band_roformer.yaml",
        {"use_value_residual_learning": True, "num_residual_streams": 2},
    ),
    "bs_conformer": ("bs_conformer", "config_vocals_bs_conformer.yaml", {}),
    "mel_band_conformer": ("mel_band_conformer", "config_vocals_mel_band_conformer.yaml", {}),
}


def model_section(file: str, overrides: dict, depth: int | None) -> dict:
    model = yaml.load((CONFIGS / file).read_text(), Loader=yaml.FullLoader)["model"]
    model = {k: v for k, v in model.items() if k != "sage_attention"}  # ccc011a refuses it
    model.update(overrides)
    if depth:
        model["depth"] = depth
    return model


def perturbed_state(ref: torch.nn.Module) -> dict:
    out = {}
    for k, v in ref.state_dict().items():
        if v.is_floating_point():
            noise = torch.randn_like(v) * 0.02
            v = v + (noise.abs() if k.endswith("running_var") else noise)
        out[k] = v
    return out


def build(family: str, model: dict, classes: dict):
    from separator.nn import FAMILIES

    ref = classes[family](**model).eval()
    ref.load_state_dict(perturbed_state(ref), strict=True)
    ours = FAMILIES[family].build(
        model,
        sample_rate=SAMPLE_RATE,
        stems=[f"s{i}" for i in range(model.get("num_stems", 1))],
        chunk_size=8 * SAMPLE_RATE,
    )
    ours.eval().load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def max_difference(ours, ref, x) -> float:
    with torch.inference_mode():
        a, b = ours(x), ref(x)
    if b.dim() == 3:  # the reference drops the stem axis of one-stem models
        b = b.unsqueeze(1)
    return float((a[..., : b.shape[-1]] - b).abs().max())


def interleaved_times(ours, ref, x, repeats: int) -> tuple[float, float]:
    times = {"ours": [], "ref": []}
    with torch.inference_mode():  # warmed up by `max_difference`
        for i in range(repeats):
            order = (("ref", ref), ("ours", ours)) if i % 2 else (("ours", ours), ("ref", ref))
            for name, model in order:
                t0 = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - t0)
    return statistics.median(times["ours"]), statistics.median(times["ref"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="stereo chunk length")
    parser.add_argument("--depth", type=int, default=None, help="override every config's depth")
    parser.add_argument("--profile", action="store_true", help="profile ours once per case")
    args = parser.parse_args()
    classes, commit = msst_classes()
    print(machine_info(f"MSST {commit}", f"{args.seconds:g} s chunk", f"{args.repeats} repeats"))
    torch.manual_seed(0)
    x = torch.randn(1, 2, int(args.seconds * SAMPLE_RATE))
    rows = []
    for name in args.cases.split(","):
        family, file, overrides = CASES[name]
        model = model_section(file, overrides, args.depth)
        ours, ref = build(family, model, classes)
        diff = max_difference(ours, ref, x)
        t_ours, t_ref = interleaved_times(ours, ref, x, args.repeats)
        shape = f"dim {model['dim']}, depth {model['depth']}"
        rows.append((name, shape, t_ref, t_ours, t_ref / t_ours, diff))
        print(f"{name}: MSST {t_ref:.2f} s, ours {t_ours:.2f} s, diff {diff:.1e}", flush=True)
        if args.profile:
            with torch.inference_mode(), torch.profiler.profile() as prof:
                ours(x)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        del ours, ref
    print("\n| case | config | MSST s | ours s | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|")
    for name, shape, t_ref, t_ours, ratio, diff in rows:
        print(f"| {name} | {shape} | {t_ref:.2f} | {t_ours:.2f} | {ratio:.2f}× | {diff:.1e} |")


if __name__ == "__main__":
    main()
