"""User-facing errors.

Every error a user can cause (bad config, missing file, corrupt checkpoint,
out-of-range argument) is raised as an ``UnclipError`` whose message is one line
saying what is wrong and how to fix it. The CLI prints that line and exits
non-zero; anything else is a bug and gets a traceback under ``--debug``.
"""


class UnclipError(Exception):
    """An error caused by the user's input; the message is shown as-is."""


class ConfigError(UnclipError):
    """A config file, preset or override is invalid."""


class CheckpointError(UnclipError):
    """A checkpoint or model directory is missing, corrupt or of the wrong kind."""


class DataError(UnclipError):
    """A dataset is missing, empty or unreadable."""
