"""End-to-end `separate` against MSST's own inference loop: same random-weight model, real audio.

Both tools separate the same excerpt of a real recording, each in a fresh child process (time =
the child's wall clock from start to written stems, model construction and weight loading
included; peak RSS = the child's ru_maxrss):

- ours: `separate INPUT --model CARD` at its defaults (overlap 2) and the given precisions;
- MSST: `utils.model_utils.demix` and `models.bs_roformer.BSRoformer` from the mirror of
  ZFTurbo's Music-Source-Separation-Training (exported to a temporary folder at run time, nothing
  of it is committed), the YAML of the model from the same mirror, the audio read with
  librosa and the stems written with soundfile as its `inference.py` does; `num_overlap` as given
  (4 is the default of most MSST configs; viperx's own YAML says 2) and its YAML's batch size.

The model is (by default) the viperx BS-RoFormer shape (`models/bs_roformer_viperx_1297.yaml`)
with random weights (seed 0), saved once as safetensors and loaded by both with `strict=True`.
Runs are interleaved (ours, MSST, ours, ... per repeat); medians over repeats. `--per-chunk`
estimates instead, where a full run takes too long: one chunk of each model, times the chunks
each tool runs on `--seconds` of audio.

    pip install beartype ml_collections einops rotary-embedding-torch librosa
    python3 benchmarks/e2e_msst.py \
        --input "data/default/real/fof/muldjord - armygeddon/mixture.wav" --start 30 \
        --seconds 30 --repeats 1 --precisions fp32 auto --msst-overlaps 4 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(
    os.environ.get("MSST_MIRROR", "/work/.mirror/ZFTurbo+Music-Source-Separation-Training/repo")
)
MSST_YAML = "configs/viperx/model_bs_roformer_ep_317_sdr_12.9755.yaml"
CARD = ROOT / "models" / "bs_roformer_viperx_1297.yaml"


def export_msst(dest: Path) -> Path:
    """`git archive` the mirror's models/bs_roformer, utils and the viperx YAML into `dest`."""
    paths = ["models/bs_roformer", "utils", MSST_YAML]
    archive = subprocess.run(["git", "-C", str(MIRROR), "archive", "HEAD", *paths],
                             check=True, capture_output=True).stdout  # fmt: skip
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    (dest / "models" / "__init__.py").touch()
    return dest


def make_model(dest: Path, source: Path) -> Path:
    """Random weights of the card `source` (safetensors) and a card that points at them."""
    import torch
    import yaml
    from safetensors.torch import save_file

    from separator.files import sha256_file
    from separator.zoo import build_model, read_card

    torch.manual_seed(0)
    model = build_model(read_card(source))
    weights = dest / "viperx_random.safetensors"
    # clone: the rotary tables are one tensor shared by every layer, which safetensors refuses
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(weights))
    card = yaml.safe_load(source.read_text())
    card.update(name="viperx_random", source="random weights (benchmark)")
    card["weights"] = {"file": weights.name, "sha256": sha256_file(weights),
                       "size": weights.stat().st_size}  # fmt: skip
    path = dest / "viperx_random.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def run_ours(src: Path, out: Path, card: Path, precision: str) -> None:
    from separator.cli import separate_main

    rc = separate_main([str(src), "--model", str(card), "-o", str(out), "--precision", precision,
                        "--force", "-q"])  # fmt: skip
    if rc:
        raise SystemExit(f"separate exited {rc}")


def run_msst(src: Path, out: Path, msst: Path, weights: Path, num_overlap: int) -> None:
    """As MSST's inference.py: librosa.load, demix, soundfile.write of every stem."""
    import librosa
    import torch
    import yaml
    from ml_collections import ConfigDict
    from safetensors.torch import load_file

    sys.path.insert(0, str(msst))
    from models.bs_roformer import BSRoformer
    from utils.model_utils import demix

    config = yaml.load((msst / MSST_YAML).read_text(), Loader=yaml.FullLoader)
    config["model"] = msst_model_args(weights.with_suffix(".yaml"))  # an MSST model section
    config = ConfigDict(config)
    config.inference.num_overlap = num_overlap
    model = BSRoformer(**dict(config.model))
    model.load_state_dict(load_file(str(weights)), strict=True)
    model.eval()
    mix, rate = librosa.load(str(src), sr=44100, mono=False)
    stems = demix(config, model, mix, torch.device("cpu"), model_type="bs_roformer")
    (out / src.stem).mkdir(parents=True, exist_ok=True)
    for name, wav in stems.items():
        sf.write(out / src.stem / f"{name}.wav", wav.T, rate, subtype="PCM_24")


def msst_model_args(card: Path) -> dict:
    """The card's model section as MSST's YAML gives it: lists as tuples (its constructor's
    beartype hints say tuple[int, ...]; MSST's YAMLs write !!python/tuple)."""
    import yaml

    model = yaml.safe_load(card.read_text())["model"]
    return {k: tuple(v) if isinstance(v, list) else v for k, v in model.items()}


def child(args: argparse.Namespace) -> None:
    if args.child.startswith("chunk-"):
        return chunk_child(args.child, args.card, args.msst, args.chunk_seconds)
    start = time.perf_counter()
    if args.child == "msst":
        weights = args.card.with_suffix(".safetensors")
        run_msst(args.input, args.out, args.msst, weights, args.num_overlap)
    else:
        run_ours(args.input, args.out, args.card, args.child)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb}))


def measure(tool: str, args: argparse.Namespace, tmp: Path, src: Path, card: Path, n: int = 0):
    cmd = [sys.executable, __file__, "--child", tool, "--input", str(src), "--out",
           str(tmp / "out"), "--card", str(card), "--msst", str(tmp / "msst"),
           "--num-overlap", str(n)]  # fmt: skip
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{tool} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def evaluations(chunk: int, length: int, tool: str, num_overlap: int = 4) -> int:
    """Model evaluations (chunks) each tool runs on `length` samples at its default settings."""
    if tool == "ours":
        from separator.inference.engine import DEFAULT_OVERLAP, chunk_step

        step = chunk_step(chunk, DEFAULT_OVERLAP)
        return (chunk - step + length - 1) // step + 1
    step = chunk // num_overlap
    border = chunk - step
    padded = length + 2 * border if length > 2 * border and border > 0 else length
    return -(-padded // step)


def per_chunk(args: argparse.Namespace, tmp: Path, card: Path) -> None:
    """Estimate when a full run is too slow: one chunk of each model, times the evaluations.

    Each timing is a fresh child process (ours, MSST, ours, ...: interleaved) that loads the
    model and runs one chunk; its peak RSS is the model plus one chunk's activations, which is
    the peak of a whole run for ours (streaming) and, within the few MB of the track's arrays
    that MSST also holds, for MSST's demix on 30 s."""
    runs: dict[str, list[dict]] = {"ours": [], "msst": []}
    for _ in range(args.repeats):
        for name in runs:
            cmd = [sys.executable, __file__, "--child", f"chunk-{name}", "--card", str(card),
                   "--msst", str(tmp / "msst")]  # fmt: skip
            if args.chunk_seconds:
                cmd += ["--chunk-seconds", str(args.chunk_seconds)]
            done = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{name} child failed:\n{done.stderr[-3000:]}")
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(name, runs[name][-1], flush=True)
    t = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    rss = {k: max(r["peak_rss_mb"] for r in v) for k, v in runs.items()}
    chunk = runs["ours"][0]["chunk"]
    length = int(args.seconds * 44100)
    n_ours = evaluations(chunk, length, "ours")
    print(f"\none {chunk}-sample chunk: ours {t['ours']:.1f} s, MSST {t['msst']:.1f} s "
          f"({t['msst'] / t['ours']:.2f}x); peak RSS ours {rss['ours']:.0f} MB, MSST "
          f"{rss['msst']:.0f} MB; {args.seconds:g} s of audio: ours {n_ours} chunks, "
          f"estimated {n_ours * t['ours']:.0f} s")  # fmt: skip
    for n in args.msst_overlaps:
        n_msst = evaluations(chunk, length, "msst", n)
        ratio = n_msst * t["msst"] / (n_ours * t["ours"])
        print(f"MSST num_overlap={n}: {n_msst} chunks, estimated {n_msst * t['msst']:.0f} s; "
              f"ours estimated {ratio:.2f}x faster")  # fmt: skip


def chunk_child(tool: str, card: Path, msst: Path, seconds: float | None) -> None:
    """One chunk through one tool's model, in this fresh process: seconds and peak RSS.

    With `seconds`, a shorter input is timed and its time scaled to the chunk's length
    (linearly: an estimate that leaves out attention's growth with length, alike for both).
    Ours runs with the process settings of the `separate` command (separator.cli.memory), made
    before torch is imported; MSST's with the defaults its inference.py runs with."""
    if tool == "chunk-ours":
        from separator.cli.memory import keep_freed_memory

        keep_freed_memory()
    import torch
    import yaml
    from safetensors.torch import load_file

    if tool == "chunk-ours":
        from separator.zoo import load_model

        model = load_model(card).eval()
    else:
        sys.path.insert(0, str(msst))
        from models.bs_roformer import BSRoformer

        model = BSRoformer(**msst_model_args(card)).eval()
        model.load_state_dict(load_file(str(card.with_suffix(".safetensors"))), strict=True)
    chunk = int(yaml.safe_load(card.read_text())["chunk_size"])
    n = int(seconds * 44100) if seconds else chunk
    x = 0.1 * torch.randn(1, 2, n, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        start = time.perf_counter()
        model(x)
        took = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": took * chunk / n, "peak_rss_mb": peak_mb, "chunk": chunk,
                      "timed_samples": n}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path)
    ap.add_argument("--start", type=float, default=0.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "auto"])
    ap.add_argument("--msst-overlaps", type=int, nargs="+", default=[4])
    ap.add_argument("--model-card", type=Path, default=CARD, help="shape (random weights)")
    ap.add_argument("--per-chunk", action="store_true", help="estimate from one chunk each")
    ap.add_argument("--chunk-seconds", type=float, help="--per-chunk: time a shorter input")
    ap.add_argument("--child")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--card", type=Path)
    ap.add_argument("--msst", type=Path)
    ap.add_argument("--num-overlap", type=int, default=4)
    args = ap.parse_args()
    if args.child:
        return child(args)
    print(machine_info(f"children: torch default threads; {args.seconds:g} s of {args.input}"))
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        export_msst(tmp / "msst")
        card = make_model(tmp, args.model_card)
        if args.per_chunk:
            return per_chunk(args, tmp, card)
        audio, rate = sf.read(args.input, dtype="float32", always_2d=True)
        lo = int(args.start * rate)
        src = tmp / "excerpt.wav"
        sf.write(src, audio[lo : lo + int(args.seconds * rate)], rate, subtype="FLOAT")
        tools = [(p, 0) for p in args.precisions] + [("msst", n) for n in args.msst_overlaps]
        runs: dict[tuple, list[dict]] = {t: [] for t in tools}
        for _ in range(args.repeats):
            for tool, n in tools:
                runs[(tool, n)].append(measure(tool, args, tmp, src, card, n))
                print(tool, n, runs[(tool, n)][-1], flush=True)
    report(runs, args.seconds)


def report(runs: dict, seconds: float) -> None:
    med = {t: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for t, rs in runs.items()}
    print("\n| tool | setting | time (s) | × real time | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for (tool, n), m in med.items():
        label = f"MSST demix, num_overlap={n}" if tool == "msst" else f"ours, --precision {tool}"
        print(f"| {label} | | {m['seconds']:.1f} | {seconds / m['seconds']:.2f} | "
              f"{m['peak_rss_mb']:.0f} |")  # fmt: skip
    for (tool, n), m in med.items():
        if tool == "msst":
            for (ours, _), o in med.items():
                if ours != "msst":
                    print(f"ours {ours} vs MSST num_overlap={n}: "
                          f"{m['seconds'] / o['seconds']:.2f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()
