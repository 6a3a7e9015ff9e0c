"""Which number format a model runs in: `precision="auto"` and what it looks at.

- `fp32`: plain float32.
- `bf16` / `fp16`: the model under autocast; STFT, masks and iSTFT stay float32 inside the models
  (`separator.nn.stft`, `RoformerBase._istft`). fp16 needs a GPU.
- `auto` (the default): bf16 where the hardware runs bf16 natively *and* it pays for this model,
  fp32 everywhere else.

"Native" means CUDA devices of compute capability 8.0 or newer, and CPUs with AVX512-BF16 or
AMX-BF16 (asked from torch's own CPU query, `/proc/cpuinfo` flags as a fallback). Other CPUs
emulate bf16 matrix products in software, far slower than float32.

"Pays" is measured, not guessed: bf16 does not speed up every model (the issue's figures on an
AVX512-BF16 CPU: the dim-64 default model 5.4 s bf16 vs 5.5 s fp32, a dim-384 Mel-RoFormer 2.28x),
and no rule on the model's size could be pinned down on a machine without native bf16. So on a
native machine `auto` times one chunk of the model in both formats once (four evaluations), and
picks bf16 when it is at least `MIN_SPEEDUP` times faster and its output is within `MIN_SNR_DB`
of float32's (a weaker output would cost more than 0.05 dB SDR on good models; see
benchmarks/README.md). The verdict is cached per model (parameter shapes and sums), chunk,
device and torch version in `precision.json` in the cache folder. `SEPARATOR_AUTO_PRECISION=fp32`
(or `bf16`) skips all of it and fixes what `auto` picks.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from separator.errors import SeparatorError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHOICES = ("auto", *PRECISIONS)
MIN_SPEEDUP = 1.15
MIN_SNR_DB = 35.0
AUTO_ENV = "SEPARATOR_AUTO_PRECISION"


def cpu_bf16_native() -> bool:
    """True if this CPU has AVX512-BF16 or AMX-BF16 instructions."""
    query = getattr(torch._C._cpu, "_get_cpu_capability", None)  # torch >= 2.6: a dict
    if query is not None:
        try:
            caps = query()
            return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
        except (RuntimeError, AttributeError):
            pass
    named = [getattr(torch._C._cpu, n, None) for n in ("_is_avx512_bf16_supported",
                                                        "_is_amx_tile_supported")]  # fmt: skip
    if any(f is not None for f in named):
        return any(bool(f()) for f in named if f is not None)
    return bool(set(_cpuinfo("flags").split()) & {"avx512_bf16", "amx_bf16"})


def _cpuinfo(field: str) -> str:
    """The first `field` line of /proc/cpuinfo ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((x for x in f if x.split(":")[0].strip() == field), "")
    except OSError:
        return ""
    return line.partition(":")[2].strip()


def bf16_native(device: torch.device) -> bool:
    """True if `device` runs bf16 matrix products in hardware."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return cpu_bf16_native()
    return False


def check_precision(precision: str, device: torch.device) -> None:
    """Raise for an unknown name or fp16 on a CPU; warn for bf16 that the hardware emulates."""
    if precision not in CHOICES:
        raise SeparatorError(f"unknown `precision` {precision!r}; use {', '.join(CHOICES)}")
    if precision == "fp16" and device.type == "cpu":
        raise SeparatorError("fp16 autocast needs a GPU; use bf16 or fp32 on the CPU")
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16_native():
        warnings.warn(
            "this CPU has no AVX512-BF16/AMX: bf16 is emulated and much slower than fp32 "
            "(precision='auto' picks fp32 here)",
            stacklevel=4,
        )


def resolve_precision(precision: str, model: nn.Module, device: torch.device) -> str:
    """The precision to run: `precision` itself, or what "auto" picks for `model` on `device`."""
    check_precision(precision, device)
    if precision != "auto":
        return precision
    forced = os.environ.get(AUTO_ENV)
    if forced:
        if forced not in ("fp32", "bf16"):
            raise SeparatorError(f"{AUTO_ENV}={forced!r}: use fp32 or bf16")
        return forced
    if not bf16_native(device):
        return "fp32"
    return _timed_choice(model, device)


def _timed_choice(model: nn.Module, device: torch.device) -> str:
    """bf16 or fp32 for this model on this device: from the cache, else timed once and cached."""
    from separator.zoo.download import cache_dir

    path = cache_dir() / "precision.json"
    key = fingerprint(model, device)
    cache = _read_cache(path)
    if key not in cache:
        cache[key] = measure(model, device)
        _write_cache(path, cache)
    entry = cache[key]
    fast = entry["fp32_s"] >= MIN_SPEEDUP * entry["bf16_s"]
    return "bf16" if fast and entry["snr_db"] >= MIN_SNR_DB else "fp32"


def measure(model: nn.Module, device: torch.device) -> dict[str, float]:
    """Seconds of one batch-1 chunk in fp32 and bf16 (best of two each) and the bf16 SNR (dB)."""
    gen = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(1, model.audio_channels, int(model.chunk_size), generator=gen)
    x = x.to(device)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    outs = {}
    with torch.inference_mode():
        for name in ("fp32", "bf16", "fp32", "bf16"):
            with torch.autocast(device.type, torch.bfloat16, enabled=name == "bf16"):
                start = time.perf_counter()
                y = model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[name].append(time.perf_counter() - start)
            outs[name] = y.float().cpu()
    noise = (outs["bf16"] - outs["fp32"]).pow(2).sum().item()
    snr = 10 * torch.log10(outs["fp32"].pow(2).sum() / max(noise, 1e-30)).item()
    return {"fp32_s": min(times["fp32"]), "bf16_s": min(times["bf16"]), "snr_db": snr}


def fingerprint(model: nn.Module, device: torch.device) -> str:
    """Key of a model on a device: parameter shapes and sums, chunk, device, torch, threads."""
    h = hashlib.sha256()
    h.update(f"{type(model).__name__} {model.chunk_size} {model.audio_channels}".encode())
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if p.is_floating_point():
                h.update(f"{name}{tuple(p.shape)}{p.double().sum().item():.10e}".encode())
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        cpu = _cpuinfo("model name") or platform.processor() or platform.machine()
        where = f"{cpu} {torch.get_num_threads()} threads"
    return f"{h.hexdigest()[:16]} {device.type} {where} torch {torch.__version__}"


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, cache: dict) -> None:
    from separator.files import atomic_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(cache, indent=1).encode())
    except OSError:  # a read-only cache only means timing again next time
        pass
