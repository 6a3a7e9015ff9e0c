"""SDR and cost of our overlap/window settings against MSST's default `num_overlap=4`.

For each setting it separates the same tracks with the same model and reports the global SDR
per stem (10·log10(Σs² / Σ(s-ŝ)²) over the whole track, the MDX/MUSDB "global SDR") and how
many model evaluations the setting needed. The acceptance target: the default (overlap 2, Hann)
within 0.05 dB of MSST num_overlap=4 at fewer evaluations.

    # MUSDB18HQ-style folders (mixture.wav + one wav per stem) or .stem.mp4 files:
    python3 benchmarks/overlap_sdr.py --model card.yaml --tracks /data/musdb18hq/test --limit 10
    python3 benchmarks/overlap_sdr.py --model model.ckpt --config config.yaml --tracks a.stem.mp4

`--tiny-random` swaps in a randomly initialised tiny BS-RoFormer to check that the script runs
(its SDRs mean nothing).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from msst_style import msst_demix

from separator.inference.audio import resample
from separator.inference.engine import StreamingEngine

OURS = (1.5, 2.0, 3.0, 4.0)  # overlap = evaluations per sample; 2.0 is the default
MSST = (2, 4)  # num_overlap; 4 is MSST's default
STEMPEG_NAMES = ("mixture", "drums", "bass", "other", "vocals")


def global_sdr(ref: np.ndarray, est: np.ndarray) -> float:
    """10·log10(Σ ref² / Σ (ref - est)²) in dB, over all channels and samples."""
    num = float(np.sum(ref.astype(np.float64) ** 2)) + 1e-9
    den = float(np.sum((ref.astype(np.float64) - est) ** 2)) + 1e-9
    return 10 * np.log10(num / den)


def load_tracks(
    paths: list[Path], limit: int | None
) -> list[tuple[str, int, dict[str, np.ndarray]]]:
    """[(name, rate, {"mixture": (channels, time), stem: ...})] from folders or .stem.mp4 files."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir() and not (p / "mixture.wav").exists():
            found += sorted(q for q in p.iterdir() if q.is_dir() or q.name.endswith(".stem.mp4"))
        else:
            found.append(p)
    tracks = []
    for p in found[:limit]:
        if p.is_dir():
            audio = {q.stem: sf.read(q, dtype="float32", always_2d=True) for q in p.glob("*.wav")}
            rate = audio["mixture"][1]
            tracks.append((p.name, rate, {k: v[0].T for k, v in audio.items()}))
        else:
            import stempeg

            stems, rate = stempeg.read_stems(str(p))
            tracks.append((p.name, int(rate), {n: s.T.astype(np.float32)
                                               for n, s in zip(STEMPEG_NAMES, stems)}))  # fmt: skip
    return tracks


def load(args: argparse.Namespace) -> torch.nn.Module:
    if args.tiny_random:
        from separator.zoo import build_model, read_card

        torch.manual_seed(0)
        cfg = {"audio": {"chunk_size": 44100, "sample_rate": 44100},
               "model": {"dim": 16, "depth": 1, "stereo": True, "num_stems": 4, "heads": 2,
                         "dim_head": 8, "time_transformer_depth": 1, "freq_transformer_depth": 1},
               "training": {"instruments": ["drums", "bass", "other", "vocals"]}}  # fmt: skip
        return build_model(read_card(cfg)).eval()
    from separator.zoo import load_model

    if args.config:  # an MSST YAML with its checkpoint in --model
        return load_model(args.config, args.model).eval()
    return load_model(args.model).eval()


def ours(model, mix: torch.Tensor, overlap: float, batch: int) -> tuple[torch.Tensor, int]:
    engine = StreamingEngine(model, overlap=overlap, batch_size=batch)
    out = torch.cat([engine.push(mix), engine.flush()], dim=-1)
    return out, engine.evaluations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model card / MSST YAML / checkpoint (with --config)")
    ap.add_argument("--config")
    ap.add_argument("--tracks", type=Path, nargs="+", required=True)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None, help="use only the first N seconds")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--tiny-random", action="store_true")
    ap.add_argument("--overlaps", type=float, nargs="+", default=OURS, help="ours")
    ap.add_argument("--num-overlaps", type=int, nargs="+", default=MSST, help="MSST's")
    args = ap.parse_args()
    model = load(args)
    rate = int(model.sample_rate)
    settings = [("ours", o) for o in args.overlaps] + [("msst", n) for n in args.num_overlaps]
    sdr: dict[tuple, list[float]] = {s: [] for s in settings}
    evals: dict[tuple, int] = dict.fromkeys(settings, 0)
    secs: dict[tuple, float] = dict.fromkeys(settings, 0.0)
    for name, track_rate, audio in load_tracks(args.tracks, args.limit):
        if track_rate != rate:
            audio = {k: resample(v.T, track_rate, rate).T for k, v in audio.items()}
        if args.seconds:
            audio = {k: v[:, : int(args.seconds * rate)] for k, v in audio.items()}
        mix = torch.from_numpy(np.ascontiguousarray(audio["mixture"]))
        for s in settings:
            start = time.perf_counter()
            if s[0] == "ours":
                est, n = ours(model, mix, s[1], args.batch_size)
            else:
                est, n = msst_demix(model, mix, num_overlap=s[1], batch_size=args.batch_size)
            secs[s] += time.perf_counter() - start
            evals[s] += n
            per_stem = [global_sdr(audio[stem], est[i].numpy())
                        for i, stem in enumerate(model.stems) if stem in audio]  # fmt: skip
            sdr[s].append(float(np.mean(per_stem)))
            print(f"{name}: {s[0]} {s[1]}: mean SDR {sdr[s][-1]:.3f} dB, {n} evaluations",
                  flush=True)  # fmt: skip
    base = ("msst", 4)
    print("\n| setting | mean SDR (dB) | Δ vs MSST num_overlap=4 | evaluations | time (s) |")
    print("|---|---|---|---|---|")
    for s in settings:
        label = f"ours overlap {s[1]:g}" if s[0] == "ours" else f"MSST num_overlap={s[1]}"
        mean, ref = statistics.mean(sdr[s]), statistics.mean(sdr[base])
        print(f"| {label} | {mean:.3f} | {mean - ref:+.3f} | {evals[s]} | {secs[s]:.1f} |")


if __name__ == "__main__":
    main()
