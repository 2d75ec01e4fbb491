"""The one training engine every stage uses (built on Hugging Face Accelerate).

``run_training(stage, out_dir)`` owns everything generic: devices and processes
(Accelerate reads ``accelerate launch`` / ``torchrun`` environments), bf16/fp16
autocast and fp16 loss scaling, AdamW with warm-up + cosine decay
(``unclip.train.optim``), gradient accumulation and clipping, EMA weights
(``unclip.train.ema``), atomic checkpoints with exact resume
(``unclip.train.state``), resumable seeded data (``unclip.train.loader``),
progress/CSV/TensorBoard (``unclip.train.metrics``), periodic
``stage.evaluate`` and the final ``stage.export`` of the EMA model.

Gradients are averaged over processes with one bucketed all-reduce per
optimiser step, after the accumulated micro-batches (what DDP does with
``no_sync``), instead of wrapping the model in DDP: stages then get the plain
module and may call any of its methods in ``loss`` (``model.encode_text``,
``model.config``), which DDP would not synchronise.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from unclip.config import to_dict
from unclip.errors import ConfigError, UnclipError
from unclip.precision import native_bf16
from unclip.train.config import TrainConfig
from unclip.train.ema import EMA
from unclip.train.loader import BatchStream
from unclip.train.metrics import MetricsLogger, parse_log_with
from unclip.train.optim import build_optimizer, lr_factor, optimizer_from_tensors, optimizer_to_tensors, set_lr
from unclip.train.runs import prepare_run_dir, stage_spec, write_run_info
from unclip.train.stage import Stage
from unclip.train.state import (TrainState, capture_rng, clean_partial, latest_checkpoint, load_checkpoint,
                                restore_rng, save_checkpoint)

__all__ = ["run_training", "TrainingInterrupted", "make_accelerator", "training_precision"]


class TrainingInterrupted(UnclipError):
    """SIGINT/SIGTERM stopped the run after a checkpoint was saved."""


def make_accelerator(cfg: TrainConfig):
    """An ``Accelerator`` for ``cfg``; CPU unless a GPU is present and ``cfg.cpu`` is false."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    use_cpu = cfg.cpu or not torch.cuda.is_available()
    if cfg.mixed_precision == "fp16" and use_cpu:
        raise ConfigError("train.mixed_precision=fp16 needs a GPU (loss scaling is CUDA-only); use bf16 on CPU")
    AcceleratorState._reset_state(reset_partial_state=False)  # allow several runs in one process
    return Accelerator(mixed_precision=training_precision(cfg.mixed_precision, use_cpu), cpu=use_cpu)


def training_precision(mixed_precision: str, use_cpu: bool) -> str:
    """Accelerate's ``mixed_precision`` for ``train.mixed_precision``: ``auto`` picks bf16 only where it is native."""
    if mixed_precision != "auto":
        return mixed_precision
    return "bf16" if native_bf16("cpu" if use_cpu else "cuda") else "no"


def _rank_seed(seed: int, rank: int) -> int:
    return (seed * 1_009 + rank * 1_000_003 + 1) % (2**31 - 1)


def _seed_process(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextmanager
def _isolated_rng():
    """Evaluation draws its own randomness without moving the training RNG streams."""
    np_state, py_state = np.random.get_state(), random.getstate()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class _StopSignal:
    """First SIGINT/SIGTERM asks for a checkpoint and a clean stop; a second SIGINT stops at once.

    A SIGTERM after a SIGINT is ignored: ``torchrun`` answers Ctrl-C by sending
    SIGTERM to its workers, which must still get to write their checkpoint.
    """

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is None:
            self.received = signum
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _distributed(acc) -> bool:
    return acc.num_processes > 1 and dist.is_available() and dist.is_initialized()


def _all_reduce_mean_grads(params: list[torch.nn.Parameter], world: int, bucket_bytes: int = 32 << 20) -> None:
    """Average gradients over processes (missing grads count as zeros), in flat buckets."""
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    bucket, size = [], 0
    for i, grad in enumerate(grads):
        bucket.append(grad)
        size += grad.numel() * grad.element_size()
        last = i == len(grads) - 1
        if size >= bucket_bytes or last or grads[i + 1].dtype != grad.dtype:
            flat = _flatten_dense_tensors(bucket)
            dist.all_reduce(flat)
            flat /= world
            for g, synced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                g.copy_(synced)
            bucket, size = [], 0


class _Run:
    """State of one training run; methods are the phases of ``run_training``."""

    def __init__(self, stage: Stage, out_dir: Path, resume: bool):
        self.stage, self.out_dir, self.resume = stage, Path(out_dir), resume
        self.cfg: TrainConfig = _train_config(stage)
        self.acc = make_accelerator(self.cfg)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.main = self.acc.is_main_process
        cfg, device = self.cfg, self.acc.device
        stage.run_dir = self.out_dir
        stage.setup(device)
        torch.manual_seed(cfg.seed)  # same initial weights on every rank (rank 0's are broadcast too)
        self.model = stage.build_model().to(device).train()
        if cfg.init:
            from unclip.train.init import init_weights

            init_weights(self.model, cfg.init, stage.name)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if _distributed(self.acc):
            for tensor in list(self.model.parameters()) + list(self.model.buffers()):
                dist.broadcast(tensor.data, 0)
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.raw_optimizer = build_optimizer(self.model, cfg)
        self.optimizer = self.acc.prepare_optimizer(self.raw_optimizer, device_placement=False)
        self.dataset = stage.build_dataset("train")
        if self.main:  # only now: a stage that cannot build its model or data leaves no run directory
            prepare_run_dir(self.out_dir, stage, resume=resume)
            clean_partial(self.out_dir)
            stage.started(self.out_dir)
        self.acc.wait_for_everyone()
        seed = _rank_seed(cfg.seed, self.rank)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        _seed_process(seed + 1)
        self.state = TrainState(world_size=self.world)
        self.checkpoint_path = self._restore() if resume else None
        self.stream = BatchStream(
            self.dataset, stage.collate, batch_size=cfg.batch_size, seed=cfg.seed, rank=self.rank,
            world_size=self.world, num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
            epoch=self.state.epoch, batch_index=self.state.batch_index)

    # --- checkpoints -----------------------------------------------------------
    def _restore(self) -> Path | None:
        path = latest_checkpoint(self.out_dir)
        if path is None:
            return None
        ckpt = load_checkpoint(path)
        try:
            self.model.load_state_dict(ckpt.model)
            if self.ema is not None:
                self.ema.load_state_dict(ckpt.ema if ckpt.ema is not None else ckpt.model)
        except RuntimeError as exc:
            raise UnclipError(f"{path} does not fit the model ({str(exc).splitlines()[0]}); "
                              "was the model config changed?") from None
        optimizer_from_tensors(self.raw_optimizer, *ckpt.optimizer)
        if self.acc.scaler is not None and "scaler" in ckpt.state.extra:
            self.acc.scaler.load_state_dict(ckpt.state.extra["scaler"])
        rng = ckpt.rng.get(str(self.rank))
        if rng is not None:
            restore_rng(rng, self.generator)
        else:  # more processes than when saved: fresh, still deterministic streams
            seed = _rank_seed(self.cfg.seed + ckpt.state.step, self.rank)
            self.generator.manual_seed(seed)
            _seed_process(seed + 1)
        self.state = ckpt.state
        if ckpt.state.world_size != self.world and self.main:
            print(f"warning: {path.name} was saved with {ckpt.state.world_size} process(es), resuming with "
                  f"{self.world}; the data order changes from here on")
        self.state.world_size = self.world
        return path

    def save(self) -> None:
        self.state.epoch, self.state.batch_index = self.stream.epoch, self.stream.batch_index
        if self.acc.scaler is not None:
            self.state.extra["scaler"] = self.acc.scaler.state_dict()
        rng = capture_rng(self.generator)
        per_rank = [rng]
        if _distributed(self.acc):
            per_rank = [None] * self.world
            dist.all_gather_object(per_rank, rng)
        if self.main:
            save_checkpoint(self.out_dir, self.state, model=self.model.state_dict(),
                            ema=self.ema.state_dict() if self.ema else None,
                            optimizer=optimizer_to_tensors(self.raw_optimizer), rng=per_rank,
                            keep=self.cfg.keep_checkpoints)
        self.acc.wait_for_everyone()

    # --- one optimiser step ----------------------------------------------------
    def step(self) -> dict[str, float]:
        from accelerate.utils import send_to_device

        cfg, acc = self.cfg, self.acc
        lr = cfg.lr * lr_factor(self.state.step, cfg)
        set_lr(self.raw_optimizer, lr)
        micro = [next(self.stream) for _ in range(cfg.grad_accum)]
        total = sum(m.size for m in micro)
        loss_sum = torch.zeros((), dtype=torch.float64, device=acc.device)
        logs: dict[str, float] = {}
        for m in micro:
            if m.batch is None:
                continue
            weight = m.size / total  # the step's gradient is the mean over all its samples
            batch = send_to_device(m.batch, acc.device, non_blocking=True)
            with acc.autocast():
                loss, named = self.stage.loss(self.model, batch, self.generator)
            acc.backward(loss.float() * weight)
            loss_sum += loss.detach().double() * weight
            for key, value in named.items():
                logs[key] = logs.get(key, 0.0) + float(value) * weight
        if _distributed(acc):
            _all_reduce_mean_grads(self.params, self.world)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = acc.clip_grad_norm_(self.params, max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        if self.ema is not None:
            self.ema.update(self.model, self.state.step)
        keys = sorted(logs)
        bad = sum(m.bad for m in micro)
        stats = torch.tensor([float(loss_sum), *[logs[k] for k in keys], bad, total],
                             dtype=torch.float64, device=acc.device)  # one all-reduce for all of it
        if _distributed(acc):
            dist.all_reduce(stats)
        values = stats.tolist()
        out = {"loss": values[0] / self.world, "lr": lr, "grad_norm": float(grad_norm),
               "bad": values[-2], "samples": values[-1], "error": next((m.error for m in micro if m.error), "")}
        out.update({k: v / self.world for k, v in zip(keys, values[1:-2])})
        return out

    def stop_requested(self, signals: _StopSignal) -> bool:
        flag = torch.tensor([1.0 if signals.received is not None else 0.0], device=self.acc.device)
        if _distributed(self.acc):
            dist.all_reduce(flag)
        return bool(flag.item() > 0)

    # --- evaluation and export -----------------------------------------------------
    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.model if self.ema is not None else self.model

    def evaluate(self, logger: MetricsLogger) -> None:
        if self.main:
            out = self.out_dir / "eval" / f"step_{self.state.step:08d}"
            out.mkdir(parents=True, exist_ok=True)
            model = self.eval_model
            was_training = model.training
            model.eval()
            with _isolated_rng(), torch.no_grad():
                metrics = self.stage.evaluate(model, out, self.state.step) or {}
            model.train(was_training)
            logger.log_eval(self.state.step, {k: float(v) for k, v in metrics.items()})
        self.acc.wait_for_everyone()

    def export(self) -> Path:
        final = self.out_dir / "final"
        if self.main:
            final.mkdir(parents=True, exist_ok=True)
            self.eval_model.eval()
            path = Path(self.stage.export(self.eval_model, final) or final)
            try:
                path = path.resolve().relative_to(self.out_dir.resolve())
            except ValueError:  # exported outside the run directory
                pass
            write_run_info(self.out_dir, self.stage, "finished", step=self.state.step, final=str(path))
        self.acc.wait_for_everyone()
        return final


def _train_config(stage: Stage) -> TrainConfig:
    cfg = getattr(stage.config, "train", None)
    if not isinstance(cfg, TrainConfig):
        raise UnclipError(f"stage {stage_spec(stage)!r} config has no 'train' section of type TrainConfig")
    return cfg


def run_training(stage: Stage, out_dir: str | Path, *, resume: bool = False) -> Path:
    """Train ``stage`` into run directory ``out_dir``; return ``out_dir/"final"`` (the exported EMA model).

    ``resume=True`` continues from the latest checkpoint in ``out_dir`` (or starts
    if there is none); a finished run is only re-exported if its export is missing.
    Raises ``TrainingInterrupted`` after saving a checkpoint on SIGINT/SIGTERM.
    """
    run = _Run(stage, Path(out_dir), resume)
    cfg = run.cfg
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    try:
        if run.state.step >= cfg.steps:
            finished = (run.out_dir / "final").is_dir() and any((run.out_dir / "final").iterdir())
            if run.main:
                print(f"{run.out_dir}: already finished at step {run.state.step}"
                      + ("" if finished else "; exporting the final model"))
            return run.out_dir / "final" if finished else run.export()
        return _train(run)
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)


_WINDOW_KEY = "metrics_window"  # TrainState.extra entry: {"sums": {name: float}, "steps": int, "seconds": float}


def _train(run: _Run) -> Path:
    cfg = run.cfg
    trackers = parse_log_with(cfg.log_with)  # every process, so a missing package stops all of them
    logger = MetricsLogger(run.out_dir, enabled=run.main, start_step=run.state.step, total_steps=cfg.steps,
                           run_name=stage_spec(run.stage), trackers=trackers, offline=cfg.log_offline,
                           config=to_dict(run.stage.config))
    if run.checkpoint_path is not None:
        logger.write(f"resumed from {run.checkpoint_path} (step {run.state.step}, epoch {run.state.epoch})")
    # The metrics window (sums since the last logged row) travels in the checkpoint, so a run resumed
    # off the log_every grid logs the rows an uninterrupted run logs (samples_per_s aside: it is a time).
    saved = run.state.extra.pop(_WINDOW_KEY, None) or {}
    window: dict[str, float] = dict(saved.get("sums", {}))
    window_steps, bad_messages = int(saved.get("steps", 0)), 0
    window_start = time.perf_counter() - float(saved.get("seconds", 0.0))
    try:
        with _StopSignal() as signals:
            while run.state.step < cfg.steps:
                result = run.step()
                step = run.state.step
                run.state.bad_samples += int(result["bad"])
                if result["bad"] and bad_messages < 5:
                    bad_messages += 1
                    logger.write(f"warning: skipped {int(result['bad'])} bad sample(s) at step {step}: "
                                 f"{result['error'] or 'on another process'}")
                for key, value in result.items():
                    if key not in ("lr", "grad_norm", "bad", "error"):
                        window[key] = window.get(key, 0.0) + value
                window_steps += 1
                logger.progress(step, result["loss"], result["lr"])
                stop = run.stop_requested(signals)
                if step % cfg.log_every == 0 or step == cfg.steps:  # not on a stop: the row would be extra
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    row = {"step": step, "epoch": run.stream.epoch, "lr": result["lr"],
                           "grad_norm": result["grad_norm"], "samples_per_s": window.pop("samples") / elapsed,
                           "bad_samples": run.state.bad_samples}
                    row.update({k: v / window_steps for k, v in window.items()})
                    logger.log(row)
                    window, window_steps, window_start = {}, 0, time.perf_counter()
                if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop:
                    run.state.extra[_WINDOW_KEY] = {"sums": dict(window), "steps": window_steps,
                                                    "seconds": time.perf_counter() - window_start}
                    run.save()
                    run.state.extra.pop(_WINDOW_KEY)
                if stop:
                    if run.main:
                        write_run_info(run.out_dir, run.stage, "interrupted", step=step)
                    name = signal.Signals(signals.received).name if signals.received else "a signal"
                    raise TrainingInterrupted(
                        f"stopped by {name} at step {step}; checkpoint saved, continue with: "
                        f"unclip train {stage_spec(run.stage)} --resume {run.out_dir}")
                if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                    run.evaluate(logger)
        run.evaluate(logger)
        return run.export()
    finally:
        logger.close()
