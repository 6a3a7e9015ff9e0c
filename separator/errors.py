"""The one exception type for errors a user can cause (bad file, bad config, bad option)."""


class SeparatorError(Exception):
    """A user-facing error. Its message names the file or setting and how to fix it.

    The CLI prints it as one line and exits with code 2, without a traceback.
    """


class ConfigError(SeparatorError, ValueError):
    """A model or recipe configuration is invalid (unknown key, bad value, inconsistent fields)."""


class CheckpointError(SeparatorError):
    """A checkpoint cannot be read, is unsafe, or does not fit the model config."""
