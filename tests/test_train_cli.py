"""``unclip train``: one-line errors with exit code 2, shorthands, resume of a finished run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unclip.cli import main

TESTS = Path(__file__).resolve().parent
STAGE = "helpers.stages:TinyStage"
SMALL = ["--set", "train.steps=3", "--set", "train.batch_size=8", "--set", "train.checkpoint_every=2"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("argv, message", [
    (["train", "nosuchstage", "--out", "x"], "unknown training stage 'nosuchstage' (choose from:"),
    (["train", STAGE, "--set", "train.bogus=1", "--out", "x"], "unknown config key 'bogus'"),
    (["train", STAGE, "--set", "train.steps=many", "--out", "x"], "expected an integer"),
    (["train", STAGE, "--set", "train.steps=0", "--out", "x"], "steps must be >= 1"),
    (["train", STAGE, "--config", "no/such.yaml", "--out", "x"], "config file not found"),
    (["train", STAGE], "--out RUNDIR is required"),
    (["train", "--out", "x"], "name the stage to train"),
    (["train", "--resume", "nowhere"], "is not a training run"),
    (["train", "no.such.module:Stage", "--out", "x"], "cannot import stage"),
    (["train", STAGE, "--data", "d", "--images", "i", "--out", "x"], "either --data or --images"),
    (["train", STAGE, "--set", "train.mixed_precision=fp8", "--out", "x"], "is not one of"),
])
def test_user_errors_are_one_line_with_exit_code_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in _error_line(capsys)


def test_bad_config_in_a_fresh_process_exits_nonzero_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "unclip.cli", "train", STAGE, "--set", "model.widht=3",
                             "--out", str(tmp_path / "run")], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        result.stderr.strip()] and "unknown config key 'widht' in TinyStageConfig.model" in result.stderr
    assert not (tmp_path / "run").exists()


def test_images_shorthand_and_resume_of_a_finished_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", STAGE, *SMALL, "--images", "pics/", "--out", str(run_dir)]) == 0
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["data"]["path"] == "pics/" and saved["data"]["image_only"] is True
    assert "final model:" in capsys.readouterr().out
    assert main(["train", STAGE, "--resume", str(run_dir), "--data", "other/"]) == 0  # --set/--data on resume
    assert json.loads((run_dir / "config.json").read_text())["data"]["path"] == "other/"
    assert "already finished at step 3" in capsys.readouterr().out
    assert main(["train", "--resume", str(run_dir), "--out", "elsewhere"]) == 2
    assert "drop --config/--out" in _error_line(capsys)
    assert main(["train", "tiny", "--resume", str(run_dir)]) == 2
    assert "is a 'helpers.stages:TinyStage' run, not 'tiny'" in _error_line(capsys)
    # a finished run can be trained further
    assert main(["train", "--resume", str(run_dir), "--set", "train.steps=5"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((run_dir / "run.json").read_text())["step"] == 5
