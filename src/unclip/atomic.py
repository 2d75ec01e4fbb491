"""Atomic writes: a file or a folder appears whole or not at all.

Every writer of the project (weights, configs, images, reports, datasets) goes through
``atomic_write`` (temp file in the same directory + fsync + rename) or ``staged_dir``, so a
crash, a full disk or Ctrl-C mid-write never leaves a half-written file behind. This module
sits at the bottom of the layers: it imports nothing of unclip but the errors.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping

from unclip.errors import OutputError

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_files", "staged_dir", "replace_dir", "fsync_dir",
           "write_dir"]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` over ``path`` (same directory).

    An ``OSError`` (read-only or full filesystem, no permission, a parent that is a file) is raised
    as one-line ``OutputError`` naming ``path`` and the cause; no temporary file is left behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError.from_os_error(exc, path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.errno is None:  # not the filesystem: e.g. Pillow refusing to encode
            raise
        raise OutputError.from_os_error(exc, path) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_files(writers: Mapping[Path, Callable[[Path], None]]) -> list[Path]:
    """Write several files as a set: each to a temporary file beside it, then all renamed into place.

    If any write fails, none of the targets is touched (temporaries are removed) and the error is
    raised (``OutputError`` for filesystem errors, naming the file).
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, write in writers.items():
            path = Path(path)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.set.tmp")
            try:
                atomic_write(tmp, write)
            except OutputError as exc:  # name the file the user asked for, not the temporary one
                raise OutputError(path, exc.cause, "nothing was written") from None
            staged.append((tmp, path))
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    return [path for _, path in staged]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_dir(tmp: Path, target: Path) -> None:
    """Put the finished folder ``tmp`` at ``target``; an old ``target`` is moved aside first and
    removed only after the rename, so there is never a moment without a complete folder there."""
    tmp, target = Path(tmp), Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


@contextmanager
def staged_dir(directory: Path, *, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a hidden staging folder; when the block succeeds, its files appear in ``directory`` together.

    A missing ``directory`` is staged beside it and renamed into place whole. An existing one gets
    the files by rename, those named in ``last`` (e.g. an index such as ``generation.json``) last.
    If the block fails, nothing is added to ``directory``; filesystem errors become ``OutputError``.
    """
    directory = Path(directory)
    fresh = not directory.exists()
    try:
        if fresh:
            directory.parent.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".partial", dir=directory.parent))
        else:
            stage = Path(tempfile.mkdtemp(prefix=".partial-", dir=directory))
    except OSError as exc:
        raise OutputError.from_os_error(exc, directory) from None
    try:
        yield stage
        if fresh:
            os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes 0700
            os.replace(stage, directory)
        else:
            names = sorted(p.name for p in stage.iterdir())
            for name in [n for n in names if n not in last] + [n for n in last if n in names]:
                os.replace(stage / name, directory / name)
            stage.rmdir()
        fsync_dir(directory)
    except OutputError as exc:  # named the staging folder's file: name the folder the user gave
        raise OutputError(directory, exc.cause, "nothing was written") from None
    except OSError as exc:
        if exc.errno is None:
            raise
        raise OutputError.from_os_error(exc, directory, "nothing was written") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_dir(directory: str | Path, write: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Build a whole folder with ``write(tmp)`` in a hidden folder beside ``directory``, then put it in place
    (``replace_dir``): a failure leaves nothing, and an existing ``directory`` untouched. Without
    ``overwrite`` an existing, non-empty ``directory`` is a one-line ``UnclipError``."""
    from unclip.errors import UnclipError

    directory = Path(directory)
    if directory.exists() and not overwrite and (not directory.is_dir() or any(directory.iterdir())):
        raise UnclipError(f"{directory} already exists; choose a new directory or pass overwrite=True")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        write(tmp)
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory
