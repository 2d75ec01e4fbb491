"""Checking a device name before anything is built on it: one line instead of a torch traceback."""

from __future__ import annotations

import torch

from unclip.errors import UnclipError

__all__ = ["check_device"]


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine, or a one-line ``UnclipError``."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UnclipError(f"device {str(device)!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cpu":
        return parsed
    backend = {"cuda": torch.cuda, "mps": getattr(torch.backends, "mps", None)}.get(parsed.type,
                                                                                    getattr(torch, parsed.type, None))
    available = getattr(backend, "is_available", None)
    if not callable(available) or not available():
        raise UnclipError(f"device {str(device)!r} is not available on this machine (no {parsed.type.upper()} "
                          "device or no torch support for it); use --device cpu")
    count = getattr(backend, "device_count", None)
    if parsed.index is not None and callable(count) and parsed.index >= count():
        raise UnclipError(f"device {str(device)!r} does not exist: this machine has {count()} "
                          f"{parsed.type} device(s), numbered from 0")
    return parsed
