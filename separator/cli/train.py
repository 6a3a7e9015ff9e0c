"""`separator train` and `separator example-data`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from separator.cli.common import app


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
    force: Annotated[
        bool, typer.Option("--force", help="replace an earlier run in OUTPUT_DIR")
    ] = False,
) -> None:
    """Train a model from a recipe. Extra `key=value` arguments override the recipe
    (e.g. data.root=/data/musdb18hq output_dir=runs/x training.lr=3e-4).

    Multi-GPU: torchrun --nproc_per_node=8 -m separator.cli train RECIPE.yaml ...
    """
    from separator.training import load_recipe, train

    def progress(line: str) -> None:
        typer.echo(line, err=True)

    result = train(load_recipe(recipe, ctx.args), resume=resume, force=force, progress=progress)
    typer.echo(f"done: step {result['step']}, best validation SDR {result['best_sdr']:.2f} dB")


@app.command("example-data")
def example_data_cmd(
    output: Annotated[Path, typer.Argument(help="folder to write (MUSDB18HQ layout)")],
) -> None:
    """Write a tiny MUSDB18HQ-layout folder from stempeg's real example track (for trying
    `separator train` and `separator evaluate` without MUSDB18)."""
    from separator.datasets import example_folder

    typer.echo(f"wrote {example_folder(output)}")
