"""Render the first N held-out test tracks of the default model's data, and nothing else.

`recipes/default/build_data.py` renders the whole data set (~35 min, 24 GB). The benchmarks need
only a few test tracks; this draws the same jobs as `build_data.py --chorales 150` (same seed,
same order of random draws, so the same scores, soundfonts, programs and tempi) and renders the
first `--limit` chorales of its test split into `OUT/rendered/test/`.

    sudo apt-get install fluidsynth fluid-soundfont-gm timgm6mb-soundfont
    pip install music21 mido
    python3 benchmarks/render_test_tracks.py data/default --limit 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes" / "default"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import build_data as b
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--limit", type=int, default=4)
    args = ap.parse_args()
    # The arguments of the shipped build (recipes/default/README.md: --chorales 150).
    build = argparse.Namespace(chorales=150, valid=8, test=16, seed=0)
    rng = np.random.default_rng(build.seed)
    jobs, _ = b._chorale_jobs(build, rng)
    done = 0
    for job in (j for j in jobs if j["split"] == "test"):
        if done == args.limit:
            break
        info = b._render_job(job, str(args.out / "rendered"))
        if info["split"] == "test":
            done += 1
            print(f"{info['name']}  {info['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
