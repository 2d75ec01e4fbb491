"""fp32 vs bf16-autocast training step time and peak memory on this CPU, through the real engine.

Each (model, precision) pair trains in a fresh process (so ``ru_maxrss`` is
that run's peak RSS) with ``unclip.train.engine.run_training`` on synthetic
data; step time comes from the engine's own ``metrics.csv`` (samples/s over
the logged windows after the first, which is warm-up). Runs alternate
fp32/bf16 and repeat, and the table reports medians, so both precisions see
the same machine load.

    OMP_NUM_THREADS=2 python bench/train_precision.py --repeats 3 --steps 30
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from unclip.train.config import TrainConfig
from unclip.train.stage import Stage


@dataclass(frozen=True)
class BenchModelConfig:
    kind: str = "transformer"   # transformer | conv
    width: int = 128
    depth: int = 2
    seq_len: int = 32           # transformer tokens
    image_size: int = 32        # conv input side


@dataclass(frozen=True)
class BenchConfig:
    model: BenchModelConfig = field(default_factory=BenchModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


MODELS = {
    "tiny-transformer": (BenchModelConfig("transformer", 128, 2, 32), 32),
    "small-transformer": (BenchModelConfig("transformer", 384, 6, 64), 16),
    "small-convnet-32px": (BenchModelConfig("conv", 64, 4, image_size=32), 32),
}


class BenchNet(nn.Module):
    """Token transformer (pre-norm encoder) or a residual conv net; both regress a target of their input shape."""

    config_class = BenchModelConfig

    def __init__(self, config: BenchModelConfig):
        super().__init__()
        self.config = config
        w = config.width
        if config.kind == "transformer":
            layer = nn.TransformerEncoderLayer(w, max(1, w // 64), 4 * w, dropout=0.0, batch_first=True,
                                               norm_first=True)
            self.body = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
            self.head = nn.Linear(w, w)
        else:
            blocks = [nn.Conv2d(3, w, 3, padding=1)]
            for i in range(config.depth):
                blocks += [nn.GroupNorm(8, w), nn.SiLU(), nn.Conv2d(w, w, 3, padding=1)]
            self.body = nn.Sequential(*blocks)
            self.head = nn.Conv2d(w, 3, 3, padding=1)

    def forward(self, x):  # (B, T, W) or (B, 3, H, W) -> same shape
        return self.head(self.body(x))


class Synthetic(Dataset):
    def __init__(self, shape, n=4096):
        self.shape, self.n = shape, n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        g = torch.Generator().manual_seed(index)
        return torch.randn(self.shape, generator=g)


class BenchStage(Stage):
    name = "bench"
    config_class = BenchConfig

    def build_model(self):
        return BenchNet(self.config.model)

    def build_dataset(self, split):
        m = self.config.model
        shape = (m.seq_len, m.width) if m.kind == "transformer" else (3, m.image_size, m.image_size)
        return Synthetic(shape)

    def loss(self, model, x, generator):
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        return (model(x + noise).float() - noise).pow(2).mean(), {}

    def export(self, model, out_dir):
        return Path(out_dir)


def worker(model_name: str, precision: str, steps: int, log_every: int) -> dict:
    model_cfg, batch = MODELS[model_name]
    train = TrainConfig(steps=steps, batch_size=batch, warmup_steps=2, mixed_precision=precision, ema_decay=0.999,
                        log_every=log_every, checkpoint_every=10**9, num_workers=0)
    from unclip.train.engine import run_training
    from unclip.train.metrics import read_metrics

    with tempfile.TemporaryDirectory() as tmp:
        run_training(BenchStage(BenchConfig(model_cfg, train)), Path(tmp) / "run")
        rows = read_metrics(Path(tmp) / "run" / "metrics.csv")[1:]   # the first window is warm-up
    step_ms = statistics.mean(batch / float(r["samples_per_s"]) * 1000 for r in rows)
    params = sum(p.numel() for p in BenchNet(model_cfg).parameters())
    return {"model": model_name, "precision": precision, "params": params, "batch": batch,
            "step_ms": step_ms, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "final_loss": float(rows[-1]["loss"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(*args.worker, args.steps, args.log_every)))
        return
    results = []
    for model_name in args.models:
        for _ in range(args.repeats):
            for precision in ("no", "bf16"):  # alternate so both see the same machine load
                out = subprocess.run([sys.executable, __file__, "--worker", model_name, precision, "--steps",
                                      str(args.steps), "--log-every", str(args.log_every)],
                                     capture_output=True, text=True, check=True).stdout
                result = json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[7:])
                results.append(result)
                print(f"  {model_name:20s} {precision:4s} {result['step_ms']:8.1f} ms/step", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps x {args.repeats} "
          "repeats, median step time (ms), peak RSS (MiB)")
    print(f"{'model':20s} {'params':>9s} {'batch':>5s} {'fp32 ms':>8s} {'bf16 ms':>8s} {'fp32/bf16':>9s} "
          f"{'fp32 MiB':>8s} {'bf16 MiB':>8s}")
    for model_name in args.models:
        def med(precision, key):
            return statistics.median(r[key] for r in results if r["model"] == model_name and r["precision"] == precision)
        first = next(r for r in results if r["model"] == model_name)
        fp32, bf16 = med("no", "step_ms"), med("bf16", "step_ms")
        print(f"{model_name:20s} {first['params']:9d} {first['batch']:5d} {fp32:8.1f} {bf16:8.1f} "
              f"{fp32 / bf16:8.2f}x {med('no', 'peak_rss_mb'):8.0f} {med('bf16', 'peak_rss_mb'):8.0f}")


if __name__ == "__main__":
    main()
