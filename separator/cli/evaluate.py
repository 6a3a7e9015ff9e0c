"""`separator evaluate`: score a model or estimates on MUSDB18(HQ)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from separator.cli.common import app, cli_message
from separator.errors import SeparatorError


@app.command("evaluate")
# long function: the signature is the command's option list (Typer declares options there)
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
    from separator.evaluation import evaluate_dataset

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
    summary = report.output_dir / "summary.md"
    if summary.is_file():
        typer.echo(summary.read_text().rstrip())
    typer.echo(
        f"scored {len(report.scored)}, resumed {len(report.skipped)}, failed "
        f"{len(report.failed)}; results in {report.output_dir}"
    )
    for name, error in report.failed.items():
        typer.echo(f"error: track {name!r} failed: {cli_message(error)}", err=True)
    if report.ill_conditioned:
        typer.echo(
            f"note: ill-conditioned projections (ISR/SIR/SAR less exact) in "
            f"{len(report.ill_conditioned)} track(s)",
            err=True,
        )
    if report.failed:
        raise typer.Exit(2)


def _stem_map(items: list[str]) -> dict[str, tuple[str, ...]]:
    out = {}
    for item in items:
        name, sep, parts = item.partition("=")
        sources = tuple(p.strip() for p in parts.split("+") if p.strip())
        if not sep or not name.strip() or not sources:
            raise SeparatorError(f"--stem-map {item!r}: expected NAME=stem[+stem...]")
        out[name.strip()] = sources
    return out
