"""``unclip import``: a diffusers-format unCLIP model folder → an unclip pipeline directory (issue 20)."""

from __future__ import annotations

from pathlib import Path

from unclip.cli.common import add_command

EXAMPLES = """
  unclip import ./karlo --out models/karlo        # a diffusers UnCLIPPipeline folder (save_pretrained)
  unclip import ./kandinsky-2-2 --out models/k22  # a KandinskyV22CombinedPipeline folder
  unclip import ./kandinsky-2-2-decoder --prior ./kandinsky-2-2-prior --out models/k22  # decoder + prior folders
  unclip generate --model models/karlo "a red circle on a white background"
  unclip generate --model ./karlo "a red circle"  # or run the diffusers folder directly
"""


def register(subparsers) -> None:
    from unclip.interop import SUPPORTED

    p = add_command(subparsers, "import", help="import a diffusers-format unCLIP model (Karlo, Kandinsky 2.2)",
                    description="Read a local diffusers pipeline folder (model_index.json + component folders, "
                                f"safetensors weights; supported: {', '.join(SUPPORTED)}) and write an unclip "
                                "pipeline directory that every command loads with --model DIR. Nothing is "
                                "downloaded; needs the diffusers extra (pip install 'unclip[diffusers]').",
                    examples=EXAMPLES, func=run_import)
    p.add_argument("path", help="the diffusers pipeline folder")
    p.add_argument("--prior", default=None, metavar="PRIOR_DIR",
                   help="the prior's pipeline folder, for a decoder folder without one (Kandinsky 2.2: a "
                        "KandinskyV22PriorPipeline beside a KandinskyV22Pipeline)")
    p.add_argument("--out", required=True, help="pipeline directory to write")
    p.add_argument("--name", default=None, help="name recorded in pipeline.json (default: the --out folder's)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run_import(args) -> int:
    from unclip.interop import import_diffusers

    pipe = import_diffusers(args.path, args.out, prior=args.prior, name=args.name, overwrite=args.overwrite)
    stages = " → ".join(("encoder",) + pipe.stages)
    print(f"imported {args.path} ({pipe.source_class}: {stages}, {pipe.image_size} px) into {Path(args.out)}")
    print(f"try: unclip generate --model {args.out} \"a red circle\"")
    return 0
