"""Export the EMA weights of a run's latest (or a chosen) checkpoint, without stopping or resuming the run.

    python scripts/export_checkpoint.py runs/decoder-emoji64-latent --out runs/decoder-emoji64-latent-at

Writes what the run's own final export would write (``OUT/decoder/...`` for a decoder), from the
checkpoint's EMA weights (or the raw weights when the run keeps no EMA): a look at a long run mid-way,
e.g. to assemble and evaluate a pipeline while the run goes on. ``--step N`` picks ``step_0000000N``; ``--set`` changes the config for the export.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from unclip.train.runs import resume_stage
from unclip.train.state import latest_checkpoint, load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--step", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change the run's config for the export, e.g. data.autoencoder=runs/ae-emoji64-ft "
                             "(an autoencoder whose decoder was refined under the same frozen encoder)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    path = args.run / "checkpoints" / f"step_{args.step:08d}" if args.step is not None else latest_checkpoint(args.run)
    if path is None or not path.is_dir():
        raise SystemExit(f"error: no checkpoint {'step ' + str(args.step) if args.step else ''} in {args.run}")
    stage = resume_stage(args.run, overrides=args.overrides)
    model = stage.build_model()
    checkpoint = load_checkpoint(path)
    model.load_state_dict(checkpoint.ema if checkpoint.ema is not None else checkpoint.model)
    exported = stage.export(model.eval(), args.out)
    print(f"exported {path.name} of {args.run} to {exported}")


if __name__ == "__main__":
    main()
