"""`separator convert`: an MSST checkpoint to safetensors plus a model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from separator.cli.common import app


@app.command("convert")
def convert_cmd(
    checkpoint: Annotated[
        Path, typer.Argument(help="MSST checkpoint (.ckpt/.pth/.pt/.safetensors)")
    ],
    config: Annotated[Path, typer.Option("--config", "-c", help="MSST YAML config")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output .safetensors path")],
    name: Annotated[str | None, typer.Option(help="model name written in the card")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite existing files")] = False,
    model_type: Annotated[
        str | None, typer.Option("--model-type", help="MSST model type, if the keys do not tell")
    ] = None,
) -> None:
    """Convert an MSST checkpoint to safetensors plus a YAML model card (after a strict load)."""
    from separator.zoo.loader import convert_checkpoint

    weights, card = convert_checkpoint(
        checkpoint, config, output, name=name, overwrite=force, model_type=model_type
    )
    typer.echo(f"wrote {weights} and {card}")
