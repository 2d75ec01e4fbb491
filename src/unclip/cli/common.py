"""Small helpers shared by the CLI modules."""

from __future__ import annotations

import argparse
from pathlib import Path

from unclip.errors import UnclipError


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
