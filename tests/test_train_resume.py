"""Exact resume across real process deaths: SIGKILL mid-run, and SIGINT's clean stop with a checkpoint.

The CLI runs in a subprocess on the tiny stage (dropout, per-sample
augmentation and generator noise all on, so every RNG stream matters); the
resumed run's metrics.csv must equal an uninterrupted run's, digit for digit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers.stages import TinyStage, TinyStageConfig

from unclip.config import load_config
from unclip.train.engine import TrainingInterrupted, run_training
from unclip.train.metrics import read_metrics
from unclip.train.state import latest_checkpoint

TESTS = Path(__file__).resolve().parent
STAGE = "helpers.stages:TinyStage"
CONFIG = {
    "model": {"dropout": 0.2},
    "data": {"jitter": 0.1, "input_noise": 0.2, "delay": 0.03},
    "train": {"steps": 30, "batch_size": 8, "warmup_steps": 3, "checkpoint_every": 5, "log_every": 1,
              "ema_decay": 0.9, "deterministic": True},
}


def _env():
    return {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1"}


def _cli(*args, **kw):
    return [sys.executable, "-m", "unclip.cli", "train", *args]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


@pytest.fixture(scope="module")
def straight_losses(config_file, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    run_training(TinyStage(load_config(TinyStageConfig, config_file)), run_dir)
    return [row["loss"] for row in read_metrics(run_dir / "metrics.csv")]


def _start_and_wait_for(config_file, run_dir, checkpoint: str):
    proc = subprocess.Popen(_cli(STAGE, "--config", str(config_file), "--out", str(run_dir)), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / checkpoint / "state.json").is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached its checkpoint"
        time.sleep(0.02)
    return proc


def test_sigkill_then_resume_follows_the_same_losses(config_file, straight_losses, tmp_path, capsys):
    from unclip.cli import main

    run_dir = tmp_path / "run"
    proc = _start_and_wait_for(config_file, run_dir, "step_00000010")
    time.sleep(0.05)  # let it run past the checkpoint so that some steps are lost
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = latest_checkpoint(run_dir)
    assert killed_at is not None and killed_at.name < "step_00000030"
    assert main(["train", "--resume", str(run_dir)]) == 0  # in-process: saves a second interpreter start
    assert "resumed from" in capsys.readouterr().out
    resumed = [row["loss"] for row in read_metrics(run_dir / "metrics.csv")]
    assert resumed == straight_losses  # same values, every digit
    assert (run_dir / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_stops_cleanly(signum, config_file, straight_losses, tmp_path):
    stage = TinyStage(load_config(TinyStageConfig, config_file))
    original_loss, calls = stage.loss, {"n": 0}

    def loss_then_signal(model, batch, generator):
        calls["n"] += 1
        if calls["n"] == 8:  # as if the user pressed Ctrl-C (or the cluster sent SIGTERM) during step 8
            os.kill(os.getpid(), signum)
        return original_loss(model, batch, generator)

    stage.loss = loss_then_signal
    with pytest.raises(TrainingInterrupted, match=f"stopped by {signal.Signals(signum).name} at step 8; "
                                                  "checkpoint saved, continue with: unclip train"):
        run_training(stage, tmp_path)
    assert latest_checkpoint(tmp_path).name == "step_00000008"
    assert signal.getsignal(signal.SIGINT) is not None  # handlers restored
    run_training(TinyStage(load_config(TinyStageConfig, config_file)), tmp_path, resume=True)
    assert [row["loss"] for row in read_metrics(tmp_path / "metrics.csv")] == straight_losses


def test_cli_exits_130_after_an_interrupt(config_file, tmp_path, monkeypatch, capsys):
    from unclip.cli import main
    from unclip.train import engine

    def interrupted(stage, out_dir, *, resume=False):
        raise TrainingInterrupted("stopped by SIGINT at step 3; checkpoint saved, continue with: ...")

    monkeypatch.setattr(engine, "run_training", interrupted)
    assert main(["train", STAGE, "--config", str(config_file), "--out", str(tmp_path)]) == 130
    assert "stopped by SIGINT at step 3" in capsys.readouterr().out
