"""GPU correctness and speed checks, in one run (for a short GPU lease; CI never runs this).

    python3 benchmarks/gpu_check.py [--out DIR]

1. The embedded default model on the example clip: CUDA fp32 against the CPU, bf16 and fp16
   autocast and `torch.compile` against CUDA fp32 (global SDR of the stems, dB).
2. Inference speed on the GPU (real-time factor, median of 3): the default model, and
   MSST-size BS- and Mel-RoFormers with random weights (dim 512 / depth 12 and dim 384 /
   depth 6, 8 s chunks), fp32 and bf16.
3. Training speed of the two MUSDB18HQ recipes' models (steps/s at the recipes' batch and
   chunk, bf16, random data, MSST loss), and `benchmarks/bench_train.py` at the BS recipe's size
   against lucidrains' `bs-roformer` when it is installed.
4. The Trainer on CUDA: the tiny recipe for 30 steps with bf16 and fp16 autocast (the GradScaler
   path) on a small data set written from the example's stems, then `--resume` to 40 steps; the
   exported card separates on CUDA.
5. The host CPU, where it runs bf16 natively (AVX512-BF16/AMX): `bench_precision.py` (fp32 and
   bf16 seconds per chunk, share of the matmul peaks) and `int8_experiment.py` (dynamic int8
   against fp32), and what `precision="auto"` picks for the default model there.

Sections 1-2 also run `precision="auto"` on CUDA and print what it picked (and its one-off
timing). Needs `pip install -e ".[bench]"` plus the package's dependencies.

Prints one report and writes it to `--out/gpu_check.txt`.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from separator.datasets import write_track  # noqa: E402
from separator.evaluation.metrics import sdr  # noqa: E402
from separator.inference import Separator  # noqa: E402
from separator.training.losses import separation_loss  # noqa: E402
from separator.training.recipe import load_recipe  # noqa: E402
from separator.training.trainer import recipe_card, train  # noqa: E402
from separator.zoo import build_model, read_card  # noqa: E402
from separator.zoo import load_model as load_pretrained  # noqa: E402

EXAMPLE = ROOT / "examples" / "bach_bwv10.7.flac"
LINES: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def synced_median(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def check_default_model() -> None:
    say("## 1. default model on the example clip (12 s): agreement as global SDR, dB")
    audio, rate = sf.read(EXAMPLE, dtype="float32", always_2d=True)
    wav = torch.from_numpy(audio.T.copy())
    model = load_pretrained(ROOT / "pretrained" / "separator_default.yaml")
    cpu = Separator(model, device="cpu", precision="fp32").separate_tensor(wav, rate)
    runs = {
        "cuda fp32": dict(device="cuda", precision="fp32"),
        "cuda bf16": dict(device="cuda", precision="bf16"),
        "cuda fp16": dict(device="cuda", precision="fp16"),
        "cuda fp32 compile": dict(device="cuda", precision="fp32", compile=True),
        "cuda auto": dict(device="cuda"),
    }
    ref = None
    for name, kwargs in runs.items():
        t0 = time.perf_counter()
        sep = Separator(load_pretrained(ROOT / "pretrained" / "separator_default.yaml"), **kwargs)
        out = sep.separate_tensor(wav, rate)
        took = time.perf_counter() - t0
        name = f"{name} ({sep.precision})" if name.endswith("auto") else name
        base, against = (cpu, "cpu fp32") if ref is None else (ref, "cuda fp32")
        worst = min(float(sdr(base[s], out[s])) for s in base)
        diff = max((base[s] - out[s]).abs().max().item() for s in base)
        say(f"{name:18s} vs {against}: worst stem SDR {worst:6.1f} dB, max |diff| {diff:.2e}"
            f"  ({took:.1f} s incl. load)")  # fmt: skip
        ref = out if ref is None else ref


def msst_size(arch: str) -> torch.nn.Module:
    if arch == "bs_roformer":  # MSST's viperx BS-RoFormer vocals config sizes
        model = dict(dim=512, depth=12, mask_estimator_depth=2)
    else:  # MSST's Kim Mel-Band RoFormer vocals config sizes
        model = dict(dim=384, depth=6, num_bands=60, mask_estimator_depth=2)
    model.update(stereo=True, num_stems=1, time_transformer_depth=1, freq_transformer_depth=1,
                 dim_head=64, heads=8, stft_n_fft=2048, stft_hop_length=441,
                 stft_win_length=2048, flash_attn=True)  # fmt: skip
    card = read_card({"model": model, "audio": {"chunk_size": 352800, "sample_rate": 44100},
                      "training": {"target_instrument": "vocals"}})  # fmt: skip
    torch.manual_seed(0)
    return build_model(card)


def check_inference_speed() -> None:
    say("\n## 2. inference speed on the GPU: real-time factor (audio s / wall s), median of 3")
    seconds = 60.0
    wav = torch.randn(2, int(seconds * 44100)) * 0.1
    models = {
        "default (dim 64, 2 s chunk)": lambda: load_pretrained(
            ROOT / "pretrained" / "separator_default.yaml"
        ),
        "BS dim 512 depth 12 (8 s)": lambda: msst_size("bs_roformer"),
        "Mel dim 384 depth 6 (8 s)": lambda: msst_size("mel_band_roformer"),
    }
    for name, make in models.items():
        model = make()
        for precision in ("fp32", "bf16", "auto"):
            t0 = time.perf_counter()
            sep = Separator(model, device="cuda", precision=precision, batch_size=4)
            setup = time.perf_counter() - t0  # for auto: the one-off timing (then cached)
            took = synced_median(lambda sep=sep: sep.separate_tensor(wav, 44100))
            goal = "  (goal >= 100x in bf16)" if precision == "bf16" and "512" in name else ""
            say(f"{name:30s} {precision} ({sep.precision}): {seconds / took:7.1f}x real time "
                f"({took:.2f} s for {seconds:.0f} s, overlap 2, batch 4; set-up {setup:.1f} s)"
                f"{goal}")  # fmt: skip
        del model
        torch.cuda.empty_cache()


def check_training_speed() -> None:
    say("\n## 3. training speed of the MUSDB18HQ recipes' models (bf16, random data)")
    for name in ("musdb18hq_bs_roformer", "musdb18hq_mel_roformer"):
        recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml")
        card = recipe_card(recipe)
        torch.manual_seed(0)
        model = build_model(card).cuda().train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        batch, n = recipe.training.batch_size, recipe.audio.chunk_size
        x = torch.randn(batch, 2, n, device="cuda") * 0.1
        y = torch.randn(batch, len(card.stems), 2, n, device="cuda") * 0.05

        def step(model=model, opt=opt, x=x, y=y):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = separation_loss(model(x), y, model.config)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        took = synced_median(step, repeats=10)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        mem = torch.cuda.max_memory_allocated() / 2**30
        say(f"{name}: {params:.1f} M params, batch {batch} x {n / 44100:g} s: {1 / took:.2f} "
            f"steps/s ({took * 1000:.0f} ms/step, {batch / took:.1f} examples/s), peak "
            f"{mem:.1f} GiB")  # fmt: skip
        del model, opt, x, y
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        import bs_roformer  # noqa: F401
    except ImportError:
        say("bench_train.py skipped: bs-roformer is not installed")
        return
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--device", "cuda",
           "--amp", "bf16", "--dim", "192", "--depth", "6", "--batch", "4", "--seconds", "6",
           "--repeats", "10"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    say("$ python3 benchmarks/bench_train.py " + " ".join(cmd[2:]))
    for line in (res.stdout + res.stderr).strip().splitlines()[-4:]:
        say(line)


def small_dataset(root: Path) -> None:
    """Eight 6 s tracks from the example's stems (rolled and re-gained so tracks differ)."""
    stems = {}
    for s in ("vocals", "drums", "bass", "other"):
        x, rate = sf.read(ROOT / "examples" / "separated" / "bach_bwv10.7" / f"{s}.flac",
                          dtype="float32", always_2d=True)  # fmt: skip
        stems[s] = x.T
    rng = np.random.default_rng(0)
    for i in range(8):
        split = "valid" if i >= 6 else "train"
        shift = int(rng.integers(0, stems["vocals"].shape[1]))
        track = {s: np.roll(x, shift, axis=1)[:, : 6 * rate] * rng.uniform(0.6, 1.2)
                 for s, x in stems.items()}  # fmt: skip
        track["mixture"] = sum(track.values())
        write_track(root / split / f"track{i}", track, rate)


def check_trainer() -> None:
    say("\n## 4. the Trainer on CUDA (tiny recipe, example-stem data)")
    data = Path("/tmp/gpu_check_data")
    small_dataset(data)
    common = [f"data.root={data}", "data.split=null", "validation.subset=valid",
              "validation.split=null", "training.log_every=5", "validation.every=15",
              "training.checkpoint_every=10"]  # fmt: skip
    for amp in ("bf16", "fp16"):
        out = Path(f"/tmp/gpu_check_{amp}")
        recipe = load_recipe(ROOT / "recipes" / "tiny_cpu.yaml",
                             [*common, f"output_dir={out}", f"training.amp={amp}",
                              "training.steps=30"])  # fmt: skip
        t0 = time.perf_counter()
        state = train(recipe)
        resumed = train(load_recipe(ROOT / "recipes" / "tiny_cpu.yaml",
                                    [*common, f"output_dir={out}", f"training.amp={amp}",
                                     "training.steps=40"]), resume=True)  # fmt: skip
        took = time.perf_counter() - t0
        with open(out / "train.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("loss")]
        losses = [float(r["loss"]) for r in rows]
        steps = [int(r["step"]) for r in rows]
        finite = all(np.isfinite(losses))
        cards = sorted(out.glob("*.yaml"))
        card = next((c for c in cards if c.name != "recipe.yaml"), None)
        sdr = "no card"
        if card is not None:
            model = load_pretrained(card)
            x, rate = sf.read(data / "valid" / "track6" / "mixture.wav", dtype="float32",
                              always_2d=True)  # fmt: skip
            est = Separator(model, device="cuda").separate_tensor(torch.from_numpy(x.T.copy()),
                                                                  rate)  # fmt: skip
            sdr = f"card {card.name} separates on cuda: {len(est)} stems, finite " + str(
                all(torch.isfinite(v).all().item() for v in est.values())
            )
        say(f"amp {amp}: steps logged {steps[0]}..{steps[-1]} (no repeats: "
            f"{len(steps) == len(set(steps))}), loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
            f"all finite {finite}; state {state.get('step')} -> {resumed.get('step')}, best "
            f"{resumed.get('best_sdr')}; {took:.0f} s; {sdr}")  # fmt: skip


def check_host_cpu() -> None:
    """Issue 19's CPU goals where this machine's CPU runs bf16 natively (the 2-core dev machine
    does not): bf16 share of the bf16 matmul peak, auto's choice, int8 against bf16."""
    from separator.inference.precision import cpu_bf16_native

    say("\n## 5. the host CPU: bf16 and int8 (issue 19, sections 1-3)")
    if not cpu_bf16_native():
        say("skipped: this CPU has no AVX512-BF16/AMX")
        return
    bench = ROOT / "benchmarks"
    for cmd in (
        ["bench_precision.py", "--configs", "kim_mel,bs384,default", "--seconds", "4",
         "--repeats", "3"],
        ["int8_experiment.py", "--configs", "kim_mel,bs384", "--seconds", "4", "--repeats", "3"],
    ):  # fmt: skip
        res = subprocess.run([sys.executable, str(bench / cmd[0]), *cmd[1:]], capture_output=True,
                             text=True, timeout=300, cwd=ROOT)  # fmt: skip
        say("$ python3 benchmarks/" + " ".join(cmd))
        for line in (res.stdout + res.stderr[-2000:]).strip().splitlines():
            if not line.startswith(" ") and "Warning" not in line:
                say(line)
    model = load_pretrained(ROOT / "pretrained" / "separator_default.yaml")
    t0 = time.perf_counter()
    sep = Separator(model, device="cpu")
    say(f"default model on this CPU: auto picks {sep.precision} ({time.perf_counter() - t0:.1f} s "
        "for the one-off timing)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device")
    props = torch.cuda.get_device_properties(0)
    say(f"# gpu_check: {props.name}, {props.total_memory / 2**30:.0f} GiB, torch "
        f"{torch.__version__}, CUDA {torch.version.cuda}, python "
        f"{sys.version.split()[0]}")  # fmt: skip
    failed = 0
    checks = (check_default_model, check_inference_speed, check_training_speed, check_trainer,
              check_host_cpu)  # fmt: skip
    for check in checks:
        t0 = time.perf_counter()
        try:
            check()
        except Exception:
            failed += 1
            say(f"FAILED {check.__name__}:\n{traceback.format_exc()}")
        say(f"({check.__name__}: {time.perf_counter() - t0:.0f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.txt").write_text("\n".join(LINES) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
