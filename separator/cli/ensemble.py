"""`separator ensemble a/vocals.wav b/vocals.wav -o vocals.wav`: combine already separated files
(MSST's `ensemble.py`), streaming, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from separator.cli.common import app
from separator.zoo.cards import ENSEMBLE_METHODS


@app.command("ensemble")
def ensemble_cmd(
    files: Annotated[list[Path], typer.Argument(help="separated files of one stem, 2 or more")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output .wav or .flac")],
    method: Annotated[
        str,
        typer.Option("--method", "--type", help=f"one of {', '.join(ENSEMBLE_METHODS)}"),
    ] = "avg",
    weights: Annotated[
        str | None, typer.Option(help="one weight per file: 2,1 (avg and avg_fft)")
    ] = None,
    bits: Annotated[
        int | None, typer.Option(help="32 (float; default for wav), 24 (default for flac), 16")
    ] = None,
    clip: Annotated[
        str | None, typer.Option(help="none (default for float), rescale or clamp")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing output")] = False,
) -> None:
    """Combine the same stem from several models into one file, as MSST's ensemble.py does."""
    from separator.cli.run import _floats
    from separator.inference.file_ensemble import ensemble_files

    written = ensemble_files(
        files,
        output,
        method=method,
        weights=_floats(weights, "--weights"),
        bits=bits,
        clip=clip,
        force=force,
    )
    typer.echo(f"{written}: {method} of {len(files)} files")
