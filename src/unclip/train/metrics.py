"""What a run shows and records: a tqdm bar, ``metrics.csv``, ``eval.csv`` and experiment trackers.

Only the main process writes (``enabled=False`` elsewhere makes every call a
no-op). ``metrics.csv`` is wide: ``step, epoch, loss, lr, grad_norm,
samples_per_s, bad_samples`` and the stage's named floats; values are
written with ``repr`` so a resumed run can be compared digit for digit.
On resume the rows after the checkpoint's step are dropped first, so the
file never holds two histories.

Trackers are Accelerate's (``accelerate.tracking``), named by ``train.log_with`` (``unclip train
--log-with``): ``tensorboard`` (``RUNDIR/tensorboard``), ``wandb`` (``RUNDIR/wandb``) and ``mlflow``
(``RUNDIR/mlruns``), a comma list, or ``none``; the default ``""`` is TensorBoard if it is installed.
With ``train.log_offline`` (the default) nothing leaves the machine: wandb runs in offline mode (``wandb
sync RUNDIR/wandb/offline-run-*`` uploads later) and MLflow writes to a local file store. They log
the same rows as ``metrics.csv`` (``train/<name>``) and ``eval.csv`` (``eval/<name>``), plus the run's
flattened config as hyper-parameters. ``metrics.csv`` is always written.
"""

from __future__ import annotations

import csv
import importlib
import io
import warnings
from pathlib import Path
from typing import Any, Mapping

from unclip.checkpoint import atomic_write_text
from unclip.errors import UnclipError

__all__ = ["MetricsLogger", "read_metrics", "TRACKERS", "open_trackers", "parse_log_with"]

# name -> (package it needs, how to install it)
TRACKERS = {
    "tensorboard": ("tensorboard", "pip install -c constraints.txt -e '.[tensorboard]'"),
    "wandb": ("wandb", "pip install wandb"),
    "mlflow": ("mlflow", "pip install mlflow"),
}

BASE_COLUMNS = ["step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "bad_samples"]


def read_metrics(path: Path) -> list[dict[str, str]]:
    """Rows of a ``metrics.csv`` as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def parse_log_with(log_with: str) -> list[str]:
    """``train.log_with`` → tracker names: "" → tensorboard if installed; "none" → none; else a comma list."""
    names = [n.strip().lower() for n in str(log_with).split(",") if n.strip()]
    if not names:
        return ["tensorboard"] if _installed("tensorboard") else []
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise UnclipError(f"unknown tracker {unknown[0]!r} in train.log_with (choose from: {', '.join(TRACKERS)}, "
                          "or none)")
    for name in names:
        package, install = TRACKERS[name]
        if not _installed(package):
            raise UnclipError(f"--log-with {name} needs the {package} package: {install}")
    return list(dict.fromkeys(names))


def _installed(package: str) -> bool:
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True


def open_trackers(names: list[str], run_dir: Path, *, run_name: str, start_step: int, offline: bool,
                  config: Mapping[str, Any] | None = None) -> list:
    """Started Accelerate trackers for ``names`` (see the module docstring), their hyper-parameters logged."""
    from accelerate import tracking

    run_dir = Path(run_dir)
    project = run_name.replace(":", "-").replace("/", "-") or "unclip"
    trackers = []
    for name in names:
        if name == "tensorboard":
            tracker = tracking.TensorBoardTracker("tensorboard", str(run_dir), purge_step=start_step or None)
        elif name == "wandb":
            (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
            tracker = tracking.WandBTracker(project, dir=str(run_dir), name=run_dir.name,
                                            mode="offline" if offline else "online")
        else:
            if offline:  # a local file store under the run, not a tracking server
                import mlflow

                mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
            tracker = tracking.MLflowTracker(experiment_name=project, run_name=run_dir.name)
        tracker.start()
        trackers.append(tracker)
    hparams = _flatten(config or {})
    for tracker in trackers:
        if hparams:
            tracker.store_init_configuration(hparams)
    return trackers


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} → {"train.lr": 1e-3}; anything but bool/int/float/str becomes a string."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


class MetricsLogger:
    """``trackers``: tracker names (``parse_log_with``) or started ``accelerate.tracking.GeneralTracker``s."""

    def __init__(self, run_dir: Path, *, enabled: bool, start_step: int, total_steps: int, run_name: str = "",
                 trackers: list | None = None, offline: bool = True, config: Mapping[str, Any] | None = None):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.csv_path = self.run_dir / "metrics.csv"
        self.eval_path = self.run_dir / "eval.csv"
        self.columns: list[str] | None = None
        self.bar = None
        self.trackers: list = []
        self._warned: set[str] = set()
        if not enabled:
            return
        self._truncate(self.csv_path, start_step)
        self._truncate(self.eval_path, start_step)
        if self.csv_path.is_file():
            with open(self.csv_path, newline="", encoding="utf-8") as handle:
                self.columns = next(csv.reader(handle), None)
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, desc=run_name or "train", unit="step",
                        dynamic_ncols=True, smoothing=0.1)
        names = [t for t in (trackers if trackers is not None else parse_log_with("")) if isinstance(t, str)]
        self.trackers = open_trackers(names, self.run_dir, run_name=run_name, start_step=start_step,
                                      offline=offline, config=config)
        self.trackers += [t for t in trackers or [] if not isinstance(t, str)]

    @staticmethod
    def _truncate(path: Path, start_step: int) -> None:
        """Keep the header and the rows with step <= start_step (they belong to the resumed history)."""
        if not path.is_file():
            return
        if start_step == 0:  # a fresh start (or a run that never checkpointed): no history to keep
            path.unlink()
            return
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        if not rows:
            return
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= start_step]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(kept)
        atomic_write_text(path, buffer.getvalue())

    def progress(self, step: int, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.2e}", refresh=False)

    def log(self, row: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        if self.columns is None:
            extra = sorted(k for k in row if k not in BASE_COLUMNS)
            self.columns = BASE_COLUMNS + extra
            with open(self.csv_path, "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle, lineterminator="\n").writerow(self.columns)
        for key in row:
            if key not in self.columns and key not in self._warned:
                self._warned.add(key)
                warnings.warn(f"metric {key!r} appeared after the first log row; not written to metrics.csv")
        with open(self.csv_path, "a", newline="", encoding="utf-8") as handle:
            csv.writer(handle, lineterminator="\n").writerow([_fmt(row.get(c, "")) for c in self.columns])
        values = {f"train/{key}": value for key, value in row.items() if key != "step"}
        for tracker in self.trackers:
            tracker.log(values, step=int(row["step"]))

    def log_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled or not metrics:
            return
        new = not self.eval_path.is_file()
        with open(self.eval_path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            if new:
                writer.writerow(["step", "name", "value"])
            for name, value in sorted(metrics.items()):
                writer.writerow([step, name, _fmt(value)])
        for tracker in self.trackers:
            tracker.log({f"eval/{name}": float(value) for name, value in metrics.items()}, step=step)
        self.write(f"step {step}: " + ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(metrics.items())))

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def _fmt(value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)
