"""Inference precision: fp32, or bf16 autocast where the hardware computes bf16 natively.

``precision="auto"`` (the pipelines' default) picks bf16 on CUDA GPUs that support it and on CPUs
with native bf16 instructions (AVX512-BF16 or AMX), where oneDNN's bf16 matmuls and convolutions
run 2–4× faster than fp32; everywhere else it picks fp32, because emulated bf16 is slower.

bf16 applies to the networks only (``torch.autocast``: matmuls, convolutions and attention in bf16,
norms and softmax in fp32). The samplers cast every network output to fp32 before guidance and the
update (``unclip.diffusion.samplers.predict``), so the diffusion arithmetic is fp32 in both modes.
Results are deterministic per seed in each mode, but bf16 and fp32 images differ slightly; the
chosen precision is recorded in each output's settings. Quality is checked in docs/performance.md.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from unclip.errors import UnclipError

__all__ = ["PRECISIONS", "native_bf16", "resolve_precision", "autocast"]

PRECISIONS = ("auto", "fp32", "bf16")


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to tell, stay with fp32
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: str | torch.device) -> bool:
    """True where bf16 matmuls/convolutions run natively on ``device`` (so bf16 is faster than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_has_bf16()


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``"auto"`` → ``"bf16"`` or ``"fp32"`` for ``device``; ``"fp32"``/``"bf16"`` pass through."""
    if precision not in PRECISIONS:
        raise UnclipError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device: str | torch.device):
    """Context manager running the networks in ``precision`` (resolved first) on ``device``."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
