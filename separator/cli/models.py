"""`separator models`: list, show, download, verify and import models."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from separator.cli.common import app, fail
from separator.errors import SeparatorError

models_app = typer.Typer(
    help="Known models: list, show, download, verify, import.", no_args_is_help=True
)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list_cmd(
    arch: Annotated[
        str | None,
        typer.Option(help="only this architecture (bs_roformer, ...), ensemble or chain"),
    ] = None,
    stem: Annotated[str | None, typer.Option(help="only models that give this stem")] = None,
    search: Annotated[
        str | None, typer.Option(help="text in the name, stems, source, notes or licence")
    ] = None,
    sort: Annotated[str, typer.Option(help="name, or sdr (highest reported SDR first)")] = "name",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Table of every known model: architecture, stems, reported SDR, size, cached or not."""
    import json

    from separator.zoo import all_cards
    from separator.zoo.listing import matches, sort_by_sdr, summary

    if sort not in ("name", "sdr"):
        raise fail(f"unknown --sort {sort!r}; use name or sdr")
    cards = all_cards()
    names = [n for n, c in cards.items() if matches(c, cards, arch=arch, stem=stem, search=search)]
    names = sort_by_sdr(names, cards, stem) if sort == "sdr" else sorted(names)
    rows = [summary(cards[n], cards, _cached(cards[n], cards)) for n in names]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    _print_table(rows)


def _cached(card, cards) -> bool | str:
    """True/False, or "bundled" for a card whose weights file ships with it."""
    from separator.zoo import ModelCard
    from separator.zoo.loader import is_cached

    if isinstance(card, ModelCard):
        return "bundled" if card.weights.get("file") else is_cached(card)
    members = [cards[m] for m in getattr(card, "models", ()) if m in cards]
    return bool(members) and all(_cached(m, cards) for m in members)


def _print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Column, Table

    # Names stay whole (they are copied into --model); the other columns wrap to fit.
    table = Table(
        Column("name", no_wrap=True),
        Column("architecture", overflow="fold"),
        Column("stems", overflow="fold"),
        Column("reported SDR (dB)", overflow="fold"),
        Column("size", no_wrap=True),
        Column("cached", no_wrap=True),
    )
    for row in rows:
        n = row.get("size")
        size = f"{n / 1e6:.0f} MB" if n else ("-" if row["kind"] != "model" else "?")
        cached = row["cached"]
        state = cached if isinstance(cached, str) else ("yes" if cached else "no")
        table.add_row(
            row["name"], row["architecture"], ", ".join(row["stems"]), _sdr_text(row["sdr"]),
            size, state,
        )  # fmt: skip
    # On a terminal: its width (cells wrap to fit). Piped: rows are never wrapped, so that grep
    # finds a model's whole row.
    Console(width=None if sys.stdout.isatty() else 10_000).print(table)


def _sdr_text(sdr: dict) -> str:
    figures = [f"{k} {v:.2f}" for k, v in sdr.items() if isinstance(v, int | float)]
    bench = str(sdr.get("benchmark", "")).split("(")[0].strip()
    return ", ".join(figures) + (f" [{bench}]" if figures and bench else "") if figures else "-"


def _card(name: str):
    from separator.zoo import all_cards
    from separator.zoo.catalog import checkpoint_names

    cards = all_cards()
    card = cards.get(name) or cards.get(checkpoint_names().get(name, ""))
    if card is None:
        raise SeparatorError(f"unknown model {name!r}; `separator models list` shows the names")
    return card


@models_app.command("show")
def models_show_cmd(
    name: Annotated[str, typer.Argument(help="model name (or a checkpoint file name)")],
) -> None:
    """Print a model's card, its weight URLs (first, then mirrors) and what is on this machine."""
    from separator.zoo import ModelCard, all_cards

    card = _card(name)
    typer.echo(card.path.read_text().rstrip() if card.path else card.name)
    cards = all_cards()
    members = [card] if isinstance(card, ModelCard) else []
    members += [
        cards[m] for m in getattr(card, "models", ()) if isinstance(cards.get(m), ModelCard)
    ]
    for member in members:
        for line in _weights_state(member):
            typer.echo(f"# {line}")


def _weights_state(card) -> list[str]:
    """Lines on where a model's weights come from and whether they are here, and verified how."""
    from separator.zoo.download import pinned_sha256
    from separator.zoo.loader import cached_path

    path = cached_path(card)
    state = "present" if path and path.is_file() else "not downloaded"
    lines = [f"{card.name}: weights {path} ({state})"]
    lines += [f"  {'url' if i == 0 else 'mirror'}: {u}" for i, u in enumerate(card.urls)]
    published = card.weights.get("sha256")
    pinned = pinned_sha256(card.urls[0]) if card.urls else None
    if published:
        lines.append(f"  sha256 (published): {published}")
    elif pinned:
        lines.append(f"  sha256 (pinned at first download): {pinned}")
    elif card.urls:
        lines.append("  sha256: none published; the first download will be pinned")
    return lines


@models_app.command("download")
def models_download_cmd(
    names: Annotated[list[str], typer.Argument(help="model names (ensembles, chains: members)")],
) -> None:
    """Download and verify models' weights into the cache (SEPARATOR_CACHE overrides it)."""
    from separator.zoo import ModelCard, weights_file

    for name in names:
        card = _card(name)
        members = [card] if isinstance(card, ModelCard) else [_card(m) for m in card.models]
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
        expected = card.weights.get("sha256") or pinned_sha256(card.urls[0] if card.urls else "")
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
