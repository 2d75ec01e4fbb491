"""Two CPU processes (torchrun, gloo) train the tiny stage to the same weights as one process.

Global batch 8 either way: 1 process x batch 8, or 2 processes x batch 4
(each rank takes its half of every global batch, gradients are averaged by
all-reduce). Tolerance: 1e-6 absolute on every weight and EMA weight after
8 AdamW steps (float32 sums in a different order; observed ~1e-8).
Only rank 0 writes: every process records, through Python audit hooks, what
it opens for writing, renames, creates or removes in the run directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers.stages import TinyStage, TinyStageConfig

from unclip.config import from_dict
from unclip.train.engine import run_training
from unclip.train.metrics import read_metrics
from unclip.train.state import latest_checkpoint, load_checkpoint

TESTS = Path(__file__).resolve().parent
TRAIN = {"steps": 8, "warmup_steps": 2, "checkpoint_every": 4, "log_every": 1, "ema_decay": 0.9, "grad_clip": 0.5}
DATA = {"size": 48, "jitter": 0.1}   # per-sample augmentation is seeded per sample, so it matches too


def test_two_processes_match_one_process_and_only_rank0_writes(tmp_path):
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    run_training(TinyStage(from_dict(TinyStageConfig, {"train": {**TRAIN, "batch_size": 8}, "data": DATA})), one_dir)

    config = json.dumps({"train": {**TRAIN, "batch_size": 4}, "data": DATA})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(TESTS / "helpers" / "train_script.py"), str(two_dir), config, "--audit", str(tmp_path / "audit")],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    one = load_checkpoint(latest_checkpoint(one_dir))
    two = load_checkpoint(latest_checkpoint(two_dir))
    assert two.state.world_size == 2 and two.state.step == one.state.step == 8
    assert sorted(two.rng) == ["0", "1"]  # every rank's RNG state is in the checkpoint
    worst = max(max((two.model[k] - one.model[k]).abs().max().item(), (two.ema[k] - one.ema[k]).abs().max().item())
                for k in one.model)
    print(f"max |2 processes - 1 process| over weights and EMA weights: {worst:.3g}")
    for name in one.model:
        torch.testing.assert_close(two.model[name], one.model[name], atol=1e-6, rtol=0)
        torch.testing.assert_close(two.ema[name], one.ema[name], atol=1e-6, rtol=0)
    assert not torch.equal(two.model["net.0.weight"], load_checkpoint(
        one_dir / "checkpoints" / "step_00000004").model["net.0.weight"])  # it did train
    one_loss = [float(r["loss"]) for r in read_metrics(one_dir / "metrics.csv")]
    two_loss = [float(r["loss"]) for r in read_metrics(two_dir / "metrics.csv")]
    assert len(two_loss) == 8  # one writer: no duplicated rows
    torch.testing.assert_close(torch.tensor(two_loss), torch.tensor(one_loss), atol=1e-6, rtol=0)

    rank0 = json.loads((tmp_path / "audit.rank0.json").read_text())
    rank1 = json.loads((tmp_path / "audit.rank1.json").read_text())
    assert rank1 == []
    assert any("checkpoints" in w for w in rank0) and any("metrics.csv" in w for w in rank0)
