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


class OutputError(UnclipError):
    """An output cannot be written (read-only or full filesystem, a path through a file, no permission).

    The message is 'cannot write PATH: CAUSE' plus an optional note (e.g. 'nothing was written').
    """

    def __init__(self, path: object, cause: str = "", note: str = ""):
        self.path, self.cause = path, cause
        super().__init__(f"cannot write {path}" + (f": {cause}" if cause else "") + (f"; {note}" if note else ""))

    @classmethod
    def from_os_error(cls, exc: OSError, path: object = None, note: str = "") -> "OutputError":
        return cls(path if path is not None else (exc.filename or "?"), exc.strerror or type(exc).__name__, note)
