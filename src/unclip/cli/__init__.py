"""The ``unclip`` command.

Each sub-command lives in its own module under ``unclip.cli`` and exposes
``register(subparsers)``, which adds one or more parsers and sets
``func=callable(args) -> int | None`` on them. Errors a user can cause are
``UnclipError``s: printed as one line, exit code 2; so are filesystem errors (an ``OSError``
with an errno: read-only or full disk, no permission), named by path. Anything else is a bug:
one line plus a hint, full traceback only with ``--debug``.

Threads: before anything imports torch, the command sets ``OMP_WAIT_POLICY=PASSIVE`` unless the
user set it. torch's CPU build uses GNU OpenMP, whose idle threads spin at every barrier; on a
machine where another process is busy they steal its cores and a multi-threaded forward slows down
several-fold. PASSIVE threads sleep instead (measured in docs/performance.md, "Threads under load").
This is the command's choice, made here at the entry point; library code reads no environment
variables (house rule 6), and a program that imports ``unclip`` (not ``unclip.cli``) keeps its own.
"""

from __future__ import annotations

import os

# GNU OpenMP reads this once, when torch loads it: it must be set before the first ``import torch``
# (nothing above or in ``unclip``/``unclip.errors`` imports torch; the sub-commands below do).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
from typing import Sequence  # noqa: E402

from unclip import __version__  # noqa: E402
from unclip.errors import UnclipError  # noqa: E402

# Order is the order shown in ``unclip --help``. A module that does not exist
# yet is skipped, so the command always starts.
COMMAND_MODULES = ("generate", "edits", "data", "train", "embed", "eval", "models", "import_model", "serve")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep hand-written examples as written and show defaults."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unclip",
        description="Text-to-image generation on CLIP latents (unCLIP and CLIP-VQDiffusion).",
        epilog="Run 'unclip COMMAND --help' for a command's options and examples.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"unclip {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module_name = f"unclip.cli.{name}"
        if importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except UnclipError as exc:
        if debug:
            raise
        _error_line(str(exc))
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, OSError) and exc.errno is not None:  # the filesystem, not the code
            where = f"{exc.filename}: " if exc.filename else ""
            _error_line(f"{where}{exc.strerror or type(exc).__name__}")
            return 2
        text = str(exc).strip().splitlines()  # a bug: keep it to one line unless asked
        _error_line(f"internal error: {type(exc).__name__}: {text[0] if text else ''} "
                    "(re-run with --debug for the traceback)")
        return 1


def _error_line(message: str) -> None:
    """Print ``error: MESSAGE`` as one line that any terminal can show (a path may hold non-UTF-8 bytes)."""
    line = " ".join(message.splitlines()).encode("utf-8", "backslashreplace").decode("utf-8")
    print(f"error: {line}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
