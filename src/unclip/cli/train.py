"""``unclip train``: train any stage with the one engine (``unclip.train.engine``)."""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path

from unclip.cli.common import add_command, plain_warnings
from unclip.errors import UnclipError

EXAMPLES = """
  unclip train prior --config configs/prior/shapes.yaml --out runs/prior-shapes
  unclip train decoder --config configs/decoder/tiny.yaml --data data/shapes --set train.steps=2000 --out runs/dec
  unclip train clipvq --images my_pictures/ --out runs/clipvq   # language-free CLIP-VQDiffusion
  unclip train prior --resume runs/prior-shapes                  # continue from the latest checkpoint
  unclip train prior --config configs/prior/shapes.yaml --log-with tensorboard,wandb --out runs/prior  # offline
  unclip train --resume runs/prior-shapes --set train.steps=20000  # train a finished run further
  accelerate launch --num_processes 4 -m unclip.cli train decoder --config configs/decoder/tiny.yaml --out runs/dec
"""


def register(subparsers) -> None:
    from unclip.train.stages import STAGES

    parser = add_command(
        subparsers, "train",
        help="train a stage (clip, prior, decoder, upsampler, vq, clipvq)",
        description="Train one stage with the shared engine: mixed precision, EMA, gradient accumulation, "
                    "atomic checkpoints (every train.checkpoint_every steps and on Ctrl-C), exact resume, "
                    "metrics.csv, and multi-process training under 'accelerate launch' or 'torchrun'. "
                    "The EMA model is exported to RUNDIR/final at the end.",
        examples=EXAMPLES, func=run)
    parser.add_argument("stage", nargs="?", metavar="STAGE",
                        help=f"stage name ({', '.join(sorted(STAGES))}) or a plug-in module:Class; "
                             "optional with --resume")
    parser.add_argument("--config", metavar="YAML", help="preset file, e.g. configs/prior/shapes.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable), e.g. --set train.lr=1e-4")
    parser.add_argument("--data", metavar="PATH", help="dataset path (shorthand for --set data.path=PATH)")
    parser.add_argument("--images", metavar="DIR",
                        help="a folder of images without captions, for language-free training "
                             "(--set data.path=DIR --set data.image_only=true)")
    parser.add_argument("--out", metavar="RUNDIR", help="run directory for checkpoints, metrics and the final model")
    parser.add_argument("--init", metavar="PATH",
                        help="start from existing weights: a model file, component, run or pipeline directory, "
                             "e.g. src/unclip/assets/models/emoji (shorthand for --set train.init=PATH)")
    parser.add_argument("--resume", metavar="RUNDIR", help="continue the run in RUNDIR from its latest checkpoint")
    parser.add_argument("--log-with", metavar="TRACKERS",
                        help="experiment trackers through Accelerate: tensorboard, wandb, mlflow (comma list) or "
                             "none; offline unless --set train.log_offline=false; metrics.csv is always written "
                             "(shorthand for --set train.log_with=TRACKERS)")


def _overrides(args) -> list[str]:
    overrides = list(args.overrides)
    if args.data and args.images:
        raise UnclipError("give either --data or --images, not both")
    if args.data:
        overrides.append(f"data.path={json.dumps(args.data)}")
    if args.images:
        overrides += [f"data.path={json.dumps(args.images)}", "data.image_only=true"]
    if getattr(args, "log_with", None):
        overrides.append(f"train.log_with={json.dumps(args.log_with)}")
    if getattr(args, "init", None):
        if args.resume:
            raise UnclipError("--init starts a new run from weights; a resumed run continues from its checkpoint")
        from unclip.train.init import find_weights

        find_weights(args.init, args.stage or "")  # a wrong path fails before the stage is built
        overrides.append(f"train.init={json.dumps(args.init)}")
    return overrides


def _check_image_only(stage_cls, spec: str) -> None:
    data_cls = typing.get_type_hints(stage_cls.config_class).get("data")
    fields = {f.name for f in dataclasses.fields(data_cls)} if dataclasses.is_dataclass(data_cls) else set()
    if "image_only" not in fields:
        raise UnclipError(f"stage {spec!r} cannot train from images alone; --images is for clipvq "
                          "(use --data for captioned datasets)")


def run(args) -> int:
    from unclip.train.engine import TrainingInterrupted, run_training
    from unclip.train.runs import build_stage, resolve_stage, resume_stage

    overrides = _overrides(args)
    if args.resume:
        if args.config or args.out:
            raise UnclipError("--resume RUNDIR continues a run with its saved config; "
                              "drop --config/--out (use --set to change e.g. train.steps)")
        run_dir = Path(args.resume)
        stage = resume_stage(run_dir, args.stage, overrides)
    else:
        if not args.stage:
            raise UnclipError("name the stage to train, e.g. 'unclip train prior --config ... --out RUNDIR'")
        if not args.out:
            raise UnclipError("--out RUNDIR is required (where checkpoints and the final model go)")
        if args.images:
            _check_image_only(resolve_stage(args.stage), args.stage)
        run_dir = Path(args.out)
        stage = build_stage(args.stage, args.config, overrides)
    try:
        with plain_warnings():
            final = run_training(stage, run_dir, resume=bool(args.resume))
    except TrainingInterrupted as exc:
        print(f"stopped: {exc}")
        return 130
    if os.environ.get("RANK", "0") == "0":  # one line, not one per process under torchrun
        print(f"final model: {final}")
    return 0
