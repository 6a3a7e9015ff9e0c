"""Command line: `separate` (the main job) and `separator` (convert, evaluate, train, models).

One module per command group (`separate`, `models`, `evaluate`, `train`, `convert`, `info`,
`ensemble`); `common` holds the apps, the one-line errors and the exit codes.
`python -m separator.cli` runs `separator` (for torchrun).
"""

from __future__ import annotations

from separator.cli import convert, ensemble, evaluate, info, models, separate, train  # noqa: F401
from separator.cli.common import app, exit_process, run_app, separate_app


@app.callback()
def _root() -> None:
    """Music source separation toolkit (separate audio with the `separate` command)."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of `separator`; returns the exit code (for in-process tests)."""
    return run_app(app, argv)


def separate_main(argv: list[str] | None = None) -> int:
    """Entry point of `separate`; returns the exit code (for in-process tests)."""
    return run_app(separate_app, argv)


def console_main() -> None:  # pragma: no cover - thin wrapper for the console script
    exit_process(main())


def separate_console_main() -> None:  # pragma: no cover - thin wrapper for the console script
    exit_process(separate_main())
