"""`separate`'s run: load the model, plan the files (this rank's shard), separate, report.

Reports go out as files finish: one human line (or `error: ...`) on stderr, one JSON line on
stdout with `--json`, and one JSON line in the manifest (`--manifest`, or OUT/manifest.jsonl
under torchrun).
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from separator.cli.batch import (
    Job,
    Result,
    expand_inputs,
    json_line,
    plan_jobs,
    precision_ran,
    rtf,
    run_jobs,
    skipped,
    summary_line,
)
from separator.cli.common import cli_message
from separator.cli.options import set_chunk_seconds
from separator.cli.shard import MANIFEST, Shard, append_record, finish, rank_device, shard_from_env
from separator.cli.shard import stamp as shard_stamp
from separator.cli.shard import start as start_shard
from separator.errors import SeparatorError
from separator.inference.cancel import Cancel


# long function: one straight path through the run, each step a call
def run_batch(
    inputs: list[Path],
    loading: dict,
    options: dict,
    *,
    label: str,
    chunk_seconds: float | None,
    jobs: int,
    recursive: bool,
    json_out: bool,
    manifest: Path | None,
    quiet: bool,
) -> int:
    """Separate every input file; returns the exit code (0, 2 if any failed, 130/143)."""
    from rich.console import Console

    from separator.inference.separator import output_paths
    from separator.inference.stems import resolve_stems

    shard = shard_from_env()
    if shard.distributed:
        loading["device"] = rank_device(shard, loading["device"])
        manifest = manifest or Path(options["output_dir"]) / MANIFEST
        start_shard(shard)
    try:
        sep, default_name = _load_separator(quiet=quiet, **loading)
        label = default_name or label
        set_chunk_seconds(sep, chunk_seconds)
        plans = resolve_stems(
            sep.stems, options["stems"], residual=options["residual"], residuals=sep.residuals
        )
    except SeparatorError as e:
        typer.echo(f"error: {cli_message(str(e))}", err=True)
        return 2
    names = [p.name for p in plans]
    out_dir, template, fmt = Path(options["output_dir"]), options["filename"], options["fmt"]
    files, missing = expand_inputs(inputs, recursive=recursive, exclude=out_dir)
    if shard.distributed:
        files.sort(key=lambda f: str(f[0]))  # the same shards on every rank and every restart
    todo, failed = plan_jobs(
        files, lambda job: output_paths(job.path, names, out_dir, template, fmt, job.names), label
    )
    console = Console(stderr=True, quiet=quiet, highlight=False)
    report = _Reporter(console, json_out, manifest, shard)
    if shard.rank == 0:
        for path, message in missing:
            report(Result(str(path), "failed", label, error=message))
    for result in shard.take(failed):
        report(result)
    with _bars(console) as bars:
        code = run_jobs(shard.take(todo), _work(sep, options, label, bars), report, threads=jobs)
    if code:
        return code
    return 2 if finish(shard, report.failures) else 0


def _load_separator(model, config, *, weights, offline, quiet, **kwargs):
    """(separator, the default model's name when none was given); the default's choice is
    reported on one line (which model runs, and why)."""
    from separator.inference import load_separator
    from separator.inference.api import load_default_separator

    offline = True if offline else None
    weights = _floats(weights, "--weights")
    if model is None and config is None:
        sep, choice = load_default_separator(offline=offline, weights=weights, **kwargs)
        if not quiet:
            typer.echo(cli_message(choice.reason), err=True)
        return sep, choice.name
    return load_separator(model, config, weights=weights, offline=offline, **kwargs), None


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise SeparatorError(f"{option} {text!r}: expected numbers separated by commas") from None


def _work(sep, options: dict, label: str, bars):
    """The function a worker thread runs on one job."""

    def work(job: Job, cancel: Cancel) -> Result:
        if not options["force"] and (done := skipped(job, label)) is not None:
            return done
        task = bars.add_task(job.path.name, total=None, rtf="-")
        start = time.perf_counter()
        rate, frames = _audio_info(job.path)

        def progress(done: int, total: int | None) -> None:
            speed = rtf(time.perf_counter() - start, done, rate)
            bars.update(task, completed=done, total=total, rtf=f"{speed:.2f}" if speed else "-")

        try:
            written = sep.separate_file(
                job.path, progress=progress, names=job.names, cancel=cancel, **options
            )
        except SeparatorError as e:
            seconds = time.perf_counter() - start
            return Result(str(job.path), "failed", label, seconds=round(seconds, 3),
                          error=cli_message(str(e)))  # fmt: skip
        finally:
            bars.remove_task(task)
        seconds = time.perf_counter() - start
        speed = rtf(seconds, frames, rate)
        return Result(
            str(job.path), "ok", label, {k: str(v) for k, v in written.items()},
            round(seconds, 3), round(frames / rate, 3) if frames else None,
            round(speed, 4) if speed is not None else None, precision=precision_ran(sep),
        )  # fmt: skip

    return work


def _audio_info(path: Path) -> tuple[int, int | None]:
    """(rate, frames) for the real-time factor; (1, None) when the file cannot tell."""
    from separator.inference.audio import audio_info

    try:
        return audio_info(path)
    except SeparatorError:  # reported by the separation itself
        return 1, None


class _Reporter:
    """Prints and records each result as it arrives (in the main thread)."""

    def __init__(self, console, json_out: bool, manifest: Path | None, shard: Shard) -> None:
        self.console, self.json_out, self.manifest, self.shard = console, json_out, manifest, shard
        self.failures = 0

    def __call__(self, result: Result) -> None:
        if result.status == "failed":
            self.failures += 1
            typer.echo(f"error: {result.error}", err=True)  # one line, even with -q
        else:
            self.console.print(summary_line(result), markup=False, soft_wrap=True)
        if self.json_out:
            typer.echo(json_line(result))
        if self.manifest is not None:
            try:
                append_record(self.manifest, {**result.record(), **shard_stamp(self.shard)})
            except OSError as e:
                typer.echo(f"error: {self.manifest}: cannot write ({e.strerror})", err=True)
                self.manifest = None


def _bars(console):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        TextColumn("RTF {task.fields[rtf]}"),
    )
    return Progress(*columns, console=console, transient=True)
