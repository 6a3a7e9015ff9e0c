"""`separate INPUT...` (also `separator separate`): the main job, as a batch tool.

Thin over `separator.inference`: options are checked and translated here (demucs' flags onto
ours), the files are planned and run by `separator.cli.batch`, and under torchrun each rank takes
its shard (`separator.cli.shard`). Per-file errors are one line each, the other files still run,
and the exit code is 2 if any failed (130 after Ctrl-C).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from separator.cli.common import app, fail, separate_app
from separator.cli.options import (
    DEFAULT_CLI_FILENAME,
    OutputFlags,
    model_label,
    output_options,
    set_chunk_seconds,
    stem_request,
)
from separator.errors import SeparatorError
from separator.inference.engine import DEFAULT_BATCH_SIZE
from separator.inference.writers import DEFAULT_BITS

Opt = typer.Option
MODEL_HELP = (
    "model name (separator models list), card / MSST config (.yaml), checkpoint, or folder; "
    "a,b[,c] for an ensemble; 'a:vocals > b' for a chain [the strongest 4-stem model, or the "
    "embedded one offline]"
)


@separate_app.command()
@app.command("separate", help="Separate songs into stems (the `separate` command).")
# long function: the signature is the command's option list (Typer declares options there)
def separate_cmd(
    inputs: Annotated[list[Path], typer.Argument(help="audio files or folders of audio files")],
    stems: Annotated[
        str | None, Opt(help="comma-separated stems; residuals: instrumental, no_<stem> [all]")
    ] = None,
    model: Annotated[
        str | None,
        Opt("--model", "-m", "-n", help=MODEL_HELP),
    ] = None,
    weights: Annotated[str | None, Opt(help="ensemble weights, one per model: 2,1")] = None,
    ensemble: Annotated[
        str | None,
        Opt(
            help="ensemble method: avg (default), median, min_wave, max_wave, max_spec, "
            "min_spec, avg_fft, median_fft, min_fft, max_fft"
        ),
    ] = None,
    offline: Annotated[bool, Opt("--offline", help="never download: cached weights only")] = False,
    config: Annotated[
        Path | None, Opt("--config", "-c", help="MSST YAML config for a checkpoint in --model")
    ] = None,
    model_type: Annotated[
        str | None, Opt("--model-type", help="MSST model type of --config, if its keys do not tell")
    ] = None,
    output: Annotated[Path, Opt("--output", "-o", help="output folder")] = Path("separated"),
    filename: Annotated[
        str, Opt(help="output path template: {model}, {track}, {trackext}, {stem}, {ext}")
    ] = DEFAULT_CLI_FILENAME,
    fmt: Annotated[
        str | None, Opt("--format", help="wav, flac, mp3, ogg, opus or m4a [wav]")
    ] = None,
    bits: Annotated[int, Opt(help="16, 24 or 32 (32 = float, wav only)")] = DEFAULT_BITS,
    bitrate: Annotated[int | None, Opt(help="kbps for mp3/ogg/opus/m4a")] = None,
    sample_rate: Annotated[int | None, Opt(help="output sample rate [the input's]")] = None,
    normalize: Annotated[
        str | None, Opt(help="one gain per track so the loudest stem peaks here: 0.99 or -1dB")
    ] = None,
    clip: Annotated[str | None, Opt(help="rescale (if peak > 1), clamp or none [rescale]")] = None,
    overlap: Annotated[
        float | None,
        Opt(help="model evaluations per sample (>= 1) [2]; demucs models: also 0.25-style"),
    ] = None,
    chunk_seconds: Annotated[
        float | None, Opt(help="chunk length in seconds [the model's]")
    ] = None,
    batch_size: Annotated[int, Opt(help="chunks per model call")] = DEFAULT_BATCH_SIZE,
    device: Annotated[str, Opt("--device", "-d", help="auto, cpu, cuda or mps")] = "auto",
    precision: Annotated[
        str, Opt(help="auto (bf16 where native and faster, else fp32), fp32, bf16, fp16")
    ] = "auto",
    compile: Annotated[bool, Opt("--compile", help="torch.compile the model")] = False,
    tta: Annotated[bool, Opt("--tta", help="average channel-swap/polarity passes")] = False,
    jobs: Annotated[int, Opt("--jobs", "-j", help="files separated at the same time")] = 1,
    recursive: Annotated[
        bool, Opt("--recursive", "-r", help="walk sub-folders, mirror them in the output")
    ] = False,
    force: Annotated[bool, Opt("--force", help="overwrite existing outputs")] = False,
    json_out: Annotated[bool, Opt("--json", help="one JSON line per file on stdout")] = False,
    manifest: Annotated[
        Path | None,
        Opt(help="append a JSON line per file here [OUT/manifest.jsonl under torchrun]"),
    ] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="no progress or summary")] = False,
    two_stems: Annotated[
        str | None, Opt(help="demucs: STEM and no_STEM (= --stems STEM,no_STEM)")
    ] = None,
    other_method: Annotated[
        str, Opt(help="demucs: no_STEM as the mixture minus STEM, the add-ed other stems, or none")
    ] = "minus",
    clip_mode: Annotated[
        str | None, Opt(help="demucs: rescale (to 1/1.01 if louder) or clamp (to ±0.99)")
    ] = None,
    int24: Annotated[bool, Opt("--int24", help="demucs: = --bits 24")] = False,
    float32: Annotated[bool, Opt("--float32", help="demucs: = --bits 32")] = False,
    mp3: Annotated[bool, Opt("--mp3", help="demucs: = --format mp3")] = False,
    mp3_bitrate: Annotated[int | None, Opt(help="demucs: = --bitrate with --mp3")] = None,
    mp3_preset: Annotated[
        int | None, Opt(help="demucs: LAME quality 2 (best) .. 7 (fastest); needs ffmpeg")
    ] = None,
    shifts: Annotated[
        int | None, Opt(help="demucs: random time shifts averaged [the card's: 1 for demucs]")
    ] = None,
    segment: Annotated[
        float | None, Opt(help="demucs: segment length in seconds [the model's]")
    ] = None,
) -> None:
    """Separate each INPUT into stems, streaming (memory does not grow with track length)."""
    from separator.cli.run import run_batch

    if jobs < 1:
        raise fail(f"--jobs must be >= 1, got {jobs}")
    if output.exists() and not output.is_dir():
        raise fail(f"{output}: not a folder (-o names the output folder)")
    flags = OutputFlags(fmt, bits, bitrate, sample_rate, normalize, clip, clip_mode, int24,
                        float32, mp3, mp3_bitrate, mp3_preset)  # fmt: skip
    try:
        options = output_options(flags)
        request, residual = stem_request(stems, two_stems, other_method)
    except SeparatorError as e:
        raise fail(str(e)) from None
    options.update(stems=request, residual=residual, output_dir=output, filename=filename,
                   force=force)  # fmt: skip
    loading = dict(model=model, config=config, method=ensemble, weights=weights, offline=offline,
                   model_type=model_type, device=device, overlap=overlap, batch_size=batch_size,
                   precision=precision, tta=tta, compile=compile, shifts=shifts,
                   segment=segment)  # fmt: skip
    code = run_batch(
        inputs, loading, options, label=model_label(model, config), chunk_seconds=chunk_seconds,
        jobs=jobs, recursive=recursive, json_out=json_out, manifest=manifest, quiet=quiet,
    )  # fmt: skip
    if code:
        raise typer.Exit(code)


__all__ = ["separate_cmd", "set_chunk_seconds"]
