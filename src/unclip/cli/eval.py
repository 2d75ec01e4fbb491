"""``unclip eval``: score a pipeline on a dataset split and write a report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import yaml

from unclip.cli.common import add_command, int_in_range
from unclip.errors import UnclipError

EXAMPLES = """
  unclip eval --model runs/pipeline-shapes --data data/shapes32 --out reports/shapes
  unclip eval --model emoji --data data/emoji64 --out reports/emoji --eval-encoder runs/clip-emoji-eval/final/encoder
  unclip eval --model runs/pipeline-shapes --data data/shapes32 --out reports/guidance \\
      --sweep decoder_guidance=1,2,4,8 --set decoder_steps=25
"""


def register(subparsers) -> None:
    p = add_command(subparsers, "eval", help="evaluate a pipeline: FID/KID, CLIP score, shapes accuracy, sweeps",
                    description="Generate from held-out prompts of a dataset split and score the samples "
                                "(FID/KID/precision/recall/density/coverage in EfficientNet-Lite0 features beside "
                                "the real-vs-real baseline, diversity, CLIP score and R-precision with a separate "
                                "evaluation encoder, shapes attribute accuracy). Writes report.md, report.html, "
                                "metrics.json and image grids.",
                    examples=EXAMPLES, func=run)
    p.add_argument("--model", required=True, help="shipped model name or pipeline directory")
    p.add_argument("--data", required=True, help="built dataset directory (prompts and real images)")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--split", default="test", help="split to take prompts and real images from")
    p.add_argument("--baseline-split", default="val", help="second real split for the real-vs-real baseline")
    p.add_argument("--num-prompts", type=int_in_range(1, 10000), default=50)
    p.add_argument("--images-per-prompt", type=int_in_range(1, 64), default=2)
    p.add_argument("--eval-encoder", default=None,
                   help="encoder directory used only for CLIP score / R-precision (never the generating one)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="pipeline setting, e.g. decoder_steps=25, decoder_guidance=3, sampler=dpm++2m")
    p.add_argument("--sweep", default=None, metavar="KEY=V1,V2,...", help="re-run for each value of one setting")
    p.add_argument("--seed", type=int_in_range(0, 2**31 - 1), default=0)
    p.add_argument("--device", default="cpu")


def _parse_setting(item: str) -> tuple[str, object]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UnclipError(f"setting {item!r} must look like key=value (e.g. decoder_steps=25)")
    return key.strip(), yaml.safe_load(raw)


def run(args) -> int:
    from unclip.encoders import load_encoder
    from unclip.eval.evaluate import EvalConfig, evaluate_pipeline
    from unclip.eval.report import write_report
    from unclip.pipelines import load_pipeline

    if not Path(args.data).exists():
        raise UnclipError(f"dataset not found: {args.data} (build one with 'unclip data build')")
    settings = dict(_parse_setting(item) for item in args.settings)
    sweep = None
    if args.sweep:
        key, sep, raw = args.sweep.partition("=")
        values = [yaml.safe_load(v) for v in raw.split(",") if v.strip()]
        if not sep or not values:
            raise UnclipError(f"--sweep {args.sweep!r} must look like key=v1,v2 (e.g. decoder_guidance=1,3,5)")
        sweep = (key.strip(), values)
    pipe = load_pipeline(args.model, device=args.device)
    eval_encoder = load_encoder(args.eval_encoder) if args.eval_encoder else None
    runs = [(None, settings)] if sweep is None else [(v, {**settings, sweep[0]: v}) for v in sweep[1]]
    results, samples, prompts = [], None, []
    for value, run_settings in runs:
        if value is not None:
            print(f"{sweep[0]} = {value}", file=sys.stderr)
        config = EvalConfig(num_prompts=args.num_prompts, images_per_prompt=args.images_per_prompt,
                            split=args.split, baseline_split=args.baseline_split, seed=args.seed,
                            settings=run_settings)
        try:
            result, images, image_prompts = evaluate_pipeline(pipe, args.data, config, eval_encoder=eval_encoder,
                                                              log=lambda m: print(m, file=sys.stderr))
        except TypeError as exc:
            if "unexpected keyword" in str(exc):
                raise UnclipError(f"unknown pipeline setting in --set/--sweep: {exc}") from None
            raise
        results.append({**({sweep[0]: value} if sweep else {}), **result})
        if samples is None:
            samples, prompts = images, image_prompts
    command = "unclip " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["eval"] else ""
    report = write_report(Path(args.out), model=str(args.model), data=str(args.data), command=command,
                          results=results, samples=samples, prompts=prompts, sweep=sweep)
    print(report.read_text(encoding="utf-8"))
    print(f"report written to {report}")
    return 0
