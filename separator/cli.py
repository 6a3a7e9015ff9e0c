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
    model: Annotated[
        str | None, typer.Option(help="model name, card or path; a,b for an ensemble")
    ] = None,
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
    baseline: Annotated[
        str | None,
        typer.Option(help="score a baseline instead: mixture, or scaled-mixture (oracle gain)"),
    ] = None,
    stems: Annotated[
        str, typer.Option(help="reference stems (<stem>.wav beside mixture.wav)")
    ] = "vocals,drums,bass,other",
    stem_map: Annotated[
        list[str] | None,
        typer.Option(
            "--stem-map", help="reference stem as a sum of model stems: rest=vocals+drums+bass"
        ),
    ] = None,
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
        stems=[x.strip() for x in stems.split(",") if x.strip()],
        stem_map=_stem_map(stem_map or []),
        baseline=baseline,
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


def _stem_map(items: list[str]) -> dict[str, tuple[str, ...]]:
    out = {}
    for item in items:
        name, sep, parts = item.partition("=")
        sources = tuple(p.strip() for p in parts.split("+") if p.strip())
        if not sep or not name.strip() or not sources:
            raise SeparatorError(f"--stem-map {item!r}: expected NAME=stem[+stem...]")
        out[name.strip()] = sources
    return out


# --- separator models ---------------------------------------------------------------------------
models_app = typer.Typer(
    help="Known models: list, show, download, verify, import.", no_args_is_help=True
)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list_cmd() -> None:
    """Table of every known model: architecture, stems, reported SDR, size, cached or not."""
    from rich.console import Console
    from rich.table import Table

    from separator.registry import EnsembleCard, all_cards, is_cached

    table = Table("name", "architecture", "stems", "reported SDR (dB)", "size", "cached")
    cards = all_cards()
    for name, card in cards.items():
        if isinstance(card, EnsembleCard):
            arch, size = f"ensemble ({card.method})", "-"
            members = [cards[m] for m in card.models if m in cards]
            union = dict.fromkeys(s for m in members for s in getattr(m, "stems", ()))
            stems = ",".join(card.stem_models or union)
            cached = "yes" if all(is_cached(m) for m in members) else "no"
        else:
            arch, stems = card.architecture, ",".join(card.stems)
            n = card.weights.get("size")
            size = f"{n / 1e6:.0f} MB" if n else "?"
            local = card.weights.get("file") and card.weights_path is not None
            cached = "bundled" if local else ("yes" if is_cached(card) else "no")
        table.add_row(name, arch, stems, _sdr_text(card.sdr), size, cached)
    Console(width=200).print(table)


def _sdr_text(sdr: dict) -> str:
    figures = [f"{k} {v:.2f}" for k, v in sdr.items() if isinstance(v, int | float)]
    bench = str(sdr.get("benchmark", "")).split("(")[0].strip()
    return ", ".join(figures) + (f" [{bench}]" if figures and bench else "") if figures else "-"


def _card(name: str):
    from separator.registry import all_cards

    card = all_cards().get(name)
    if card is None:
        raise SeparatorError(f"unknown model {name!r}; `separator models list` shows the names")
    return card


@models_app.command("show")
def models_show_cmd(name: Annotated[str, typer.Argument(help="model name")]) -> None:
    """Print a model's card and where its weights are."""
    from separator.registry import EnsembleCard, cached_path

    card = _card(name)
    typer.echo(card.path.read_text().rstrip() if card.path else name)
    if not isinstance(card, EnsembleCard):
        path = cached_path(card)
        state = "present" if path and path.is_file() else "not downloaded"
        typer.echo(f"# weights: {path} ({state})")


@models_app.command("download")
def models_download_cmd(
    names: Annotated[list[str], typer.Argument(help="model names (ensembles: their members)")],
) -> None:
    """Download and verify models' weights into the cache (SEPARATOR_CACHE overrides it)."""
    from separator.registry import EnsembleCard, weights_file

    for name in names:
        card = _card(name)
        members = [_card(m) for m in card.models] if isinstance(card, EnsembleCard) else [card]
        for member in members:
            typer.echo(f"{member.name}: {weights_file(member, offline=False)}")


@models_app.command("verify")
def models_verify_cmd(
    names: Annotated[list[str], typer.Argument(help="model names")],
) -> None:
    """Re-hash cached weights against the card's sha256 (or the hash pinned at first download)."""
    from separator.cards import ModelCard
    from separator.registry import cached_path
    from separator.zoo import pinned_sha256, sha256_file

    bad = 0
    for name in names:
        card = _card(name)
        path = cached_path(card) if isinstance(card, ModelCard) else None  # not an ensemble
        if path is None or not path.is_file():
            typer.echo(f"{name}: not downloaded ({path})")
            bad += 1
            continue
        expected = card.weights.get("sha256") or pinned_sha256(card.weights.get("url", ""))
        actual = sha256_file(path)
        if expected is None:
            typer.echo(f"{name}: {path} sha256 {actual} (no published or pinned hash to compare)")
        elif actual == expected.lower():
            typer.echo(f"{name}: OK {path}")
        else:
            typer.echo(f"{name}: MISMATCH {path}: expected {expected}, got {actual}", err=True)
            bad += 1
    if bad:
        raise typer.Exit(2)


@models_app.command("import")
def models_import_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="MSST checkpoint (.ckpt/.pth/.pt)")],
    config: Annotated[Path, typer.Option("--config", "-c", help="its MSST YAML config")],
    name: Annotated[str, typer.Option(help="name to use with separate --model NAME")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="folder [default: user models folder]")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing import")] = False,
) -> None:
    """Import your own MSST checkpoint: strict-load check, then safetensors + card by NAME."""
    from separator.cards import check_name
    from separator.checkpoints import convert_checkpoint
    from separator.registry import all_cards, user_models_dir

    check_name(name, "model name")
    existing = all_cards().get(name)
    folder = output or user_models_dir()
    if existing is not None and not (force and existing.path and existing.path.parent == folder):
        raise SeparatorError(f"model name {name!r} is already used by {existing.path}")
    weights, card = convert_checkpoint(
        checkpoint, config, folder / f"{name}.safetensors", name=name, overwrite=force
    )
    typer.echo(f"imported {name}: {weights} and {card}; use: separate song.wav --model {name}")


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
            method=ensemble,
            weights=_floats(weights, "--weights"),
            offline=True if offline else None,
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
    from separator.api import load_separator

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
