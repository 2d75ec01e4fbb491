"""Training checkpoints that never lose work: safetensors + one small JSON, no pickles.

A checkpoint is a directory ``RUNDIR/checkpoints/step_00001234/`` holding
``model.safetensors``, ``ema.safetensors``, ``optimizer.safetensors``
(``unclip.train.optim.optimizer_to_tensors``), ``rng.safetensors`` (torch,
CUDA and engine-generator states of every rank; numpy keys) and
``state.json`` (step, data position, numpy/python RNG scalars, loss-scaler
state). It is written into a hidden temporary directory, each file fsynced,
then the directory is renamed into place: a crash at any moment leaves
either the complete new checkpoint or none, never a half-written one, and
the previous checkpoints stay loadable. Only the last ``keep`` are kept.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unclip.atomic import atomic_write_text, fsync_dir
from unclip.checkpoint import load_tensors, read_metadata, save_tensors
from unclip.errors import CheckpointError, OutputError

__all__ = ["TrainState", "Checkpoint", "capture_rng", "restore_rng", "save_checkpoint",
           "list_checkpoints", "latest_checkpoint", "load_checkpoint", "clean_partial"]

_STEP_DIR = re.compile(r"^step_(\d{8})$")


@dataclass
class TrainState:
    """Non-tensor progress of a run (goes to ``state.json``)."""

    step: int = 0               # optimiser steps taken
    epoch: int = 0              # data position: current epoch ...
    batch_index: int = 0        # ... and micro-batches consumed in it (per rank)
    bad_samples: int = 0        # samples skipped because loading raised (all ranks)
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)   # loss scaler etc.


@dataclass
class Checkpoint:
    path: Path
    state: TrainState
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizer: tuple[dict[str, torch.Tensor], str]
    rng: dict[str, Any]          # rank -> RNG state (see capture_rng)


# --- RNG ------------------------------------------------------------------------
def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """This process's RNG states: torch (CPU, CUDA), the engine generator, numpy, python."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy": [name, int(pos), int(has_gauss), float(cached)],
        "python": [version, list(py_state), gauss_next],
    }


def restore_rng(rng: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"][: torch.cuda.device_count()])
    generator.set_state(rng["generator"])
    name, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, rng["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, py_state, gauss_next = rng["python"]
    random.setstate((version, tuple(py_state), gauss_next))


def _rng_to_files(per_rank: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for rank, rng in enumerate(per_rank):
        tensors[f"rank{rank}.torch"] = rng["torch"]
        tensors[f"rank{rank}.generator"] = rng["generator"]
        tensors[f"rank{rank}.numpy_keys"] = rng["numpy_keys"]
        for i, state in enumerate(rng["cuda"]):
            tensors[f"rank{rank}.cuda{i}"] = state
        scalars[str(rank)] = {"numpy": rng["numpy"], "python": rng["python"], "cuda": len(rng["cuda"])}
    return tensors, scalars


def _rng_from_files(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for rank, info in scalars.items():
        out[rank] = {
            "torch": tensors[f"rank{rank}.torch"],
            "generator": tensors[f"rank{rank}.generator"],
            "numpy_keys": tensors[f"rank{rank}.numpy_keys"],
            "cuda": [tensors[f"rank{rank}.cuda{i}"] for i in range(info["cuda"])],
            "numpy": info["numpy"],
            "python": info["python"],
        }
    return out


# --- write ----------------------------------------------------------------------
def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage (tied weights): clone aliases of an earlier tensor."""
    seen, out = set(), {}
    for key, tensor in state.items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.numel())
        out[key] = tensor.clone() if ident in seen and tensor.numel() else tensor
        seen.add(ident)
    return out


def save_checkpoint(run_dir: Path, state: TrainState, *, model: dict[str, torch.Tensor],
                    ema: dict[str, torch.Tensor] | None, optimizer: tuple[dict[str, torch.Tensor], str],
                    rng: list[dict[str, Any]], keep: int) -> Path:
    """Write checkpoint ``step_{state.step:08d}`` atomically, then prune to the last ``keep`` (<=0: keep all)."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{state.step:08d}"
    if (final / "state.json").is_file():
        return final  # same step already saved (e.g. SIGINT right after a periodic save)
    tmp = root / f".tmp-step_{state.step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise OutputError.from_os_error(exc, final, "the earlier checkpoints are kept") from None
    try:
        save_tensors(tmp / "model.safetensors", _untie(model), {"format": "unclip-train"})
        if ema is not None:
            save_tensors(tmp / "ema.safetensors", _untie(ema), {"format": "unclip-train"})
        opt_tensors, opt_json = optimizer
        save_tensors(tmp / "optimizer.safetensors", opt_tensors, {"optimizer": opt_json})
        rng_tensors, rng_scalars = _rng_to_files(rng)
        save_tensors(tmp / "rng.safetensors", rng_tensors, {"rng": json.dumps(rng_scalars)})
        record = {**asdict(state), "time": time.time()}
        atomic_write_text(tmp / "state.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
        if final.exists():  # an incomplete leftover without state.json
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    except OutputError as exc:  # named a file of the hidden temporary folder: name the checkpoint
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(final, exc.cause, "the earlier checkpoints are kept") from None
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno is None:  # not the filesystem's
            raise
        raise OutputError.from_os_error(exc, final, "the earlier checkpoints are kept") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def clean_partial(run_dir: Path) -> None:
    """Remove temporary directories left by a crash during a checkpoint write."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for path in root.glob(".tmp-step_*"):
            shutil.rmtree(path, ignore_errors=True)


# --- read -----------------------------------------------------------------------
def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / "state.json").is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    try:
        record = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path / 'state.json'} ({exc}); delete that checkpoint to fall back") from None
    record.pop("time", None)
    state = TrainState(**record)
    ema_path = path / "ema.safetensors"
    opt_meta = read_metadata(path / "optimizer.safetensors")
    rng_meta = read_metadata(path / "rng.safetensors")
    return Checkpoint(
        path=path,
        state=state,
        model=load_tensors(path / "model.safetensors"),
        ema=load_tensors(ema_path) if ema_path.is_file() else None,
        optimizer=(load_tensors(path / "optimizer.safetensors"), opt_meta["optimizer"]),
        rng=_rng_from_files(load_tensors(path / "rng.safetensors"), json.loads(rng_meta["rng"])),
    )
