"""fp32 vs bf16-autocast training step time and peak memory on this CPU.

Step time: in one process, the same training step the engine takes (autocast
forward + loss, backward, gradient clipping, AdamW, EMA update) alternates
between fp32 and bf16 step by step, so both precisions see the same machine
load (this CPU is shared); the table gives medians and the median of the
per-pair ratios. Peak memory: each (model, precision) then trains for a few
steps through ``unclip.train.engine.run_training`` in a fresh process, whose
``VmHWM`` is that run's peak RSS.

    OMP_NUM_THREADS=2 python bench/train_precision.py --steps 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
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


def _setup(model_name: str):
    model_cfg, batch = MODELS[model_name]
    train = TrainConfig(steps=10**6, batch_size=batch, warmup_steps=0, ema_decay=0.999)
    stage = BenchStage(BenchConfig(model_cfg, train))
    torch.manual_seed(0)
    return stage, stage.build_model().train(), train


def paired_step_times(model_name: str, steps: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per training step, fp32 and bf16 interleaved (order swapped every pair)."""
    from unclip.train.ema import EMA
    from unclip.train.optim import build_optimizer

    stage, model, train = _setup(model_name)
    optimizer, ema = build_optimizer(model, train), EMA(model, train.ema_decay)
    data = stage.build_dataset("train")
    generator = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {"no": [], "bf16": []}
    for i in range(warmup + steps):
        batch = torch.stack([data[(i * train.batch_size + j) % len(data)] for j in range(train.batch_size)])
        for precision in (("no", "bf16") if i % 2 == 0 else ("bf16", "no")):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss, _ = stage.loss(model, batch, generator)
            loss.float().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema.update(model, i + 1)
            if i >= warmup:
                times[precision].append(time.perf_counter() - start)
    return times


def engine_peak_rss(model_name: str, precision: str, steps: int) -> dict:
    """Train through the engine in this (fresh) process; peak RSS of the whole run."""
    from unclip.train.engine import run_training

    stage, _, train = _setup(model_name)
    train = dataclasses.replace(train, steps=steps, warmup_steps=1, mixed_precision=precision, log_every=steps,
                                checkpoint_every=steps)
    with tempfile.TemporaryDirectory() as tmp:
        run_training(BenchStage(BenchConfig(stage.config.model, train)), Path(tmp) / "run")
    return {"peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny-transformer", "small-convnet-32px"],
                        choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per precision")
    parser.add_argument("--rss-steps", type=int, default=4, help="engine steps for the peak-RSS runs")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(engine_peak_rss(*args.worker, args.rss_steps)))
        return
    rows = []
    for name in args.models:
        times = paired_step_times(name, args.steps)
        rss = {}
        for precision in ("no", "bf16"):
            out = subprocess.run([sys.executable, __file__, "--worker", name, precision,
                                  "--rss-steps", str(args.rss_steps)], capture_output=True, text=True, check=True)
            rss[precision] = json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))[7:])
        _, model, train = _setup(name)
        row = {"model": name, "params": sum(p.numel() for p in model.parameters()), "batch": train.batch_size,
               "fp32_ms": 1000 * statistics.median(times["no"]), "bf16_ms": 1000 * statistics.median(times["bf16"]),
               "speedup": statistics.median(a / b for a, b in zip(times["no"], times["bf16"])),
               "fp32_rss_mb": rss["no"]["peak_rss_mb"], "bf16_rss_mb": rss["bf16"]["peak_rss_mb"], "times": times}
        rows.append(row)
        print(f"  {name}: fp32 {row['fp32_ms']:.1f} ms, bf16 {row['bf16_ms']:.1f} ms", file=sys.stderr)
    if args.json:  # with the host: CPU model and flags (AVX512-BF16 / AMX decide what bf16 costs)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import report

        Path(args.json).write_text(json.dumps({"hardware": report.hardware(), "rows": rows}, indent=2))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} paired steps; "
          "medians; speedup = median of per-pair fp32/bf16; peak RSS of an engine run in a fresh process")
    print(f"{'model':20s} {'params':>9s} {'batch':>5s} {'fp32 ms':>8s} {'bf16 ms':>8s} {'speedup':>8s} "
          f"{'fp32 MiB':>8s} {'bf16 MiB':>8s}")
    for r in rows:
        print(f"{r['model']:20s} {r['params']:9d} {r['batch']:5d} {r['fp32_ms']:8.1f} {r['bf16_ms']:8.1f} "
              f"{r['speedup']:7.2f}x {r['fp32_rss_mb']:8.0f} {r['bf16_rss_mb']:8.0f}")


if __name__ == "__main__":
    main()
