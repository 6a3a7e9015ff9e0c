"""Command line: `separate` (the main job) and `separator` (convert, evaluate, train, models, …).

The CLI is thin: it parses options, calls the library, and turns `SeparatorError` into one line on
stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys

# Large CPU tensors on transparent huge pages: the models allocate and free many big
# activations, and with 4 KiB pages the page faults cost ~15% of a CPU forward pass. Read by
# torch's CPU allocator, so it is set before torch is imported (CLI processes only).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
from pathlib import Path
from typing import Annotated

import typer
from typer import TyperException

from separator.errors import SeparatorError

app = typer.Typer(
    name="separator",
    help="Music source separation toolkit: convert checkpoints, evaluate, train, manage models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one error line (no traceback) and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.callback()
def _root() -> None:
    """Music source separation toolkit (separate audio with the `separate` command)."""


# --- separator convert (checkpoints) ---------------------------------------------------------
@app.command("convert")
def convert_cmd(
    checkpoint: Annotated[
        Path, typer.Argument(help="MSST checkpoint (.ckpt/.pth/.pt/.safetensors)")
    ],
    config: Annotated[Path, typer.Option("--config", "-c", help="MSST YAML config")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output .safetensors path")],
    name: Annotated[str | None, typer.Option(help="model name written in the card")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite existing files")] = False,
) -> None:
    """Convert an MSST checkpoint to safetensors plus a YAML model card (after a strict load)."""
    from separator.checkpoints import convert_checkpoint

    try:
        weights, card = convert_checkpoint(checkpoint, config, output, name=name, overwrite=force)
    except SeparatorError as e:
        raise fail(str(e)) from None
    typer.echo(f"wrote {weights} and {card}")


# --- separator train ---------------------------------------------------------------------------
@app.command(
    "train",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def train_cmd(
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Argument(help="training recipe YAML (see recipes/)")],
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from OUTPUT_DIR/last.ckpt")
    ] = False,
) -> None:
    """Train a model from a recipe. Extra `key=value` arguments override the recipe
    (e.g. data.root=/data/musdb18hq output_dir=runs/x training.lr=3e-4).

    Multi-GPU: torchrun --nproc_per_node=8 -m separator.cli train RECIPE.yaml ...
    """
    from separator.recipe import load_recipe
    from separator.train import train

    try:
        result = train(load_recipe(recipe, ctx.args), resume=resume)
    except SeparatorError as e:
        raise fail(str(e)) from None
    typer.echo(f"done: step {result['step']}, best validation SDR {result['best_sdr']:.2f} dB")


@app.command("example-data")
def example_data_cmd(
    output: Annotated[Path, typer.Argument(help="folder to write (MUSDB18HQ layout)")],
) -> None:
    """Write a tiny MUSDB18HQ-layout folder from stempeg's real example track (for trying
    `separator train` and `separator evaluate` without MUSDB18)."""
    from separator.data import example_folder

    typer.echo(f"wrote {example_folder(output)}")


# --- separator evaluate ------------------------------------------------------------------------
@app.command("evaluate")
def evaluate_cmd(
    root: Annotated[Path, typer.Argument(help="MUSDB18HQ (wav) or MUSDB18 (.stem.mp4) root")],
    model: Annotated[str | None, typer.Option(help="model card name or path")] = None,
    estimates: Annotated[
        Path | None, typer.Option(help="folder of estimates: DIR/<track>/<stem>.wav")
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="folder for JSON, summary and plot")
    ] = Path("evaluation"),
    subset: Annotated[str, typer.Option(help="test or train")] = "test",
    tracks: Annotated[
        list[str] | None, typer.Option("--tracks", help="only this track (repeatable)")
    ] = None,
    metrics: Annotated[str, typer.Option(help="sdr (fast) or all (SDR, ISR, SIR, SAR)")] = "sdr",
    device: Annotated[str, typer.Option(help="device for --model: auto, cpu, cuda")] = "auto",
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="draw sdr_boxplot.png")] = True,
) -> None:
    """Score a model or a folder of estimates on MUSDB18(HQ): museval JSON, summary, box plot."""
    from separator.evaluate import evaluate_dataset

    # SeparatorError propagates: `_run` prints it as one "error: ..." line and returns 2.
    report = evaluate_dataset(
        root,
        output,
        estimates=estimates,
        model=model,
        subset=subset,
        tracks=tracks,
        metrics=metrics,
        device=device,
        plot=plot,
    )
    typer.echo((report.output_dir / "summary.md").read_text().rstrip())
    typer.echo(
        f"scored {len(report.scored)}, resumed {len(report.skipped)}; "
        f"results in {report.output_dir}"
    )
    if report.ill_conditioned:
        typer.echo(
            f"note: ill-conditioned projections (ISR/SIR/SAR less exact) in "
            f"{len(report.ill_conditioned)} track(s)",
            err=True,
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `separator`; returns the exit code (for in-process tests)."""
    return _run(app, argv)


def _run(typer_app: typer.Typer, argv: list[str] | None) -> int:
    try:
        # Without standalone mode, click returns the code of a typer.Exit instead of raising.
        rc = typer_app(args=argv, standalone_mode=False, prog_name=typer_app.info.name)
        if isinstance(rc, int):
            return rc
    except typer.Exit as e:
        return e.exit_code
    except SeparatorError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 1
    except TyperException as e:  # usage errors (typer's own click): message and exit code 2
        show = getattr(e, "show", None)
        if show is not None:
            show()
        return int(getattr(e, "exit_code", 2))
    return 0


def console_main() -> None:  # pragma: no cover - thin wrapper for the console script
    sys.exit(main())


# --- separate ---------------------------------------------------------------------------------
# `separate INPUT...`: the main job. Thin over `separator.api.Separator`; per-file errors are
# reported as one line each, the other files still run, and the exit code is 2 if any failed.
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

separate_app = typer.Typer(
    name="separate",
    help="Separate songs into stems: separate song.wav --stems vocals,drums",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@separate_app.command()
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
            "--model", "-m", help="model card / MSST config (.yaml), checkpoint, or folder"
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="MSST YAML config for a checkpoint given with --model"),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="output folder")] = Path(
        "separated"
    ),
    filename: Annotated[
        str, typer.Option(help="output path template: {track}, {stem}, {ext}")
    ] = "{track}/{stem}.{ext}",
    fmt: Annotated[str, typer.Option("--format", help="wav or flac")] = "wav",
    bits: Annotated[int, typer.Option(help="16, 24 or 32 (32 = float, wav only)")] = 24,
    clip: Annotated[str, typer.Option(help="rescale (if peak > 1), clamp or none")] = "rescale",
    overlap: Annotated[float, typer.Option(help="model evaluations per sample (>= 1)")] = 2.0,
    batch_size: Annotated[int, typer.Option(help="chunks per model call")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32, or bf16/fp16 autocast")] = "fp32",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model")] = False,
    tta: Annotated[
        bool, typer.Option("--tta", help="average channel-swap/polarity passes")
    ] = False,
    jobs: Annotated[int, typer.Option(help="files separated at the same time")] = 1,
    force: Annotated[bool, typer.Option("--force", help="overwrite existing outputs")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress or summary")] = False,
) -> None:
    """Separate each INPUT into stems, streaming (memory does not grow with track length)."""
    from separator.audio import output_subtype
    from separator.stems import resolve_stems

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
    from separator.api import Separator

    if model is None and config is None:
        raise SeparatorError(
            "no model given: pass --model (a model card or MSST .yaml config, or "
            "a checkpoint with --config)"
        )
    if model is None:  # a config alone names the model (a card, or an MSST YAML)
        return Separator.from_pretrained(config, **kwargs)
    return Separator.from_pretrained(model, config=config, **kwargs)


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
                rate = _sample_rate(path)
                written = sep.separate_file(
                    path, progress=lambda d, t: progress(d, t, rate), **options
                )
            except SeparatorError as e:
                bars.remove_task(task)
                typer.echo(f"error: {e}", err=True)  # one plain line, even with --quiet
                return False
            bars.remove_task(task)
            seconds = time.perf_counter() - start
            stems = ", ".join(written)
            folder = _common_folder(list(written.values()))
            console.print(
                f"{path.name} → {folder}: {stems} ({seconds:.1f} s, "
                f"RTF {_rtf(seconds, _frames(path), rate)})",
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


def _sample_rate(path: Path) -> int:
    import soundfile as sf

    try:
        return sf.info(str(path)).samplerate
    except (sf.LibsndfileError, RuntimeError):  # not a soundfile format: the RTF shows "-"
        return 1


def _frames(path: Path) -> int | None:
    import soundfile as sf

    try:
        return sf.info(str(path)).frames
    except (sf.LibsndfileError, RuntimeError):
        return None


def _common_folder(paths: list[Path]) -> Path:
    import os

    return Path(os.path.commonpath([str(p.parent) for p in paths]))


def separate_main(argv: list[str] | None = None) -> int:
    """Entry point of `separate`; returns the exit code (for in-process tests)."""
    return _run(separate_app, argv)


def separate_console_main() -> None:  # pragma: no cover - thin wrapper for the console script
    sys.exit(separate_main())


if __name__ == "__main__":  # `python -m separator.cli` (used with torchrun)
    console_main()
