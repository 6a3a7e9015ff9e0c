"""The exception types for errors a user can cause (bad file, bad config, bad argument).

Messages name the file or setting and how to fix it. They speak of the library's arguments,
written in backticks (`config`, `force=True`); the CLI shows its own flags in their place
(`separator.cli.common.ARGUMENT_FLAGS`).
"""


class SeparatorError(Exception):
    """A user-facing error. Its message names the file or setting and how to fix it.

    The CLI prints it as one line and exits with code 2, without a traceback.
    """


class ConfigError(SeparatorError, ValueError):
    """A model or recipe configuration is invalid (unknown key, bad value, inconsistent fields)."""


class CheckpointError(SeparatorError):
    """A checkpoint cannot be read, is unsafe, or does not fit the model config."""
