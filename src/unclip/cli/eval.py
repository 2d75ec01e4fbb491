"""``unclip eval``: score one or several pipelines on a dataset split (or merge reports) and write a report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import yaml

from unclip.cli.common import add_command, int_in_range
from unclip.errors import UnclipError
from unclip.pipelines.settings import FLAT, GLOBAL, parse_flat

EXAMPLES = """
  unclip eval --model runs/pipeline-shapes --data data/shapes32 --out reports/shapes
  unclip eval --model emoji --data data/emoji64 --out reports/emoji --eval-encoder runs/clip-emoji-eval/final/encoder
  unclip eval --model runs/pipeline-shapes --data data/shapes32 --out reports/guidance \\
      --sweep decoder_guidance=1,2,4,8 --set decoder_steps=25
  # unCLIP vs the GLIDE-style baseline over guidance scales, one report (paper §5.2, Figs. 9-11)
  unclip eval --model shapes --label unCLIP --model runs/pipeline-shapes-glide --label GLIDE \\
      --data data/shapes32 --out reports/unclip-vs-glide --images-per-prompt 4 --sweep decoder_guidance=1,2,3,5,8
  # the same from two reports made earlier with the same prompts and seeds
  unclip eval --combine reports/guidance-unclip reports/guidance-glide --label unCLIP --label GLIDE \\
      --out reports/unclip-vs-glide
"""


def register(subparsers) -> None:
    p = add_command(subparsers, "eval", help="evaluate pipelines: FID/KID, CLIP score, shapes accuracy, sweeps, comparisons",
                    description="Generate from held-out prompts of a dataset split and score the samples "
                                "(FID/KID/precision/recall/density/coverage in EfficientNet-Lite0 features beside "
                                "the real-vs-real baseline, diversity, CLIP score and R-precision with a separate "
                                "evaluation encoder, shapes attribute accuracy). Writes report.md, report.html, "
                                "metrics.json and image grids. Repeat --model (or --combine earlier reports) to "
                                "compare pipelines over one sweep with curves and a diversity-fidelity plot.",
                    examples=EXAMPLES, func=run)
    p.add_argument("--model", action="append", default=None,
                   help="shipped model name or pipeline directory; repeat to compare several in one report")
    p.add_argument("--label", action="append", default=None,
                   help="name of each --model or --combine report in tables and plots; without it, the model as given")
    p.add_argument("--combine", nargs="+", default=None, metavar="REPORT_DIR",
                   help="compare existing report directories (same prompts and seeds) instead of generating")
    p.add_argument("--data", default=None, help="built dataset directory (prompts and real images)")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--split", default="test", help="split to take prompts and real images from")
    p.add_argument("--baseline-split", default="val", help="second real split for the real-vs-real baseline")
    p.add_argument("--num-prompts", type=int_in_range(1, 10000), default=50)
    p.add_argument("--images-per-prompt", type=int_in_range(1, 64), default=2)
    p.add_argument("--eval-encoder", default=None,
                   help="encoder directory used only for CLIP score / R-precision (never the generating one)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="pipeline setting, e.g. decoder_steps=25, decoder_guidance=3, sampler=dpm++2m; the "
                        f"sampling settings ({', '.join([*FLAT, *GLOBAL])}) are checked before any model loads")
    p.add_argument("--sweep", default=None, metavar="KEY=V1,V2,...", help="re-run for each value of one setting")
    p.add_argument("--decoder-diversity", action="store_true",
                   help="also measure the decoder's own diversity: variations of one real image per prompt "
                        "(fixed CLIP image embedding, unCLIP decoders only)")
    p.add_argument("--recognisability", action="store_true",
                   help="score samples (and variations of the real images) by whether EfficientNet-Lite1 reads "
                        "them as it reads the real render; --split train scores training concepts")
    p.add_argument("--reference-data", default=None, metavar="DIR",
                   help="a higher-resolution build of the same dataset for the recognisability references "
                        "(e.g. data/emoji256-all for a 64 px dataset)")
    p.add_argument("--seed", type=int_in_range(0, 2**31 - 1), default=0)
    p.add_argument("--device", default="cpu")


def _parse_setting(item: str) -> tuple[str, object]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UnclipError(f"setting {item!r} must look like key=value (e.g. decoder_steps=25)")
    return key.strip(), _checked(key.strip(), yaml.safe_load(raw))


def _checked(key: str, value):
    """A sampling setting (``unclip.pipelines.settings``) checked against its field; others as given."""
    return parse_flat(key, value) if key in FLAT or key in GLOBAL else value


def _parse_sweep(text: str | None) -> tuple[str, list] | None:
    if not text:
        return None
    key, sep, raw = text.partition("=")
    values = [yaml.safe_load(v) for v in raw.split(",") if v.strip()]
    if not sep or not key.strip() or not values:
        raise UnclipError(f"--sweep {text!r} must look like key=v1,v2 (e.g. decoder_guidance=1,3,5)")
    return key.strip(), [_checked(key.strip(), v) for v in values]


def _check_args(args) -> list[str]:
    """The label of each model; one-line errors for inconsistent options."""
    if args.combine:
        if args.model:
            raise UnclipError("give either --model (generate and score) or --combine (merge reports), not both")
        return []
    if not args.model:
        raise UnclipError("give --model NAME|DIR (repeat it to compare pipelines) or --combine REPORT_DIR ...")
    if args.label and len(args.label) != len(args.model):
        raise UnclipError(f"got {len(args.label)} --label for {len(args.model)} --model; give one per model or none")
    labels = args.label or list(args.model)
    if len(set(labels)) != len(labels):
        raise UnclipError("two models have the same label; name them apart with --label")
    if not args.data:
        raise UnclipError("--data is required to generate (a built dataset, e.g. data/shapes32)")
    if not Path(args.data).exists():
        raise UnclipError(f"dataset not found: {args.data} (build one with 'unclip data build')")
    return labels


def _evaluate_model(pipe, args, settings: dict, sweep, eval_encoder):
    """Rows of metrics (one per sweep value), the first run's samples, and a small grid per sweep value."""
    import torch

    from unclip.eval.evaluate import EvalConfig, evaluate_pipeline

    runs = [(None, settings)] if sweep is None else [(v, {**settings, sweep[0]: v}) for v in sweep[1]]
    rows, first, grid_images, grid_captions = [], None, [], []
    keep = min(8, 2 * args.images_per_prompt)  # the first two prompts' images at each setting
    for value, run_settings in runs:
        if value is not None:
            print(f"{sweep[0]} = {value}", file=sys.stderr)
        config = EvalConfig(num_prompts=args.num_prompts, images_per_prompt=args.images_per_prompt,
                            split=args.split, baseline_split=args.baseline_split, seed=args.seed,
                            decoder_diversity=args.decoder_diversity, settings=run_settings,
                            recognisability=args.recognisability or bool(args.reference_data),
                            reference_data=args.reference_data or "")
        try:
            result, images, prompts = evaluate_pipeline(pipe, args.data, config, eval_encoder=eval_encoder,
                                                        log=lambda m: print(m, file=sys.stderr))
        except TypeError as exc:
            if "unexpected keyword" in str(exc):
                raise UnclipError(f"unknown pipeline setting in --set/--sweep: {exc}") from None
            raise
        rows.append({**({sweep[0]: value} if sweep else {}), **result})
        first = first or (images, prompts)
        grid_images.append(images[:keep])
        head = f"{sweep[0]}={value}: " if sweep else ""
        grid_captions += [head + p for p in prompts[:keep]]
    return rows, first, (torch.cat(grid_images), grid_captions)


def run(args) -> int:
    from unclip.encoders import load_encoder
    from unclip.eval.compare import combine_reports, write_comparison
    from unclip.eval.report import write_report
    from unclip.pipelines import load_pipeline

    labels = _check_args(args)
    command = "unclip " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["eval"] else ""
    if args.combine:
        merged = combine_reports(args.combine, args.label or ())
        report = write_comparison(Path(args.out), data=str(merged["data"]), commands=[*merged["commands"], command],
                                  key=merged["key"], rows=merged["rows"])
    else:
        settings = dict(_parse_setting(item) for item in args.settings)
        sweep = _parse_sweep(args.sweep)
        eval_encoder = load_encoder(args.eval_encoder) if args.eval_encoder else None
        all_rows, grids = [], {}
        for model, label in zip(args.model, labels):
            print(f"model {label}", file=sys.stderr)
            pipe = load_pipeline(model, device=args.device)
            rows, (samples, prompts), grids[label] = _evaluate_model(pipe, args, settings, sweep, eval_encoder)
            all_rows += [{"model": label, **row} for row in rows]
        if len(args.model) == 1:
            report = write_report(Path(args.out), model=str(args.model[0]), data=str(args.data), command=command,
                                  results=[{k: v for k, v in r.items() if k != "model"} for r in all_rows],
                                  samples=samples, prompts=prompts, sweep=sweep, label=labels[0],
                                  sweep_samples=grids[labels[0]] if sweep else None)
        else:
            report = write_comparison(Path(args.out), data=str(args.data), commands=[command],
                                      key=sweep[0] if sweep else None, rows=all_rows, samples=grids)
    print(report.read_text(encoding="utf-8"))
    print(f"report written to {report}")
    return 0
