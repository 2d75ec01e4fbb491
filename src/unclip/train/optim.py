"""AdamW with linear warm-up + cosine decay, and a pickle-free optimiser state.

The learning-rate schedule is a pure function of the optimiser step
(``lr_factor``), so resuming needs only the step: there is no scheduler object
with a counter to save (house rule 1 applied to schedules). Warm-up is linear
from ~0 to ``lr`` over ``warmup_steps``; the cosine of SGDR (Loshchilov &
Hutter, arXiv 1608.03983, eq. 5 with one cycle, no restarts) then decays it
to ``lr * min_lr_ratio`` at ``steps``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from unclip.errors import CheckpointError, UnclipError
from unclip.train.config import TrainConfig

__all__ = ["lr_factor", "build_optimizer", "set_lr", "optimizer_to_tensors", "optimizer_from_tensors"]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` for optimiser step ``step`` (0-based, the step about to be taken)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    decay_steps = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter, arXiv 1711.05101); no weight decay on biases, norms, embeddings' 1-D params."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise UnclipError("the stage's model has no trainable parameters (check build_model)")
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """Flatten ``optimizer.state_dict()`` into tensors (``state.<param>.<name>``) + a JSON string.

    Non-tensor per-parameter values and the param groups go into the JSON, so
    the checkpoint is safetensors + JSON with no pickle anywhere. The tensors
    alias the optimiser's live state (write them out before the next step).
    """
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = []
    for gi, group in enumerate(state["param_groups"]):
        plain = {}
        for key, value in group.items():
            if isinstance(value, torch.Tensor):
                tensors[f"group.{gi}.{key}"] = value
            else:
                plain[key] = list(value) if isinstance(value, tuple) else value
        groups.append(plain)
    meta = {"param_groups": groups, "scalars": scalars, "state_keys": sorted(str(k) for k in state["state"])}
    return tensors, json.dumps(meta)


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta_json: str) -> None:
    """Inverse of ``optimizer_to_tensors``: load the flattened state into ``optimizer``."""
    meta = json.loads(meta_json)
    state: dict[int, dict[str, Any]] = {int(k): {} for k in meta["state_keys"]}
    for key, value in tensors.items():
        kind, index, name = key.split(".", 2)
        if kind == "state":
            state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for gi, group in enumerate(meta["param_groups"]):
        group = {k: tuple(v) if k == "betas" else v for k, v in group.items()}
        for key, value in tensors.items():
            if key.startswith(f"group.{gi}."):
                group[key.split(".", 2)[2]] = value
        groups.append(group)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"optimizer state does not match the model ({exc}); was the model config changed?") from None
