"""Generic training settings shared by every stage (the ``train:`` section of a preset)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000                     # optimiser steps (after gradient accumulation)
    batch_size: int = 32                  # per device, per micro-step
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.1             # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0                # max global grad norm; 0 disables
    ema_decay: float = 0.999              # 0 disables EMA
    # "auto": bf16 where the device computes it natively (unclip.precision.native_bf16: CUDA with bf16,
    # AVX512-BF16/AMX CPUs), else "no" -- on AVX2-only CPUs bf16 is emulated and many times slower than fp32
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "no"
    seed: int = 0
    num_workers: int = 0
    deterministic: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    eval_every: int = 0                   # 0: only at the end
    cpu: bool = False                     # train on CPU even when a GPU is present
    init: str = ""                        # start from these weights (unclip.train.init); "" = from scratch
    log_with: str = ""                    # trackers: tensorboard, wandb, mlflow (comma list), none; "" = tensorboard if installed
    log_offline: bool = True              # wandb offline mode, MLflow to a local store under RUNDIR (unclip.train.metrics)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be >= 1")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        if not 0 <= self.ema_decay < 1:
            raise ValueError("ema_decay must be in [0, 1)")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.eval_every < 0:
            raise ValueError("checkpoint_every and log_every must be >= 1, eval_every >= 0")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.num_workers < 0:
            raise ValueError("warmup_steps, grad_clip and num_workers must be >= 0")
        known = ("tensorboard", "wandb", "mlflow", "none")
        unknown = [n for n in (x.strip().lower() for x in self.log_with.split(",")) if n and n not in known]
        if unknown:
            raise ValueError(f"log_with: unknown tracker {unknown[0]!r} (choose from: {', '.join(known)})")
