"""`separator models`: list, show, download, verify and import models."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from separator.cli.common import app
from separator.errors import SeparatorError

models_app = typer.Typer(
    help="Known models: list, show, download, verify, import.", no_args_is_help=True
)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list_cmd() -> None:
    """Table of every known model: architecture, stems, reported SDR, size, cached or not."""
    from rich.console import Console
    from rich.table import Column, Table

    from separator.zoo import EnsembleCard, all_cards
    from separator.zoo.loader import is_cached

    # Names stay whole (they are copied into --model); the other columns wrap to fit.
    table = Table(
        Column("name", no_wrap=True),
        Column("architecture", overflow="fold"),
        Column("stems", overflow="fold"),
        Column("reported SDR (dB)", overflow="fold"),
        Column("size", no_wrap=True),
        Column("cached", no_wrap=True),
    )
    cards = all_cards()
    for name, card in cards.items():
        if isinstance(card, EnsembleCard):
            arch, size = f"ensemble ({card.method})", "-"
            members = [cards[m] for m in card.models if m in cards]
            union = dict.fromkeys(s for m in members for s in getattr(m, "stems", ()))
            stems = ", ".join(card.stem_models or union)
            cached = "yes" if all(is_cached(m) for m in members) else "no"
        else:
            arch, stems = card.architecture, ", ".join(card.stems)
            n = card.weights.get("size")
            size = f"{n / 1e6:.0f} MB" if n else "?"
            local = card.weights.get("file") and card.weights_path is not None
            cached = "bundled" if local else ("yes" if is_cached(card) else "no")
        table.add_row(name, arch, stems, _sdr_text(card.sdr), size, cached)
    # On a terminal: its width (cells wrap to fit). Piped: rows are never wrapped, so that grep
    # finds a model's whole row.
    Console(width=None if sys.stdout.isatty() else 10_000).print(table)


def _sdr_text(sdr: dict) -> str:
    figures = [f"{k} {v:.2f}" for k, v in sdr.items() if isinstance(v, int | float)]
    bench = str(sdr.get("benchmark", "")).split("(")[0].strip()
    return ", ".join(figures) + (f" [{bench}]" if figures and bench else "") if figures else "-"


def _card(name: str):
    from separator.zoo import all_cards

    card = all_cards().get(name)
    if card is None:
        raise SeparatorError(f"unknown model {name!r}; `separator models list` shows the names")
    return card


@models_app.command("show")
def models_show_cmd(name: Annotated[str, typer.Argument(help="model name")]) -> None:
    """Print a model's card and where its weights are."""
    from separator.zoo import EnsembleCard
    from separator.zoo.loader import cached_path

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
    from separator.zoo import EnsembleCard, weights_file

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
    from separator.files import sha256_file
    from separator.zoo import ModelCard
    from separator.zoo.download import pinned_sha256
    from separator.zoo.loader import cached_path

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
    model_type: Annotated[
        str | None, typer.Option("--model-type", help="MSST model type, if the keys do not tell")
    ] = None,
) -> None:
    """Import your own MSST checkpoint: strict-load check, then safetensors + card by NAME."""
    from separator.zoo.catalog import user_models_dir
    from separator.zoo.loader import import_checkpoint

    weights, card = import_checkpoint(
        checkpoint,
        config,
        name,
        folder=output or user_models_dir(),
        overwrite=force,
        model_type=model_type,
    )
    typer.echo(f"imported {name}: {weights} and {card}; use: separate song.wav --model {name}")
