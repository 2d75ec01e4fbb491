"""What a run shows and records: a tqdm bar, ``metrics.csv``, ``eval.csv`` and TensorBoard.

Only the main process writes (``enabled=False`` elsewhere makes every call a
no-op). ``metrics.csv`` is wide: ``step, epoch, loss, lr, grad_norm,
samples_per_s, bad_samples`` and the stage's named floats; values are
written with ``repr`` so a resumed run can be compared digit for digit.
On resume the rows after the checkpoint's step are dropped first, so the
file never holds two histories. TensorBoard is used if it is installed
(``pip install tensorboard``), under ``RUNDIR/tensorboard``.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Mapping

from unclip.checkpoint import atomic_write_text

__all__ = ["MetricsLogger", "read_metrics"]

BASE_COLUMNS = ["step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "bad_samples"]


def read_metrics(path: Path) -> list[dict[str, str]]:
    """Rows of a ``metrics.csv`` as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


class MetricsLogger:
    def __init__(self, run_dir: Path, *, enabled: bool, start_step: int, total_steps: int, run_name: str = ""):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.csv_path = self.run_dir / "metrics.csv"
        self.eval_path = self.run_dir / "eval.csv"
        self.columns: list[str] | None = None
        self.bar = None
        self.tensorboard = None
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
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # optional dependency
            SummaryWriter = None
        if SummaryWriter is not None:
            self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step or None)

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
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "step":
                    self.tensorboard.add_scalar(f"train/{key}", value, int(row["step"]))

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
        if self.tensorboard is not None:
            for name, value in metrics.items():
                self.tensorboard.add_scalar(f"eval/{name}", float(value), step)
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
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def _fmt(value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)
