"""Running `separate` over many files: which files, where their stems go, worker threads, Ctrl-C.

Files are planned first (output paths, "skipped (exists)", two inputs that would write the same
stems), then separated by `jobs` worker threads. The main thread only waits and reports, so it
answers Ctrl-C (or SIGTERM) at once: it cancels the batch, which deletes every temporary and
claim in flight (`separator.inference.cancel`), prints "interrupted" and returns 130 (143 for
SIGTERM) while the workers drop out at their next block. A file's stems are renamed into place
together, so each file ends with all its stems or none of this run's.
"""

from __future__ import annotations

import json
import queue
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import typer

from separator.cli.common import cli_message
from separator.errors import SeparatorError
from separator.inference.cancel import Cancel, Cancelled

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".aif", ".aiff",
                  ".mp4", ".wma", ".webm", ".mka", ".oga", ".wv"}  # fmt: skip


@dataclass
class Job:
    """One input file and where its stems go."""

    path: Path
    names: dict[str, str]  # template values: {model}, and {track} with its sub-folder
    targets: dict[str, Path] = field(default_factory=dict)


@dataclass
class Result:
    """What happened to one file (a line of `--json` and of the manifest)."""

    input: str
    status: str  # ok, skipped, failed
    model: str
    stems: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    audio_seconds: float | None = None
    rtf: float | None = None
    error: str | None = None
    precision: str | None = None  # the one that ran: fp32, bf16, or bf16/fp32 for a mix

    def record(self) -> dict:
        return dict(self.__dict__)


class Terminated(KeyboardInterrupt):
    """SIGTERM (torchrun stopping its workers, a scheduler's kill): cleaned up like Ctrl-C."""


# --- which files -------------------------------------------------------------------------------
def expand_inputs(
    inputs: list[Path], *, recursive: bool, exclude: Path | None = None
) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """(file, sub-folder under its input folder) for every audio file, and (input, error) for
    every input that is missing or holds no audio. Hidden files and folders, and `exclude`
    (the output folder), are skipped."""
    files, errors = [], []
    skip = exclude.resolve() if exclude is not None else None
    for path in inputs:
        if path.is_dir():
            found = [
                (p, _sub_folder(p, path))
                for p in sorted(path.rglob("*") if recursive else path.iterdir())
                if _is_audio(p, path) and not (skip and skip in p.resolve().parents)
            ]
            if not found:
                errors.append((path, f"{path}: folder holds no audio files"))
            files += found
        elif not path.exists():
            errors.append((path, f"{path}: no such file"))
        else:
            files.append((path, ""))
    return files, errors


def _sub_folder(p: Path, root: Path) -> str:
    rel = p.parent.relative_to(root).as_posix()
    return "" if rel == "." else rel


def _is_audio(p: Path, root: Path) -> bool:
    hidden = any(part.startswith(".") for part in p.relative_to(root).parts)
    return p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and not hidden


def plan_jobs(
    files: list[tuple[Path, str]], targets_of: Callable[[Job], dict[str, Path]], model: str
) -> tuple[list[Job], list[Result]]:
    """Output paths of every file; a file whose stems an earlier file of this batch writes, or
    whose template fails, is a failed result."""
    from separator.inference.separator import track_name

    jobs, failed, owner = [], [], {}
    for path, sub in files:
        names = {"model": model}
        if sub:
            names["track"] = f"{sub}/{track_name(path)}"
        job = Job(path, names)
        try:
            job.targets = targets_of(job)
        except SeparatorError as e:
            failed.append(Result(str(path), "failed", model, error=cli_message(str(e))))
            continue
        clash = next((t for t in job.targets.values() if t in owner), None)
        if clash is not None:
            error = f"{clash}: already exists (written by {owner[clash]} in this run)"
            failed.append(Result(str(path), "failed", model, error=error))
            continue
        owner.update({t: path for t in job.targets.values()})
        jobs.append(job)
    return jobs, failed


def skipped(job: Job, model: str) -> Result | None:
    """A "skipped (exists)" result if every output of `job` exists already."""
    if job.targets and all(t.exists() for t in job.targets.values()):
        stems = {k: str(v) for k, v in job.targets.items()}
        return Result(str(job.path), "skipped", model, stems=stems)
    return None


# --- running them --------------------------------------------------------------------------------
def run_jobs(
    jobs: list[Job],
    work: Callable[[Job, Cancel], Result],
    report: Callable[[Result], None],
    *,
    threads: int,
) -> int | None:
    """Run `work` on every job in `threads` worker threads, `report`ing each result in the main
    thread; returns None, or 130/143 when interrupted by SIGINT/SIGTERM (everything in flight
    cleaned up, the workers left to drop out)."""
    cancel = Cancel()
    todo: queue.Queue[Job] = queue.Queue()
    for job in jobs:
        todo.put(job)
    done: queue.Queue[Result | BaseException] = queue.Queue()

    def worker() -> None:
        while not cancel.cancelled:
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put(work(job, cancel))
            except Cancelled:
                return
            except BaseException as e:  # a bug: hand it to the main thread, with its traceback
                done.put(e)
                return

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(min(threads, len(jobs)))]
    try:
        with _sigterm_raises():
            for t in pool:
                t.start()
            for _ in jobs:
                result = _next(done)
                if isinstance(result, BaseException):
                    raise result
                report(result)
    except KeyboardInterrupt as e:
        cancel.cancel()
        typer.echo("terminated" if isinstance(e, Terminated) else "interrupted", err=True)
        return 143 if isinstance(e, Terminated) else 130
    except BaseException:
        cancel.cancel()
        raise
    return None


def _next(done: queue.Queue):
    while True:  # short waits: a signal is handled between them even where a wait would block it
        try:
            return done.get(timeout=0.2)
        except queue.Empty:
            continue


class _SigtermContext:
    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


def _raise_terminated(signum, frame):
    raise Terminated


def _sigterm_raises() -> _SigtermContext:
    """While running, SIGTERM raises `Terminated` in the main thread (main thread only)."""
    return _SigtermContext()


# --- reporting ----------------------------------------------------------------------------------
def summary_line(result: Result) -> str:
    """The human line of a finished file (errors are printed separately, as `error: ...`)."""
    name = Path(result.input).name
    if result.status == "skipped":
        return f"{name}: skipped (exists)"
    folder = _common_folder([Path(p) for p in result.stems.values()])
    rtf = f"{result.rtf:.2f}" if result.rtf is not None else "-"
    ran = f", {result.precision}" if result.precision else ""
    return f"{name} → {folder}: {', '.join(result.stems)} ({result.seconds:.1f} s, RTF {rtf}{ran})"


def precision_ran(sep) -> str:
    """The precision a separator runs: "fp32", "bf16", or "bf16/fp32" for an ensemble or chain
    whose models differ."""
    return "/".join(dict.fromkeys(_precisions(sep)))


def _precisions(sep) -> list[str]:
    parts = getattr(sep, "members", None) or getattr(sep, "steps", None)
    if parts:
        return [p for part in parts for p in _precisions(part)]
    return [getattr(sep, "precision", None) or "fp32"]


def json_line(result: Result, **extra) -> str:
    return json.dumps({**result.record(), **extra}, ensure_ascii=False)


def _common_folder(paths: list[Path]) -> Path:
    import os

    return Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path(".")


def rtf(seconds: float, frames: int | None, rate: int) -> float | None:
    """Real-time factor: processing seconds per audio second (below 1: faster than real time)."""
    if not frames or rate <= 1:
        return None
    return seconds / (frames / rate)
