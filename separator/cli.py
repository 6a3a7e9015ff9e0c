"""Command line: `separate` (the main job) and `separator` (convert, evaluate, train, models, …).

The CLI is thin: it parses options, calls the library, and turns `SeparatorError` into one line on
stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

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
    checkpoint: Annotated[Path, typer.Argument(help="MSST checkpoint (.ckpt/.pth/.pt/.safetensors)")],
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
