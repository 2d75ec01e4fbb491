"""Training from a plain image folder to the end, and metrics.csv rows that survive any interruption (issue 22)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from PIL import Image

from helpers.stages import TinyStage, TinyStageConfig
from unclip.config import from_dict
from unclip.train.engine import TrainingInterrupted, run_training
from unclip.train.metrics import read_metrics
from unclip.train.state import latest_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_vq_trains_on_a_plain_folder_to_the_end(tmp_path, capsys):
    from unclip.cli import main

    folder = tmp_path / "pictures"  # no train/val/test sub-folders, no captions
    folder.mkdir()
    for i in range(10):
        Image.new("RGB", (20, 20), (25 * i, 120, 255 - 25 * i)).save(folder / f"{i}.png")
    run = tmp_path / "run"
    code = main(["train", "vq", "--config", str(CONFIGS / "vq" / "tiny.yaml"), "--data", str(folder),
                 "--set", "train.steps=4", "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "evaluating on the train split instead" in err
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert (run / "final" / "model.safetensors").is_file()


# --- metrics.csv: the same rows with or without interruptions ------------------------------------
CONFIG = {"data": {"jitter": 0.1, "input_noise": 0.2},
          "train": {"steps": 12, "batch_size": 8, "warmup_steps": 2, "log_every": 4, "checkpoint_every": 3,
                    "ema_decay": 0.9, "deterministic": True}}


def _stage() -> TinyStage:
    return TinyStage(from_dict(TinyStageConfig, CONFIG))


def _rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv without samples_per_s (a wall-clock rate, never the same twice)."""
    return [{k: v for k, v in row.items() if k != "samples_per_s"} for row in read_metrics(run_dir / "metrics.csv")]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    run_training(_stage(), run_dir)
    rows = _rows(run_dir)
    assert [row["step"] for row in rows] == ["4", "8", "12"]
    return rows


def _failing_at(call: int, action):
    stage, calls = _stage(), {"n": 0}
    original = stage.loss

    def loss(model, batch, generator):
        calls["n"] += 1
        if calls["n"] == call:
            action()
        return original(model, batch, generator)

    stage.loss = loss
    return stage


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_off_the_log_grid_adds_no_row_and_loses_no_step(straight, tmp_path, signum):
    stage = _failing_at(6, lambda: os.kill(os.getpid(), signum))  # stops after step 6: between rows 4 and 8
    with pytest.raises(TrainingInterrupted):
        run_training(stage, tmp_path)
    assert latest_checkpoint(tmp_path).name == "step_00000006"
    assert [row["step"] for row in _rows(tmp_path)] == ["4"]  # no extra row at step 6
    run_training(_stage(), tmp_path, resume=True)
    assert _rows(tmp_path) == straight  # row 8 averages steps 5-8, not only 7-8


def test_a_crash_after_an_off_grid_checkpoint_resumes_to_the_same_rows(straight, tmp_path):
    def crash():
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        run_training(_failing_at(11, crash), tmp_path)  # the last checkpoint is step 9 (off the grid of 4)
    assert latest_checkpoint(tmp_path).name == "step_00000009"
    run_training(_stage(), tmp_path, resume=True)
    assert _rows(tmp_path) == straight
