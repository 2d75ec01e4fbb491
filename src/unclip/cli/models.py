"""``unclip models`` (list shipped and local pipelines), ``unclip assemble`` and ``unclip convert``."""

from __future__ import annotations

import json
from pathlib import Path

from unclip.cli.common import add_command
from unclip.errors import UnclipError

MODELS_EXAMPLES = """
  unclip models                 # shipped models plus pipelines under ./runs and ./models
  unclip models --search /data/my-runs
"""
ASSEMBLE_EXAMPLES = """
  unclip assemble --out runs/pipeline-shapes --encoder runs/clip-shapes/final/encoder \\
      --prior runs/prior-shapes --decoder runs/decoder-shapes --upsampler runs/upsampler-shapes
  unclip generate --model runs/pipeline-shapes "a large red circle in the center"
  # a cascade (e.g. 64 -> 256 -> 1024): give --upsampler once per stage, in order
"""
CONVERT_EXAMPLES = """
  unclip convert runs/pipeline-shapes          # a pipeline directory, in place
  unclip convert runs/decoder-shapes/final/decoder
"""


def register(subparsers) -> None:
    p = add_command(subparsers, "models", help="list shipped and locally trained models",
                    description="List the models shipped with unclip (usable by name with --model NAME) and "
                                "pipeline directories found under the search folders (usable with --model PATH).",
                    examples=MODELS_EXAMPLES, func=run_models)
    p.add_argument("--search", action="append", default=None, metavar="DIR",
                   help="folders to search for pipeline directories (default: ./runs and ./models)")
    p = add_command(subparsers, "assemble", help="build a pipeline directory from trained stages",
                    description="Put a trained encoder, prior, decoder and optional upsampler into one pipeline "
                                "directory that 'unclip generate --model DIR' (and every other command) loads.",
                    examples=ASSEMBLE_EXAMPLES, func=run_assemble)
    p.add_argument("--out", required=True, help="pipeline directory to write")
    p.add_argument("--encoder", required=True, help="encoder directory")
    p.add_argument("--decoder", required=True, help="decoder run directory (or its final/decoder folder)")
    p.add_argument("--prior", default=None, help="prior run directory (omit for a text-only GLIDE-style decoder)")
    p.add_argument("--upsampler", action="append", default=None,
                   help="upsampler run directory; repeat for a cascade, in order")
    p.add_argument("--name", default=None, help="name recorded in pipeline.json")
    p = add_command(subparsers, "convert", help="rewrite an old model folder in today's layout",
                    description="Rewrite a pipeline directory or component folder saved by an older unclip "
                                "(component.json beside the weights, pipeline.json version 1) in place: each "
                                "component becomes one self-describing model.safetensors.",
                    examples=CONVERT_EXAMPLES, func=run_convert)
    p.add_argument("path", help="pipeline directory or component folder")


def _describe(directory: Path) -> tuple[str, str, float]:
    try:
        info = json.loads((directory / "pipeline.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "?", "unreadable pipeline.json", 0.0
    size_mb = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 1e6
    return str(info.get("kind", "?")), str(info.get("description", info.get("name", ""))), size_mb


def find_pipelines(roots: list[Path], max_depth: int = 4) -> list[Path]:
    found = []
    for root in roots:
        if not root.is_dir():
            continue
        for marker in root.rglob("pipeline.json"):
            if len(marker.relative_to(root).parts) <= max_depth + 1:
                found.append(marker.parent)
    return sorted(set(found))


def run_models(args) -> int:
    from unclip.pipelines.registry import default_model, models_root, shipped_models

    names = shipped_models()
    print("shipped models (use --model NAME):")
    if not names:
        print("  (none in this install)")
    for name in names:
        kind, description, size_mb = _describe(models_root() / name)
        default = " (default)" if name == default_model() else ""
        print(f"  {name:<12} {kind:<7} {size_mb:6.1f} MB  {description}{default}")
    roots = [Path(p) for p in (args.search or ["runs", "models"])]
    local = find_pipelines(roots)
    print("local pipelines (use --model PATH):")
    if not local:
        print(f"  (none found under {', '.join(str(r) for r in roots)})")
    for directory in local:
        kind, description, size_mb = _describe(directory)
        print(f"  {str(directory):<40} {kind:<7} {size_mb:6.1f} MB  {description}")
    return 0


def run_assemble(args) -> int:
    from unclip.pipelines import assemble

    for label, value in (("--encoder", args.encoder), ("--decoder", args.decoder), ("--prior", args.prior),
                         *(("--upsampler", up) for up in args.upsampler or ())):
        if value is not None and not Path(value).exists():
            raise UnclipError(f"{label} path not found: {value}")
    assemble(args.out, encoder=args.encoder, decoder=args.decoder, prior=args.prior, upsampler=args.upsampler,
             name=args.name)
    print(f"pipeline written to {args.out}")
    return 0


def run_convert(args) -> int:
    from unclip.pipelines.convert import convert

    if not Path(args.path).exists():
        raise UnclipError(f"path not found: {args.path}")
    changed = convert(args.path)
    for line in changed:
        print(line)
    print(f"{args.path}: already in today's layout" if not changed else f"converted {args.path}")
    return 0
