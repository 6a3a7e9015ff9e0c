"""`separate`'s output flags, checked and translated into `separate_file` arguments.

demucs' flags map onto ours here, in one place:

- `-n NAME` = `--model NAME`; `--two-stems S` = `--stems S,no_S`.
- `--other-method`: `no_S` is the mixture minus S (minus, our residual), the sum of the other
  stems (add), or not written (none).
- `--clip-mode rescale` = `--clip rescale` to the level 1/1.01 (ours: to full scale 1.0);
  `--clip-mode clamp` = `--clip clamp` at ±0.99 (ours: at ±1.0).
- `--int24` / `--float32` = `--bits 24` / `--bits 32` (our default is 24-bit, demucs' 16).
- `--mp3` = `--format mp3`, `--mp3-bitrate` = `--bitrate`; `--mp3-preset P` sets LAME's
  quality P, which only ffmpeg's encoder takes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from separator.errors import SeparatorError
from separator.names import safe_name

DEFAULT_CLI_FILENAME = "{model}/{track}/{stem}.{ext}"
DEMUCS_RESCALE = 1 / 1.01  # demucs divides by max(1.01 * peak, 1)
DEMUCS_CLAMP = 0.99  # demucs clamps to ±0.99
MODEL_SUFFIXES = {".yaml", ".yml", ".ckpt", ".pth", ".pt", ".safetensors", ".th"}


@dataclass(frozen=True)
class OutputFlags:
    """The output flags as typed (None where not given)."""

    fmt: str | None
    bits: int
    bitrate: int | None
    sample_rate: int | None
    normalize: str | None
    clip: str | None
    clip_mode: str | None
    int24: bool
    float32: bool
    mp3: bool
    mp3_bitrate: int | None
    mp3_preset: int | None


def output_options(f: OutputFlags) -> dict:
    """`separate_file` keyword arguments for the flags; `SeparatorError` for a bad combination."""
    from separator.inference.writers import DEFAULT_CLIP, OutputSpec, check_spec

    fmt = f.fmt or ("mp3" if f.mp3 else "wav")
    if f.mp3 and fmt != "mp3":
        raise SeparatorError(f"--mp3 and --format {fmt}: give one")
    if (f.mp3_bitrate is not None or f.mp3_preset is not None) and fmt != "mp3":
        raise SeparatorError("--mp3-bitrate and --mp3-preset need --mp3 (or --format mp3)")
    if f.mp3_bitrate is not None and f.bitrate not in (None, f.mp3_bitrate):
        raise SeparatorError("--mp3-bitrate and --bitrate disagree: give one")
    if f.int24 and f.float32:
        raise SeparatorError("--int24 and --float32: give one")
    bits = 24 if f.int24 else 32 if f.float32 else f.bits
    clip, level = f.clip or DEFAULT_CLIP, 1.0
    if f.clip_mode is not None:
        if f.clip is not None:
            raise SeparatorError("--clip and --clip-mode: give one")
        if f.clip_mode not in ("rescale", "clamp"):
            raise SeparatorError(f"unknown --clip-mode {f.clip_mode!r}; use rescale or clamp")
        clip = f.clip_mode
        level = DEMUCS_RESCALE if clip == "rescale" else DEMUCS_CLAMP
    spec = OutputSpec(
        fmt, bits if fmt in ("wav", "flac") else 24, clip, level,
        f.mp3_bitrate if f.mp3_bitrate is not None else f.bitrate, f.sample_rate, f.mp3_preset,
    )  # fmt: skip
    check_spec(spec)
    return {
        "fmt": spec.fmt, "bits": spec.bits, "clip": spec.clip, "clip_level": spec.clip_level,
        "bitrate": spec.bitrate, "sample_rate": spec.sample_rate, "preset": spec.preset,
        "normalize": parse_peak(f.normalize),
    }  # fmt: skip


def parse_peak(text: str | None) -> float | None:
    """--normalize: a linear peak (0.99) or dBFS (-1dB) -> a linear peak in (0, 1]."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([-+]?[0-9.]+)\s*(db|dbfs)?\s*", text, re.IGNORECASE)
    try:
        value = float(m.group(1)) if m else math.nan
    except ValueError:
        value = math.nan
    peak = 10 ** (value / 20) if m and m.group(2) else value
    if not 0 < peak <= 1:
        raise SeparatorError(f"--normalize {text!r}: a peak in (0, 1] such as 0.99, or -1dB")
    return peak


def stem_request(
    stems: str | None, two_stems: str | None, other_method: str
) -> tuple[str | None, str]:
    """(`stems` for separate_file, `residual`) from --stems / --two-stems / --other-method."""
    if other_method not in ("minus", "add", "none"):
        raise SeparatorError(f"unknown --other-method {other_method!r}; use minus, add or none")
    if two_stems is None:
        if other_method == "none":
            raise SeparatorError("--other-method none applies to --two-stems")
        return stems, other_method
    if stems is not None:
        raise SeparatorError("--two-stems and --stems: give one")
    if other_method == "none":
        return two_stems, "minus"
    return f"{two_stems},no_{two_stems}", other_method


def model_label(model: str | None, config: Path | None) -> str:
    """The model's name in output paths ({model}): a zoo name as given, a file's stem, a
    folder's name; "a+b" for an ensemble; the embedded model's name by default."""
    from separator.zoo import DEFAULT_MODEL

    if model is None and config is None:
        return DEFAULT_MODEL
    spec = str(model if model is not None else config)
    names = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        path = Path(part)
        if path.suffix.lower() in MODEL_SUFFIXES:
            names.append(path.stem)
        elif path.is_dir():
            names.append(path.resolve().name)
        else:
            names.append(part)
    return safe_name("+".join(names)) or "model"


def set_chunk_seconds(sep, seconds: float | None) -> None:
    """--chunk-seconds: every model of `sep` (one, or an ensemble's members) takes chunks of
    this length at its own rate."""
    if seconds is None:
        return
    if not (math.isfinite(seconds) and seconds > 0):
        raise SeparatorError(f"--chunk-seconds must be > 0, got {seconds}")
    for member in getattr(sep, "members", [sep]):
        member.chunk_size = max(1, round(seconds * member.model.sample_rate))
        member.new_engine()  # checks the chunk against the overlap now, not mid-file
