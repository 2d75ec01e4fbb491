"""Safetensors checkpoints with their config inside, written atomically.

A model file is one ``.safetensors`` whose metadata carries
``unclip_class`` (``module:Class`` under the ``unclip`` package) and
``config`` (the model's frozen dataclass as JSON), so ``load_model(path)``
rebuilds the model with nothing but the path (house rule 4). Writes go to a
temporary file in the same directory, are fsynced, then renamed over the
target (``unclip.atomic``, re-exported here), so a crash mid-write never leaves a
half-written file behind.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from unclip.atomic import atomic_write, atomic_write_files, atomic_write_text, replace_dir, staged_dir
from unclip.config import from_dict, to_dict
from unclip.errors import CheckpointError, ConfigError

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
