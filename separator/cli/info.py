"""`separator info`: what this machine offers separator (for bug reports and set-up checks)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from separator.cli.common import app


@app.command("info")
def info_cmd(
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Print torch, devices and precisions, the cache and models folders, and the audio tools."""
    facts = gather()
    if json_out:
        typer.echo(json.dumps(facts, indent=2))
        return
    for key, value in facts.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "none"
        typer.echo(f"{key + ':':<15}{value}")


def gather() -> dict:
    """Every fact `info` prints, as plain JSON-able values."""
    import soundfile as sf
    import torch

    from separator.inference.writers import FORMATS, OutputSpec
    from separator.zoo.catalog import models_dir, user_models_dir
    from separator.zoo.download import cache_dir

    writable = [f for f in FORMATS if not OutputSpec(f).use_ffmpeg()]
    return {
        "separator": _version(),
        "python": f"{os.sys.version.split()[0]}",
        "torch": torch.__version__,
        "cpu": _cpu(torch),
        "cuda": _cuda(torch),
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "precisions": _precisions(torch),
        "cache": str(cache_dir()),
        "models": str(models_dir()),
        "user models": str(user_models_dir()),
        "soundfile": f"{sf.__version__} (libsndfile {sf.__libsndfile_version__})",
        "writes": writable + [f"{f} (ffmpeg)" for f in FORMATS if f not in writable],
        "ffmpeg": _ffmpeg(),
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("separator")
    except PackageNotFoundError:
        return "not installed (source tree)"


def _cpu(torch) -> dict:
    flags = _cpu_flags()
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
    return {
        "threads": torch.get_num_threads(),
        "capability": capability,
        "bf16 native": bool({"avx512_bf16", "amx_bf16"} & flags),
        "amx": "amx_tile" in flags,
    }


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    m = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(m.group(1).split()) if m else set()


def _cuda(torch) -> list[str]:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(f"cuda:{i} {p.name} ({p.total_memory / 2**30:.0f} GiB, sm {p.major}{p.minor})")
    return out


def _precisions(torch) -> list[str]:
    out = ["fp32"]
    cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if cuda_bf16:
        out.append("bf16 (CUDA)")
    else:
        from separator.inference.precision import cpu_bf16_native

        native = "native" if cpu_bf16_native() else "emulated: auto runs fp32"
        out.append(f"bf16 (CPU autocast, {native})")
    if torch.cuda.is_available():
        out.append("fp16 (CUDA)")
    return out


def _ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        return "not installed (needed to read m4a/mp4/opus input and to write m4a)"
    try:
        first = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=10)
        version = (first.stdout.split("\n")[0].split(" ") + ["?", "?", "?"])[2]
    except (OSError, subprocess.SubprocessError):
        version = "?"
    return f"{version} ({path})"
