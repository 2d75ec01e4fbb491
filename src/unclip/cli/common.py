"""Small helpers shared by the CLI modules."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

from unclip.errors import OutputError, UnclipError


def add_command(subparsers, name: str, *, help: str, description: str, examples: str, func):
    """Add a sub-command with a description and an 'examples' epilog."""
    from unclip.cli import HelpFormatter

    parser = subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog="examples:\n" + examples.strip("\n"),
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise UnclipError(f"path not found: {path}")
    return path


def check_writable(directory: Path, flag: str) -> None:
    """Refuse an output folder that cannot take a file (read-only, no permission) before any work is done."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".unclip-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError.from_os_error(exc, directory, f"choose another {flag}") from None


def int_in_range(low: int, high: int):
    """argparse type: an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range [{low}, {high}]")
        return value

    return parse


def float_in_range(low: float, high: float):
    """argparse type: a number in [low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range [{low}, {high}]")
        return value

    return parse


@contextmanager
def plain_warnings():
    """Show warnings (e.g. skipped bad samples) as one 'warning: ...' line each, without source locations."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
