"""Plot an evaluation metric of training runs against the wall-clock hours they had trained.

    python scripts/plot_training_curve.py runs/decoder-emoji64-latent --metric variation_recognised \
        --point "pixel decoder 32 px (shipped before),4.5,0.05" --out docs/images/emoji-recognisability-curve.png

Hours come from each run's metrics.csv (rows of ``log_every`` steps at ``samples_per_s``), values from its
eval.csv. ``--point LABEL,HOURS,VALUE`` adds a measured reference point. Prints the table it plots.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def hours_at_steps(run: Path) -> dict[int, float]:
    """Wall-clock hours of training reached at each logged step of ``run``."""
    config = json.loads((run / "config.json").read_text())
    batch, hours, out, last = config["train"]["batch_size"], 0.0, {0: 0.0}, 0
    with open(run / "metrics.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            step = int(row["step"])
            hours += (step - last) * batch / max(float(row["samples_per_s"]), 1e-9) / 3600
            out[step], last = hours, step
    return out


def metric_curve(run: Path, metric: str) -> list[tuple[int, float, float]]:
    """(step, hours, value) for every evaluation of ``metric`` in ``run``."""
    hours = hours_at_steps(run)
    steps = sorted(hours)
    rows = []
    with open(run / "eval.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["name"] == metric:
                step = int(row["step"])
                nearest = max(s for s in steps if s <= step)
                rows.append((step, hours[nearest], float(row["value"])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--metric", default="variation_recognised")
    parser.add_argument("--chance", default=None, help="a second metric drawn dashed, e.g. variation_chance")
    parser.add_argument("--label", action="append", default=None, help="one per run (default: run dir name)")
    parser.add_argument("--point", action="append", default=[], help="LABEL,HOURS,VALUE reference points")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    labels = args.label or [run.name for run in args.runs]
    for run, label in zip(args.runs, labels):
        curve = metric_curve(run, args.metric)
        for step, hours, value in curve:
            print(f"{label}\tstep {step}\t{hours:.2f} h\t{args.metric} {value:.3f}")
        line, = ax.plot([h for _, h, _ in curve], [v for _, _, v in curve], marker="o", label=label)
        if args.chance:
            chance = metric_curve(run, args.chance)
            ax.plot([h for _, h, _ in chance], [v for _, _, v in chance], linestyle="--", color=line.get_color(),
                    label=f"{label}: {args.chance}")
    for point in args.point:
        label, hours, value = point.rsplit(",", 2)
        ax.scatter([float(hours)], [float(value)], marker="x", s=60, label=label, zorder=3)
    ax.set_xlabel("training wall-clock hours (2-core CPU)")
    ax.set_ylabel(args.metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
