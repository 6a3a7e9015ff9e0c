"""Train the default model within a fixed time on one GPU (the device tool lends ~10 minutes).

    python3 recipes/default/pack_data.py pack data/default/rendered .gpudata --seconds 6   # here
    python3 recipes/default/gpu_train.py .gpudata 420                                       # there

Unpacks the data, measures the seconds per step with a 40-step probe, sets `training.steps` so
the run ends inside the budget, then trains recipes/default/default.yaml with GPU settings
(batch 32, bf16 autocast, 10 loader workers). The exported card, best weights and logs are copied
to $OUT every 15 s, so a run cut short still leaves its best validated weights behind.
"""

from __future__ import annotations

import csv
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from pack_data import unpack

from separator.training.recipe import load_recipe
from separator.training.trainer import train

RECIPE = Path(__file__).parent / "default.yaml"
GPU = [
    "data.root=/tmp/data",
    "data.num_workers=10",
    "training.batch_size=32",
    "training.amp=bf16",
    "training.lr=1.5e-3",
    "training.warmup_steps=200",
    "training.ema_decay=0.999",
    "training.checkpoint_every=1000000",
    "training.log_every=50",
    "validation.max_tracks=9",
]


def _copy_loop(src: Path, dest: Path, stop: threading.Event) -> None:
    while True:
        for name in ("best.safetensors", "separator_default.yaml", "train.csv", "recipe.yaml"):
            if (src / name).is_file():
                shutil.copy(src / name, dest / f".{name}")
                os.replace(dest / f".{name}", dest / name)
        if stop.wait(15):
            return


def main(packed: str, budget: float) -> None:
    start = time.time()
    out = Path(os.environ.get("OUT", "/tmp/out"))
    out.mkdir(parents=True, exist_ok=True)
    unpack(Path(packed), Path("/tmp/data"))
    probe = load_recipe(
        RECIPE,
        [*GPU, "output_dir=/tmp/probe", "training.steps=40", "training.log_every=5",
         "validation.every=1000000", "validation.max_tracks=1", "validation.max_seconds=5"],
    )  # fmt: skip
    train(probe)
    with open("/tmp/probe/train.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["loss"]]
    per_step = statistics.median(float(r["seconds"]) for r in rows[2:])
    left = budget - (time.time() - start)
    steps = int(left * 0.8 / per_step)  # 20% for the five validations and the export
    print(f"probe: {per_step:.3f} s/step; {left:.0f} s left -> {steps} steps", flush=True)
    recipe = load_recipe(
        RECIPE,
        [*GPU, "output_dir=/tmp/run", f"training.steps={steps}",
         f"validation.every={max(50, steps // 5)}"],
    )  # fmt: skip
    stop = threading.Event()
    copier = threading.Thread(target=_copy_loop, args=(Path("/tmp/run"), out, stop))
    Path("/tmp/run").mkdir(parents=True, exist_ok=True)
    copier.start()
    try:
        print(train(recipe), flush=True)
    finally:
        stop.set()
        copier.join()
    print(f"done in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
