"""Forward-pass speed of our BandIt / BandIt v2 against MSST's own model code, same config.

    PYTHONPATH=. python3 benchmarks/bench_bandit.py                    # v1 + v2 cinematic, 3 s
    PYTHONPATH=. python3 benchmarks/bench_bandit.py --configs dnr_v1 --seconds 2 --repeats 3

The reference is MSST's code at commit ccc011a (HEAD if the mirror lacks it), read from the local
mirror (`MSST_REPO`, default /work/.mirror/ZFTurbo+Music-Source-Separation-Training/repo) and
exported to a temporary folder at run time; nothing of it is kept. Its pure-Python dependencies
(pytorch-lightning and what its import needs, spafe) are pip-installed with --no-deps into a cache
folder (`BANDIT_BENCH_DEPS`, default ~/.cache/separator-bench/bandit-deps). torchaudio cannot be
installed here: a stand-in for just its Spectrogram / InverseSpectrogram (torch.stft / istft with
torchaudio's window normalisation and `window` buffers, the same transform either way) is put on
this process's path as `torchaudio`. MSST's `models/bandit/core/__init__.py` (its training stack:
asteroid, pedalboard, torch_audiomentations ...) is bypassed by registering that package without
running it; the model modules themselves run unchanged.

Both models get the same weights (the reference's random init, loaded into ours with
strict=True); their outputs are compared before timing. Timing: fp32, `torch.inference_mode`,
one process, the two models interleaved, median of several repeats after a warm-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import types
from io import BytesIO
from pathlib import Path

import torch
import yaml
from machine import machine_info

MIRROR = "/work/.mirror/ZFTurbo+Music-Source-Separation-Training/repo"
COMMIT = "ccc011a"
CONFIGS = {  # name: (family, MSST config file)
    "dnr_v1": ("bandit", "configs/config_dnr_bandit_bsrnn_multi_mus64.yaml"),
    "vocals_v1": ("bandit", "configs/config_vocals_bandit_bsrnn_multi_mus64.yaml"),
    "dnr_v2": ("bandit_v2", "configs/config_dnr_bandit_v2_mus64.yaml"),
}
DEPS = [  # versions this benchmark was run with
    "pytorch-lightning==2.6.6",
    "lightning-fabric==2.6.6",
    "lightning-utilities==0.15.3",
    "torchmetrics==1.9.0",
    "fsspec==2026.9.0",
    "spafe==0.3.3",
]

# torchaudio 2.x `Spectrogram` / `InverseSpectrogram` (power=None), as far as BandIt uses them.
TORCHAUDIO_SHIM = """
import torch
from torch import nn


def _norms(normalized):
    if isinstance(normalized, str):
        return normalized == "frame_length", normalized == "window"
    return False, bool(normalized)


class _Transform(nn.Module):
    def __init__(self, n_fft=400, win_length=None, hop_length=None, pad=0,
                 window_fn=torch.hann_window, normalized=False, wkwargs=None, center=True,
                 pad_mode="reflect", onesided=True, power=None, return_complex=None):
        super().__init__()
        if pad or power is not None:
            raise NotImplementedError("stand-in: pad=0 and power=None only")
        self.n_fft = n_fft
        self.win_length = win_length if win_length is not None else n_fft
        self.hop_length = hop_length if hop_length is not None else self.win_length // 2
        window = window_fn(self.win_length) if wkwargs is None else window_fn(
            self.win_length, **wkwargs)
        self.register_buffer("window", window)
        self.normalized, self.center = normalized, center
        self.pad_mode, self.onesided = pad_mode, onesided


class Spectrogram(_Transform):
    def forward(self, waveform):
        frame_norm, window_norm = _norms(self.normalized)
        shape = waveform.size()
        spec = torch.stft(waveform.reshape(-1, shape[-1]), n_fft=self.n_fft,
                          hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window, center=self.center, pad_mode=self.pad_mode,
                          normalized=frame_norm, onesided=self.onesided, return_complex=True)
        spec = spec.reshape(shape[:-1] + spec.shape[-2:])
        if window_norm:
            spec /= self.window.pow(2.0).sum().sqrt()
        return spec


class InverseSpectrogram(_Transform):
    def forward(self, spectrogram, length=None):
        frame_norm, window_norm = _norms(self.normalized)
        if window_norm:
            spectrogram = spectrogram * self.window.pow(2.0).sum().sqrt()
        shape = spectrogram.size()
        wav = torch.istft(spectrogram.reshape(-1, shape[-2], shape[-1]), n_fft=self.n_fft,
                          hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window, center=self.center, normalized=frame_norm,
                          onesided=self.onesided, length=length, return_complex=False)
        return wav.reshape(shape[:-2] + wav.shape[-1:])
"""
SHIM_FUNCTIONAL = textwrap.dedent(
    """
    def melscale_fbanks(*args, **kwargs):
        raise NotImplementedError("torchaudio stand-in: mel band specs are not benchmarked")
    """
)


def git(repo: str, *args: str) -> bytes:
    return subprocess.check_output(["git", "-C", repo, *args])


def setup_reference(repo: str, workdir: Path) -> str:
    """Export MSST's bandit code, put the torchaudio stand-in and the deps on sys.path."""
    try:
        commit = git(repo, "rev-parse", "--verify", f"{COMMIT}^{{commit}}").decode().strip()
    except subprocess.CalledProcessError:
        commit = git(repo, "rev-parse", "HEAD").decode().strip()
    ref = workdir / "msst"
    with tarfile.open(
        fileobj=BytesIO(git(repo, "archive", commit, "models/bandit", "models/bandit_v2"))
    ) as tar:
        tar.extractall(ref, filter="data")
    shim = workdir / "shim" / "torchaudio"
    (shim / "functional").mkdir(parents=True)
    (shim / "__init__.py").write_text("from . import functional, transforms\n")
    (shim / "transforms.py").write_text(TORCHAUDIO_SHIM)
    (shim / "functional" / "__init__.py").write_text(SHIM_FUNCTIONAL + "from . import functional\n")
    (shim / "functional" / "functional.py").write_text(
        "def _create_triangular_filterbank(*args, **kwargs):\n    raise NotImplementedError\n"
    )
    deps = Path(
        os.environ.get("BANDIT_BENCH_DEPS", Path.home() / ".cache/separator-bench/bandit-deps")
    )
    if not (deps / "pytorch_lightning").is_dir():
        subprocess.check_call(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(deps),
                *DEPS,
            ]
        )
    sys.path[:0] = [str(ref), str(workdir / "shim"), str(deps)]
    # The package's __init__ imports MSST's training stack; register it without running it.
    for name in ("models", "models.bandit", "models.bandit.core"):
        module = types.ModuleType(name)
        module.__path__ = [str(ref.joinpath(*name.split(".")))]
        sys.modules[name] = module
    return commit


def build_pair(repo: str, commit: str, name: str):
    """(reference, ours, config text) for one MSST config, ours holding the reference's weights."""
    from separator.files import parse_yaml
    from separator.nn.registry import get_family

    family, path = CONFIGS[name]
    text = git(repo, "show", f"{commit}:{path}").decode()
    config = yaml.load(text, Loader=yaml.FullLoader)
    torch.manual_seed(0)
    if family == "bandit":
        from models.bandit.core.model.bsrnn.wrapper import MultiMaskMultiSourceBandSplitRNNSimple

        reference = MultiMaskMultiSourceBandSplitRNNSimple(**config["model"])
    else:
        from models.bandit_v2.bandit import Bandit

        reference = Bandit(**config["kwargs"])
    fam = get_family(family)
    card = fam.from_msst(parse_yaml(text))
    ours = fam.build(
        card["model"],
        sample_rate=card["sample_rate"],
        stems=card["stems"],
        chunk_size=card["chunk_size"],
    )
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval(), card


def interleaved(models: dict, x: torch.Tensor, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for _ in range(repeats):
            for key, model in models.items():
                t0 = time.perf_counter()
                model(x)
                times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def profile(model, x: torch.Tensor, rows: int = 15) -> None:
    from torch.profiler import profile as torch_profile

    with torch.inference_mode(), torch_profile() as prof:
        model(x)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def dump_keys(repo: str, commit: str, path: Path) -> None:
    """{config file name: {key: [shape, dtype]}} of MSST's models, gzipped JSON."""
    import gzip
    import json

    out = {}
    for name, (_, config_path) in CONFIGS.items():
        reference, _, _ = build_pair(repo, commit, name)
        out[Path(config_path).name] = {
            k: [list(v.shape), str(v.dtype).removeprefix("torch.")]
            for k, v in reference.state_dict().items()
        }
    with gzip.open(path, "wt") as f:
        json.dump({"msst_commit": commit, "configs": out}, f, indent=0, sort_keys=True)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["dnr_v1", "dnr_v2"], choices=CONFIGS)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--profile", action="store_true", help="profile one forward of each")
    parser.add_argument(
        "--dump-keys",
        metavar="FILE.json.gz",
        help="write the reference's state-dict keys, shapes and dtypes for every config (the "
        "fixture tests/fixtures/msst_configs/msst_keys.json.gz) and exit",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repo = os.environ.get("MSST_REPO", MIRROR)
    print(machine_info(f"{args.seconds:g} s stereo, fp32, median of {args.repeats}"))
    with tempfile.TemporaryDirectory(prefix="bench-bandit-") as tmp:
        commit = setup_reference(repo, Path(tmp))
        print(f"reference: MSST {commit[:7]} (exported from {repo})")
        if args.dump_keys:
            dump_keys(repo, commit, Path(args.dump_keys))
            return
        for name in args.configs:
            reference, ours, card = build_pair(repo, commit, name)
            rate = card["sample_rate"]
            x = torch.randn(
                1, 2, int(args.seconds * rate), generator=torch.Generator().manual_seed(1)
            )
            with torch.inference_mode():
                diff = (reference(x) - ours(x)).abs().max().item()  # also the warm-up
            if diff > 1e-4:
                raise SystemExit(f"{name}: outputs differ by {diff:.3g}; not timing")
            result = interleaved({"msst": reference, "ours": ours}, x, args.repeats)
            audio = x.shape[-1] / rate
            print(
                f"{name}: stems {card['stems']}, {rate} Hz, max |diff| {diff:.2g}; "
                f"msst {result['msst']:.2f} s, ours {result['ours']:.2f} s "
                f"({audio / result['ours']:.2f}× real time), speed-up "
                f"{result['msst'] / result['ours']:.2f}×"
            )
            if args.profile:
                for key, model in (("msst", reference), ("ours", ours)):
                    print(f"--- {name} {key}")
                    profile(model, x)
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
