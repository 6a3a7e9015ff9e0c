"""Command line: `separate` (the main job) and `separator` (convert, evaluate, train, models, …).

The CLI is thin: it parses options, calls the library, and turns `SeparatorError` into one line on
stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

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


# --- separator convert (checkpoints) ---------------------------------------------------------
@app.command("convert")
def convert_cmd(
    checkpoint: Annotated[
        Path, typer.Argument(help="MSST checkpoint (.ckpt/.pth/.pt/.safetensors)")
    ],
    config: Annotated[Path, typer.Option("--config", "-c", help="MSST YAML config")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output .safetensors path")],
    name: Annotated[Optional[str], typer.Option(help="model name written in the card")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite existing files")] = False,
) -> None:
    """Convert an MSST checkpoint to safetensors plus a YAML model card (after a strict load)."""
    from separator.checkpoints import convert_checkpoint

    try:
        weights, card = convert_checkpoint(checkpoint, config, output, name=name, overwrite=force)
    except SeparatorError as e:
        raise fail(str(e)) from None
    typer.echo(f"wrote {weights} and {card}")


# --- separator evaluate ------------------------------------------------------------------------
@app.command("evaluate")
def evaluate_cmd(
    root: Annotated[Path, typer.Argument(help="MUSDB18HQ (wav folders) or MUSDB18 (.stem.mp4) root")],
    model: Annotated[Optional[str], typer.Option(help="model card name or path to separate with")] = None,
    estimates: Annotated[Optional[Path], typer.Option(help="folder of estimates: DIR/<track>/<stem>.wav")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for JSON, summary and plot")] = Path("evaluation"),
    subset: Annotated[str, typer.Option(help="test or train")] = "test",
    tracks: Annotated[Optional[list[str]], typer.Option("--tracks", help="only this track (repeatable)")] = None,
    metrics: Annotated[str, typer.Option(help="sdr (fast) or all (SDR, ISR, SIR, SAR)")] = "sdr",
    device: Annotated[str, typer.Option(help="device for --model: auto, cpu, cuda")] = "auto",
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="draw sdr_boxplot.png")] = True,
) -> None:
    """Score a model or a folder of estimates on MUSDB18(HQ): museval JSON, summary, box plot."""
    from separator.evaluate import evaluate_dataset

    # SeparatorError propagates: `_run` prints it as one "error: ..." line and returns 2.
    report = evaluate_dataset(
        root, output, estimates=estimates, model=model, subset=subset, tracks=tracks,
        metrics=metrics, device=device, plot=plot,
    )  # fmt: skip
    typer.echo((report.output_dir / "summary.md").read_text().rstrip())
    typer.echo(f"scored {len(report.scored)}, resumed {len(report.skipped)}; "
               f"results in {report.output_dir}")  # fmt: skip
    if report.ill_conditioned:
        typer.echo(f"note: ill-conditioned projections (ISR/SIR/SAR less exact) in "
                   f"{len(report.ill_conditioned)} track(s)", err=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point of `separator`; returns the exit code (for in-process tests)."""
    return _run(app, argv)


def _run(typer_app: typer.Typer, argv: list[str] | None) -> int:
    try:
        typer_app(args=argv, standalone_mode=False, prog_name=typer_app.info.name)
    except typer.Exit as e:
        return e.exit_code
    except SeparatorError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Abort):
            return 1
        raise
    return 0


def console_main() -> None:  # pragma: no cover - thin wrapper for the console script
    sys.exit(main())
