"""What every command shares: the two Typer apps, one-line errors, exit codes, flag names.

The CLI is thin: it parses options, calls the library, and turns `SeparatorError` into one line on
stderr and exit code 2. Library messages name arguments in backticks (`config`, `force=True`);
`cli_message` shows the flag a CLI user types instead.
"""

from __future__ import annotations

import os
import re

import typer
from typer import TyperException

from separator.cli.memory import keep_freed_memory
from separator.errors import SeparatorError

app = typer.Typer(
    name="separator",
    help="Music source separation toolkit: convert checkpoints, evaluate, train, manage models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

separate_app = typer.Typer(
    name="separate",
    help="Separate songs into stems: separate song.wav --stems vocals,drums",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Library argument (as written in messages) -> the flag that sets it.
ARGUMENT_FLAGS = {
    "config": "--config",
    "checkpoint": "--config",
    "force=True": "--force",
    "filename": "--filename",
    "device": "--device",
    "method": "--ensemble",
    "weights": "--weights",
    "model='a,b'": "--model a,b",
    "model": "--model",
    "model_type": "--model-type",
    "metrics": "--metrics",
    "estimates": "--estimates",
    "baseline": "--baseline",
    "overlap": "--overlap",
    "batch_size": "--batch-size",
    "precision": "--precision",
    "clip": "--clip",
    "fmt": "--format",
    "bits": "--bits",
    "bitrate": "--bitrate",
    "sample_rate": "--sample-rate",
    "normalize": "--normalize",
    "clip_level": "--clip-mode",
    "preset": "--mp3-preset",
    "residual": "--other-method",
    "shifts": "--shifts",
    "segment": "--segment",
    "stems": "--stems",
    "resume=True": "--resume",
    "output_dir": "output_dir=DIR",
}


def cli_message(message: str) -> str:
    """A library message with its `argument` names replaced by CLI flags."""
    return re.sub(r"`([^`]+)`", lambda m: ARGUMENT_FLAGS.get(m.group(1), m.group(0)), message)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one error line (no traceback) and return the Exit to raise."""
    typer.echo(f"error: {cli_message(message)}", err=True)
    return typer.Exit(code)


def exit_process(code: int) -> None:
    """Exit with `code`. After Ctrl-C or SIGTERM (130/143), worker threads may still be inside a
    model call: exit at once (outputs are already cleaned up) rather than wait for them, and
    without the interpreter's shutdown, which can abort while torch threads run."""
    import sys

    if code in (130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def run_app(typer_app: typer.Typer, argv: list[str] | None) -> int:
    """Run a Typer app in-process and return its exit code (errors as one line each)."""
    keep_freed_memory()
    try:
        # Without standalone mode, click returns the code of a typer.Exit instead of raising.
        rc = typer_app(args=argv, standalone_mode=False, prog_name=typer_app.info.name)
        if isinstance(rc, int):
            return rc
    except typer.Exit as e:
        return e.exit_code
    except SeparatorError as e:
        typer.echo(f"error: {cli_message(str(e))}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 1
    except TyperException as e:  # usage errors (typer's own click): message and exit code 2
        show = getattr(e, "show", None)
        if show is not None:
            show()
        return int(getattr(e, "exit_code", 2))
    return 0
