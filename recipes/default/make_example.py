"""Render the example clip of the README: the first 12 s of J. S. Bach's chorale BWV 10.7 (public
domain; score from the music21 corpus, not used in training or testing), one part per GM
instrument of FluidR3_GM (MIT) plus a generated drum part, exactly as build_data.py renders its
tracks. Our rendering is released under CC0.

    python3 recipes/default/make_example.py examples/bach_bwv10.7.flac
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
import build_data as b

SECONDS = 12.0


def main(out: str) -> None:
    from music21 import corpus

    path = next(str(p) for p in corpus.getComposer("bach") if str(p).endswith("bwv10.7.mxl"))
    rng = np.random.default_rng(107)
    parts, info = b._chorale_events(path, rng, "FluidR3_GM")
    stems = b._level({s: b._render(ev, "FluidR3_GM") for s, ev in parts.items()}, rng)
    n = int(SECONDS * b.RATE)
    mix = sum(x[:, :n] for x in stems.values())
    mix = mix * (0.9 / np.abs(mix).max())
    sf.write(out, mix.T, b.RATE, subtype="PCM_16")
    print(f"wrote {out}: {info}")


if __name__ == "__main__":
    main(sys.argv[1])
