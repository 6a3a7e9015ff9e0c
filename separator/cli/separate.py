"""`separate INPUT...`: the main job. Thin over `separator.inference`; per-file errors are
reported as one line each, the other files still run, and the exit code is 2 if any failed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from separator.cli.common import cli_message, fail, separate_app
from separator.errors import SeparatorError
from separator.inference.audio import DEFAULT_BITS, DEFAULT_CLIP, DEFAULT_FORMAT
from separator.inference.engine import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP
from separator.inference.separator import DEFAULT_FILENAME

AUDIO_SUFFIXES = {
    ".wav",
    ".flac",
    ".ogg",
    ".mp3",
    ".m4a",
    ".aac",
    ".opus",
    ".aif",
    ".aiff",
    ".mp4",
    ".wma",
    ".webm",
    ".mka",
    ".oga",
    ".wv",
}


@separate_app.command()
# long function: the signature is the command's option list (Typer declares options there)
def separate_cmd(
    inputs: Annotated[list[Path], typer.Argument(help="audio files or folders of audio files")],
    stems: Annotated[
        str | None,
        typer.Option(
            help="comma-separated stems; residuals: instrumental, no_<stem> [default: all]"
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="model name (separator models list), card / MSST config (.yaml), checkpoint, "
            "or folder; a,b[,c] for an ensemble [default: the embedded model]",
        ),
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="ensemble weights, one per model: 2,1")
    ] = None,
    ensemble: Annotated[
        str | None, typer.Option(help="ensemble method: avg (default), median, max_spec, min_spec")
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="never download: use cached weights only")
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="MSST YAML config for a checkpoint given with --model"),
    ] = None,
    model_type: Annotated[
        str | None,
        typer.Option("--model-type", help="MSST model type of --config, if its keys do not tell"),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="output folder")] = Path(
        "separated"
    ),
    filename: Annotated[
        str, typer.Option(help="output path template: {track}, {stem}, {ext}")
    ] = DEFAULT_FILENAME,
    fmt: Annotated[str, typer.Option("--format", help="wav or flac")] = DEFAULT_FORMAT,
    bits: Annotated[int, typer.Option(help="16, 24 or 32 (32 = float, wav only)")] = DEFAULT_BITS,
    clip: Annotated[str, typer.Option(help="rescale (if peak > 1), clamp or none")] = DEFAULT_CLIP,
    overlap: Annotated[
        float, typer.Option(help="model evaluations per sample (>= 1)")
    ] = DEFAULT_OVERLAP,
    batch_size: Annotated[int, typer.Option(help="chunks per model call")] = DEFAULT_BATCH_SIZE,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto (bf16 where native and faster, else fp32), fp32, bf16, fp16")
    ] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model")] = False,
    tta: Annotated[
        bool, typer.Option("--tta", help="average channel-swap/polarity passes")
    ] = False,
    jobs: Annotated[int, typer.Option(help="files separated at the same time")] = 1,
    force: Annotated[bool, typer.Option("--force", help="overwrite existing outputs")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress or summary")] = False,
) -> None:
    """Separate each INPUT into stems, streaming (memory does not grow with track length)."""
    from separator.inference.audio import output_subtype
    from separator.inference.stems import resolve_stems

    if fmt not in ("wav", "flac"):
        raise fail(f"unknown --format {fmt!r}; use wav or flac")
    if clip not in ("rescale", "clamp", "none"):
        raise fail(f"unknown --clip {clip!r}; use rescale, clamp or none")
    if jobs < 1:
        raise fail(f"--jobs must be >= 1, got {jobs}")
    try:
        output_subtype(fmt, bits)
        sep = _load_separator(
            model,
            config,
            method=ensemble,
            weights=_floats(weights, "--weights"),
            offline=True if offline else None,
            model_type=model_type,
            device=device,
            overlap=overlap,
            batch_size=batch_size,
            precision=precision,
            tta=tta,
            compile=compile,
        )
        resolve_stems(sep.stems, stems)
    except SeparatorError as e:
        raise fail(str(e)) from None
    files, failures = _expand_inputs(inputs)
    options = {
        "stems": stems,
        "output_dir": output,
        "filename": filename,
        "fmt": fmt,
        "bits": bits,
        "clip": clip,
        "force": force,
    }
    failures += _separate_files(sep, files, options, jobs=jobs, quiet=quiet)
    if failures:
        raise typer.Exit(2)


def _load_separator(model: str | None, config: Path | None, **kwargs):
    from separator.inference import load_separator

    return load_separator(model, config, **kwargs)


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise SeparatorError(f"{option} {text!r}: expected numbers separated by commas") from None


def _expand_inputs(inputs: list[Path]) -> tuple[list[Path], int]:
    """Files as given, folders as their audio files (not recursive); missing paths fail."""
    files, failures = [], 0
    for path in inputs:
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith(".")
            )
            if not found:
                typer.echo(f"error: {path}: folder holds no audio files", err=True)
                failures += 1
            files += found
        elif not path.exists():
            typer.echo(f"error: {path}: no such file", err=True)
            failures += 1
        else:
            files.append(path)
    return files, failures


def _separate_files(sep, files: list[Path], options: dict, *, jobs: int, quiet: bool) -> int:
    """Separate every file with a progress bar each; returns the number of failures."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True, quiet=quiet, highlight=False)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        TextColumn("RTF {task.fields[rtf]}"),
    )
    with Progress(*columns, console=console, transient=True) as bars:

        def one(path: Path) -> bool:
            task = bars.add_task(path.name, total=None, rtf="-")
            start = time.perf_counter()

            def progress(done: int, total: int | None, rate: int = 1) -> None:
                elapsed = time.perf_counter() - start
                bars.update(task, completed=done, total=total, rtf=_rtf(elapsed, done, rate))

            try:
                rate, frames = _audio_info(path)
                written = sep.separate_file(
                    path, progress=lambda d, t: progress(d, t, rate), **options
                )
            except SeparatorError as e:
                bars.remove_task(task)
                typer.echo(f"error: {cli_message(str(e))}", err=True)  # one line, even with -q
                return False
            bars.remove_task(task)
            seconds = time.perf_counter() - start
            stems = ", ".join(written)
            folder = _common_folder(list(written.values()))
            console.print(
                f"{path.name} → {folder}: {stems} ({seconds:.1f} s, "
                f"RTF {_rtf(seconds, frames, rate)}, {_precision(sep)})",
                markup=False,
                soft_wrap=True,
            )
            return True

        if jobs == 1:
            results = [one(p) for p in files]
        else:
            with ThreadPoolExecutor(jobs) as pool:
                results = list(pool.map(one, files))
    return results.count(False)


def _rtf(seconds: float, frames: int | None, rate: int) -> str:
    """Real-time factor: processing seconds per audio second (below 1: faster than real time)."""
    if not frames or rate <= 1:
        return "-"
    return f"{seconds / (frames / rate):.2f}"


def _precision(sep) -> str:
    """The precision that ran: "fp32", "bf16", or "bf16/fp32" for an ensemble that mixes them."""
    members = getattr(sep, "members", [sep])
    names = dict.fromkeys(getattr(m, "precision", "fp32") for m in members)
    return "/".join(names)


def _audio_info(path: Path) -> tuple[int, int | None]:
    """(rate, frames) for the real-time factor; (1, None) when the file cannot tell."""
    from separator.inference.audio import audio_info

    try:
        return audio_info(path)
    except SeparatorError:  # reported by the separation itself
        return 1, None


def _common_folder(paths: list[Path]) -> Path:
    import os

    return Path(os.path.commonpath([str(p.parent) for p in paths]))
