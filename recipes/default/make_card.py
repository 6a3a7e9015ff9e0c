"""Evaluate a trained default model with `separator evaluate` and ship it in pretrained/.

    python3 recipes/default/make_card.py runs/default/separator_default.yaml data/default

Runs, for the model and for the best-scaled-mixture baseline:
  rendered test tracks      separator evaluate DATA/rendered --subset test
  the real stempeg excerpt  separator evaluate DATA/real --subset stempeg
  the Frets on Fire songs   separator evaluate DATA/real --subset fof --stems guitar,rest
                            --stem-map guitar=other --stem-map rest=vocals+drums+bass
then measures the speed on this CPU and writes pretrained/separator_default.{safetensors,yaml}.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import yaml

from separator.cli import main as separator_main
from separator.files import atomic_write
from separator.zoo import read_card, save_card
from separator.zoo.cards import weights_entry

EVALS = {
    "rendered_test": ("rendered", "test", []),
    "stempeg": ("real", "stempeg", []),
    "fof": (
        "real",
        "fof",
        [
            "--stems",
            "guitar,rest",
            "--stem-map",
            "guitar=other",
            "--stem-map",
            "rest=vocals+drums+bass",
        ],
    ),
}

NOTES = (
    "A small model trained for hours on a CPU, not for days on GPUs: use a community model "
    "(separator models list) for quality. Its vocals were learned from SYNTHETIC voices (GM "
    "choir/voice patches singing Bach soprano lines and game melodies), its drums from "
    "generated grooves on GM kits and two multi-sampled acoustic kits (AVL) and from Hydrogen "
    "demo songs, its bass and other from GM instruments of three soundfonts: real singing, "
    "real guitars and dense productions are out of its training distribution. rendered_test: "
    "held-out renderings (other scores; FluidR3_GM and TimGM6mb, two of the three training "
    "soundfonts); stempeg: the real 4-stem excerpt shipped with stempeg (6 s); fof: the 8 "
    "Frets on Fire songs, where only 'guitar' (lead guitar, scored against our 'other') and "
    "'rest' (everything else, scored against vocals+drums+bass) exist, so rhythm guitars and "
    "keys in 'rest' count against us. baseline = best scaled mixture (per stem, the mixture "
    "times its optimal gain)."
)


def _summary(folder: Path) -> dict:
    with open(folder / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    return {
        r["stem"]: {"cSDR": round(float(r["cSDR"]), 2), "global": round(float(r["global SDR"]), 2)}
        for r in rows
    } | {"tracks": int(rows[0]["tracks"])}


def evaluate(card: Path, data: Path, out: Path) -> dict:
    results = {}
    for key, (root, subset, extra) in EVALS.items():
        entry = {}
        for who, source in (
            ("model", ["--model", str(card)]),
            ("baseline", ["--baseline", "scaled-mixture"]),
        ):
            folder = out / key / who
            argv = ["evaluate", str(data / root), "--subset", subset, *source, *extra]
            argv += ["-o", str(folder), "--no-plot"]
            if separator_main(argv) != 0:
                sys.exit(f"evaluation failed: separator {' '.join(argv)}")
            entry[who] = _summary(folder)
        entry["tracks"] = entry["model"].pop("tracks")
        entry["baseline"].pop("tracks")
        results[key] = entry
    return results


def speed(card: Path, seconds: float = 60.0) -> dict:
    """Real-time factor of `separate` at the default overlap on this CPU (median of 3)."""
    import torch

    from separator.inference import load_separator

    sep = load_separator(str(card), device="cpu")
    wav = torch.randn(2, int(44100 * seconds)) * 0.1
    sep.separate_tensor(wav[:, : 44100 * 5], 44100)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        sep.separate_tensor(wav, 44100)
        times.append(time.perf_counter() - t)
    t = sorted(times)[1]
    return {
        "realtime_x": round(seconds / t, 1),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "overlap": 2,
    }


def main() -> None:
    card_path, data = Path(sys.argv[1]), Path(sys.argv[2])
    out = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("runs/default_eval")
    results = evaluate(card_path, data, out)
    card = read_card(card_path)
    pretrained = Path(__file__).resolve().parents[2] / "pretrained"
    weights = pretrained / "separator_default.safetensors"
    atomic_write(weights, (card_path.parent / card.weights["file"]).read_bytes())
    rendered = results["rendered_test"]["model"]
    manifest = yaml.safe_load((data / "manifest.json").read_text())  # JSON is YAML
    train = [t for t in manifest["tracks"] if t["split"] == "train"]
    hours = sum(t["seconds"] for t in train) / 3600
    card = dataclasses.replace(
        card,
        weights=weights_entry(weights),
        sdr={
            "benchmark": "held-out rendered tracks, global SDR (dB); full results below",
            **{s: rendered[s]["global"] for s in card.stems},
            **results,
            "speed": speed(card_path),
        },
        source=(
            "Trained by the separator developers with recipes/default/default.yaml on 2 CPU "
            f"cores ({len(train)} rendered tracks, {hours:.2f} h, "
            "built by recipes/default/build_data.py from Debian/PyPI packages only)."
        ),
        license="MIT (the weights); training data licences below",
        training_data=[
            f"{s['package']} {s['version']}: {s['what']} ({s['licence']})"
            for s in manifest["sources"]
        ],
        notes=NOTES,
    )
    save_card(card, pretrained / "separator_default.yaml")  # validated on the way out
    print((pretrained / "separator_default.yaml").read_text())


if __name__ == "__main__":
    main()
