"""Safetensors checkpoints with their config inside, written atomically.

A model file is one ``.safetensors`` whose metadata carries
``unclip_class`` (``module:Class`` under the ``unclip`` package) and
``config`` (the model's frozen dataclass as JSON), so ``load_model(path)``
rebuilds the model with nothing but the path (house rule 4). Writes go to a
temporary file in the same directory, are fsynced, then renamed over the
target, so a crash mid-write never leaves a half-written file behind.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from unclip.config import from_dict, to_dict
from unclip.errors import CheckpointError, ConfigError, OutputError

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "atomic_write_files",
    "staged_dir",
    "replace_dir",
    "save_tensors",
    "load_tensors",
    "read_metadata",
    "save_model",
    "load_model",
]


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
    _fsync_dir(path.parent)


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


def _fsync_dir(directory: Path) -> None:
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
        _fsync_dir(directory)
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


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Atomically save a flat dict of tensors (made contiguous, detached, on CPU)."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_write(Path(path), lambda tmp: save_file(clean, str(tmp), metadata=meta))


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({_first_line(exc)})") from None


def read_metadata(path: Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def class_path(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_class(path: str) -> type:
    """Import ``module:Class``; only classes inside the ``unclip`` package are allowed."""
    module_name, _, qualname = path.partition(":")
    if not module_name.startswith("unclip.") or not qualname:
        raise CheckpointError(f"refusing to load class {path!r}: not an unclip model")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise CheckpointError(f"checkpoint names unknown model class {path!r}") from None
    return obj


def save_model(
    model: torch.nn.Module,
    path: Path,
    *,
    dtype: torch.dtype | None = None,
    extra_metadata: Mapping[str, str] | None = None,
) -> None:
    """Save ``model`` (built as ``Model(config)``) with its config in the metadata.

    ``dtype`` (e.g. ``torch.float16``) casts floating tensors for shipping.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"{type(model).__name__} has no .config; models must be built as Model(config)")
    state = model.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    state = _untie(state)
    metadata = {
        "format": "unclip",
        "unclip_class": class_path(model),
        "config": json.dumps(to_dict(config), sort_keys=True),
        **(extra_metadata or {}),
    }
    save_tensors(Path(path), state, metadata)


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage; clone tensors that alias an earlier one."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, tensor in state.items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        out[key] = tensor.clone() if ident in seen and tensor.numel() else tensor
        seen.add(ident)
    return out


def load_model(
    path: Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = torch.float32,
    expected: type | None = None,
    model_class: type | None = None,
) -> torch.nn.Module:
    """Rebuild a model saved by ``save_model`` from its path alone.

    ``expected`` checks the stored class is a subclass of it; ``model_class``
    builds that class instead of importing the stored one (its name must match).
    """
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != "unclip" or "unclip_class" not in meta:
        raise CheckpointError(f"{path} is not an unclip model file (no unclip metadata)")
    stored = meta["unclip_class"].rpartition(":")[2]
    if model_class is not None:
        if model_class.__qualname__ != stored:
            raise CheckpointError(f"{path} holds a {stored}, expected a {model_class.__qualname__}")
        cls = model_class
    else:
        cls = resolve_class(meta["unclip_class"])
    if expected is not None and not issubclass(cls, expected):
        raise CheckpointError(f"{path} holds a {cls.__name__}, expected a {expected.__name__}")
    config_cls = _config_class(cls)
    try:
        stored_config = json.loads(meta.get("config", ""))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} has an unreadable config in its metadata; the file is damaged") from None
    try:
        config = from_dict(config_cls, stored_config)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: the config in its metadata is invalid ({exc}); the file is damaged or "
                              "from another version of unclip") from None
    model = cls(config)
    state = load_tensors(path, device="cpu")
    damaged = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if damaged is not None:
        raise CheckpointError(f"{path} is damaged: tensor {damaged!r} holds NaN or infinite values; "
                              "re-export or re-download the model")
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{path} does not match {cls.__name__}: {what}")
    return model.to(device).eval()


def _config_class(cls: type) -> type:
    config_cls = getattr(cls, "config_class", None)
    if config_cls is None:
        hints = getattr(cls.__init__, "__annotations__", {})
        config_cls = hints.get("config")
    if isinstance(config_cls, str) or config_cls is None:
        raise CheckpointError(f"{cls.__name__} must declare config_class to be loadable")
    return config_cls
