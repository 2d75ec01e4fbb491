"""Experiment trackers through Accelerate (train.log_with / --log-with), beside metrics.csv (issue 20).

TensorBoard is tested for real when it is installed; wandb and mlflow through stand-in modules that
record what Accelerate's trackers call, so neither package is needed."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest

from unclip.cli import main
from unclip.config import from_dict
from unclip.errors import ConfigError, UnclipError
from unclip.train.engine import run_training
from unclip.train.metrics import MetricsLogger, parse_log_with, read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")
STAGE = "helpers.stages:TinyStage"


def _stage(**train):
    from helpers.stages import TinyStage, TinyStageConfig

    base = {"steps": 4, "batch_size": 8, "warmup_steps": 1, "checkpoint_every": 100, "log_every": 1}
    return TinyStage(from_dict(TinyStageConfig, {"train": base | train}))


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attributes)
    return module


def test_log_with_names_are_checked(monkeypatch):
    assert parse_log_with("none") == [] and parse_log_with(" none ") == []
    with pytest.raises(ConfigError, match="unknown tracker 'neptune'"):
        from helpers.stages import TinyStageConfig

        from_dict(TinyStageConfig, {"train": {"log_with": "tensorboard,neptune"}})
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "tensorboard", _module("tensorboard"))  # present or not in this install
    with pytest.raises(UnclipError, match="--log-with wandb needs the wandb package: pip install wandb"):
        parse_log_with("wandb")
    with pytest.raises(UnclipError, match="needs the mlflow package"):
        parse_log_with("tensorboard,mlflow")


def test_missing_tracker_package_stops_the_run_before_step_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main(["train", STAGE, "--out", str(tmp_path / "run"), "--log-with", "wandb"]) == 2
    assert "needs the wandb package" in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_tensorboard_through_accelerate_keeps_metrics_csv(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    run_training(_stage(log_with="tensorboard"), run)
    rows = read_metrics(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3, 4]
    assert [round(e.value, 5) for e in losses] == [round(float(r["loss"]), 5) for r in rows]
    assert "eval/val_mse" in events.Tags()["scalars"]


def test_none_writes_no_tracker_files(tmp_path):
    run = tmp_path / "run"
    run_training(_stage(log_with="none"), run)
    assert (run / "metrics.csv").is_file() and not (run / "tensorboard").exists()


class _Recorder:
    def __init__(self):
        self.calls = []


def test_wandb_runs_offline_in_the_run_directory(tmp_path, monkeypatch):
    import accelerate.tracking  # noqa: F401  (imported before the stand-in module appears)

    record = _Recorder()

    class Run:
        def log(self, values, step=None, **kwargs):
            record.calls.append(("log", step, dict(values)))

        def finish(self):
            record.calls.append(("finish",))

    def init(project=None, **kwargs):
        record.calls.append(("init", project, kwargs))
        return Run()

    config = types.SimpleNamespace(update=lambda values, allow_val_change=False: record.calls.append(("config", values)))
    monkeypatch.setitem(sys.modules, "wandb", _module("wandb", init=init, config=config))
    run = tmp_path / "run"
    assert main(["train", STAGE, "--out", str(run), "--log-with", "wandb", "--set", "train.steps=3",
                 "--set", "train.checkpoint_every=100", "--set", "train.log_every=1"]) == 0
    kind = [c[0] for c in record.calls]
    assert kind[0] == "init" and kind[1] == "config" and kind[-1] == "finish"
    _, project, kwargs = record.calls[0]
    assert kwargs["mode"] == "offline" and kwargs["dir"] == str(run) and project
    assert record.calls[1][1]["train.log_with"] == "wandb" and "train.lr" in record.calls[1][1]
    logged = [c for c in record.calls if c[0] == "log"]
    assert [c[1] for c in logged if "train/loss" in c[2]] == [1, 2, 3]
    assert len(read_metrics(run / "metrics.csv")) == 3   # metrics.csv is still written


def test_mlflow_writes_to_a_local_store_under_the_run(tmp_path, monkeypatch):
    import accelerate.tracking  # noqa: F401

    record = _Recorder()
    validation = types.SimpleNamespace(MAX_PARAM_VAL_LENGTH=6000, MAX_PARAMS_TAGS_PER_BATCH=100)
    fake = _module(
        "mlflow",
        set_tracking_uri=lambda uri: record.calls.append(("uri", uri)),
        search_experiments=lambda filter_string=None: [],
        create_experiment=lambda name, artifact_location=None, tags=None: record.calls.append(("experiment", name))
        or "1",
        start_run=lambda **kwargs: record.calls.append(("start", kwargs)) or object(),
        log_params=lambda params: record.calls.append(("params", params)),
        log_metrics=lambda metrics, step=None: record.calls.append(("metrics", step, metrics)),
        end_run=lambda: record.calls.append(("end",)),
        utils=types.SimpleNamespace(validation=validation))
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    run = tmp_path / "run"
    run_training(_stage(log_with="mlflow", steps=2), run)
    assert record.calls[0] == ("uri", (run / "mlruns").resolve().as_uri())
    assert [c[1] for c in record.calls if c[0] == "metrics" and "train/loss" in c[2]] == [1, 2]
    assert record.calls[-1] == ("end",) and any(c[0] == "params" for c in record.calls)


def test_any_accelerate_tracker_object_receives_the_rows(tmp_path):
    from accelerate.tracking import GeneralTracker

    class Fake(GeneralTracker):
        name, requires_logging_directory, main_process_only = "fake", False, False

        def __init__(self):
            super().__init__()
            self.rows, self.finished = [], False

        @property
        def tracker(self):
            return self

        def log(self, values, step=None, **kwargs):
            self.rows.append((step, values))

        def finish(self):
            self.finished = True

    fake = Fake()
    logger = MetricsLogger(tmp_path, enabled=True, start_step=0, total_steps=2, trackers=[fake])
    logger.log({"step": 1, "loss": 0.5})
    logger.log_eval(1, {"score": 2.0})
    logger.close()
    assert fake.rows == [(1, {"train/loss": 0.5}), (1, {"eval/score": 2.0})] and fake.finished
    assert read_metrics(tmp_path / "metrics.csv")[0]["loss"] == "0.5"
