"""Which overlap-add window reaches MSST's `num_overlap=4` SDR at half its model evaluations?

The model runs once on a fine grid of chunk starts (every `chunk / grid` samples, zero padding at
the track's ends as in our engine); every candidate (window shape, step a multiple of the grid)
is then an overlap-add of a subset of those chunk outputs, so trying many windows costs no more
model evaluations. A step of `m` grid units has `m` phases (which grid starts it uses); the SDR
of a candidate is averaged over its phases, so a candidate is not judged by one lucky alignment.
Samples are scored as soon as no later chunk can touch them (memory stays bounded).

MSST's own loop (`msst_style.msst_demix`: reflect padding, flat window with linear fades of
chunk/10) runs beside it at `num_overlap` 2 and 4 on the same audio. Scores are the mean over
tracks of the mean global SDR over stems, the MUSDB "global SDR" of `overlap_sdr.py`.

    python3 benchmarks/render_test_tracks.py data/default --limit 4     # rendered test tracks
    python3 benchmarks/window_search.py --model pretrained/separator_default.yaml \
        --tracks data/default/real/stempeg data/default/real/fof data/default/rendered/test \
        --seconds 30 --grid 4
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info
from msst_style import msst_demix
from overlap_sdr import load_tracks

from separator.inference.audio import resample
from separator.zoo import load_model


def ramp(n: int, shape: str) -> torch.Tensor:
    """n fade-in weights in (0, 1): sample centres, linear or raised-cosine."""
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return t if shape == "linear" else torch.sin(t * (math.pi / 2)) ** 2


def window(chunk: int, fade: int, shape: str, dead: int = 0) -> torch.Tensor:
    """Flat top, `fade`-sample fades (after `dead` near-zero samples) at both ends."""
    w = torch.ones(chunk, dtype=torch.float64)
    if fade:
        edge = torch.cat([torch.full((dead,), 1e-6, dtype=torch.float64), ramp(fade, shape)])
        w[: len(edge)] = edge
        w[chunk - len(edge) :] = edge.flip(0)
    return w.float()


def candidates(chunk: int, grid: int) -> dict[str, tuple[int, torch.Tensor]]:
    """{label: (step in grid units, window)}: shapes at overlap 2, references at overlap 4."""
    half, g = grid // 2, chunk // grid
    out = {}
    for m, tag in ((half, "overlap 2"), (max(1, grid // 4), "overlap 4")):
        step = m * g
        fade = min(chunk - step, chunk // 2)
        out[f"{tag}: raised-cosine fades of {fade / chunk:.2f} (current)"] = (
            m, window(chunk, fade, "cosine"))  # fmt: skip
        for frac in (0.02, 0.05, 0.1, 0.2) if m == half else (0.05, 0.1):
            for shape in ("linear", "cosine"):
                out[f"{tag}: flat, {shape} fades of {frac:.2f}"] = (
                    m, window(chunk, round(frac * chunk), shape))  # fmt: skip
        if m == half:
            for dead, frac in ((0.05, 0.1),):
                w = window(chunk, round(frac * chunk), "cosine", round(dead * chunk))
                out[f"{tag}: flat, {dead:.2f} off then cosine fades of {frac:.2f}"] = (m, w)
    return out


def fine_grid(model, mix: torch.Tensor, grid: int, batch: int):
    """Yield (start, outputs (stems, channels, chunk)) for starts j·chunk/grid - chunk, j >= 1."""
    chunk = int(model.chunk_size)
    g = chunk // grid
    length = mix.shape[-1]
    padded = torch.nn.functional.pad(mix, (chunk, chunk))
    starts = [j * g - chunk for j in range(1, (length - 1 + chunk) // g + 1)]
    with torch.inference_mode():
        for b in range(0, len(starts), batch):
            group = starts[b : b + batch]
            x = torch.stack([padded[:, s + chunk : s + 2 * chunk] for s in group])
            yield from zip(group, model(x).float())


def score_candidates(model, mix, refs: np.ndarray, cands, grid: int, batch: int):
    """{label: mean over phases of the mean global SDR over stems}, and evaluations per phase."""
    chunk = int(model.chunk_size)
    g = chunk // grid
    length = mix.shape[-1]
    n_stems, channels = refs.shape[0], refs.shape[1]
    refs_t = torch.from_numpy(refs).double()
    # Per (label, phase): accumulators over [0, length) and squared-error sums per stem.
    acc = {(k, r): torch.zeros(n_stems, channels, length, dtype=torch.float64)
           for k, (m, _) in cands.items() for r in range(m)}  # fmt: skip
    norm = {key: torch.zeros(length, dtype=torch.float64) for key in acc}
    evals = dict.fromkeys(acc, 0)
    for start, y in fine_grid(model, mix, grid, batch):
        j = (start + chunk) // g
        lo, hi = max(start, 0), min(start + chunk, length)
        for k, (m, w) in cands.items():
            key = (k, j % m)
            w_part = w[lo - start : hi - start].double()
            acc[key][..., lo:hi] += y[..., lo - start : hi - start].double() * w_part
            norm[key][lo:hi] += w_part
            evals[key] += 1
    out, cost = {}, {}
    for k, (m, _) in cands.items():
        sdrs = []
        for r in range(m):
            est = acc[(k, r)] / norm[(k, r)]
            err = ((refs_t - est) ** 2).sum(dim=(1, 2))
            sig = (refs_t**2).sum(dim=(1, 2))
            sdrs.append(float((10 * torch.log10((sig + 1e-9) / (err + 1e-9))).mean()))
        out[k] = statistics.mean(sdrs)
        cost[k] = statistics.mean(evals[(k, r)] for r in range(m))
    return out, cost


def msst_scores(model, mix, refs: np.ndarray, batch: int) -> tuple[dict, dict]:
    out, cost = {}, {}
    for n in (2, 4):
        est, evals = msst_demix(model, mix, num_overlap=n, batch_size=batch)
        err = ((refs - est.double().numpy()) ** 2).sum(axis=(1, 2))
        sig = (refs**2).sum(axis=(1, 2))
        out[f"MSST num_overlap={n}"] = float(np.mean(10 * np.log10((sig + 1e-9) / (err + 1e-9))))
        cost[f"MSST num_overlap={n}"] = evals
    return out, cost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pretrained/separator_default.yaml")
    ap.add_argument("--tracks", type=Path, nargs="+", required=True)
    ap.add_argument("--seconds", type=float, default=30.0, help="first N seconds of each track")
    ap.add_argument("--grid", type=int, default=4, help="chunk starts per chunk length")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_info(f"grid {args.grid}, first {args.seconds:g} s"), flush=True)
    model = load_model(args.model).eval()
    rate, chunk = int(model.sample_rate), int(model.chunk_size)
    cands = candidates(chunk, args.grid)
    rows: dict[str, list[float]] = {}
    evals: dict[str, float] = {}
    seconds = 0.0
    for name, track_rate, audio in load_tracks(args.tracks, None):
        if track_rate != rate:
            audio = {k: resample(v.T, track_rate, rate).T for k, v in audio.items()}
        audio = {k: v[:, : int(args.seconds * rate)] for k, v in audio.items()}
        stems = [s for s in model.stems if s in audio]
        if not stems:  # Frets on Fire: guitar -> other, rest -> vocals + drums + bass
            audio = {"mixture": audio["mixture"], "other": audio["guitar"], "rest": audio["rest"]}
        mix = torch.from_numpy(np.ascontiguousarray(audio["mixture"]))
        refs, pick = _references(model.stems, audio)
        start = time.perf_counter()
        ours, cost = score_candidates(_Picked(model, pick), mix, refs, cands, args.grid,
                                      args.batch_size)  # fmt: skip
        theirs, cost2 = msst_scores(_Picked(model, pick), mix, refs, args.batch_size)
        seconds += time.perf_counter() - start
        for k, v in {**ours, **theirs}.items():
            rows.setdefault(k, []).append(v)
            evals[k] = evals.get(k, 0) + {**cost, **cost2}[k]
        best = max(ours, key=ours.get)
        print(f"{name}: MSST4 {theirs['MSST num_overlap=4']:.3f}, MSST2 "
              f"{theirs['MSST num_overlap=2']:.3f}, best ours {ours[best]:.3f} ({best}) "
              f"[{time.perf_counter() - start:.0f} s]", flush=True)  # fmt: skip
        table(rows, evals, seconds)  # after every track, so that a stopped run still reports


def table(rows: dict, evals: dict, seconds: float) -> None:
    """The mean over the tracks so far, best first; evaluations summed over the tracks."""
    n = len(rows[next(iter(rows))])
    base = statistics.mean(rows["MSST num_overlap=4"])
    print(f"\n{n} tracks so far, {seconds:.0f} s")
    print("| setting | mean SDR (dB) | Δ vs MSST num_overlap=4 | evaluations | ratio to MSST 4 |")
    print("|---|---|---|---|---|")
    for k in sorted(rows, key=lambda k: -statistics.mean(rows[k])):
        mean = statistics.mean(rows[k])
        print(f"| {k} | {mean:.3f} | {mean - base:+.3f} | {evals[k]:.0f} | "
              f"{evals[k] / evals['MSST num_overlap=4']:.2f} |", flush=True)  # fmt: skip


def _references(stems, audio) -> tuple[np.ndarray, list]:
    """(refs (n, channels, time) float64, how to form each estimate from the model's stems)."""
    if "rest" in audio:  # Frets on Fire: score 'other' as guitar and the other three as rest
        pick = [[stems.index("other")], [stems.index(s) for s in stems if s != "other"]]
        refs = np.stack([audio["other"], audio["rest"]])
    else:
        names = [s for s in stems if s in audio]
        pick = [[stems.index(s)] for s in names]
        refs = np.stack([audio[s] for s in names])
    return refs.astype(np.float64), pick


class _Picked(torch.nn.Module):
    """The model with its stems summed into the scored groups: (B, C, T) -> (B, groups, C, T)."""

    def __init__(self, model, pick: list[list[int]]) -> None:
        super().__init__()
        self.model, self.pick = model, pick
        self.chunk_size, self.sample_rate = model.chunk_size, model.sample_rate
        self.audio_channels = model.audio_channels
        self.stems = tuple(f"group{i}" for i in range(len(pick)))

    def forward(self, x):
        y = self.model(x)
        return torch.stack([y[:, idx].sum(1) for idx in self.pick], dim=1)


if __name__ == "__main__":
    main()
