"""``unclip embed``: image and text embeddings of a dataset, as resumable shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from unclip.cli.common import add_command, int_in_range
from unclip.errors import UnclipError

EXAMPLES = """
  unclip embed --encoder runs/clip-shapes/final/encoder --data data/shapes32 --out data/emb/shapes32
  unclip embed --encoder hf:/models/clip-vit-b-32 --data data/emoji64 --out data/emb/emoji --split train
  unclip embed --encoder ENC --data DATA --out EMB --update-stats   # also store embed_stats in ENC
"""


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "embed",
        help="encode a dataset's images and captions into embedding shards",
        description="Encode every image and caption of a dataset with a CLIP encoder and write fp16 .npy "
                    "shards (image/text embeddings, text token states and masks) plus jsonl metadata. "
                    "Re-running the same command resumes: finished shards are skipped.",
        examples=EXAMPLES, func=run)
    parser.add_argument("--encoder", required=True, help="encoder directory, hf:DIR or open_clip:ARCH:CKPT")
    parser.add_argument("--data", required=True, help="dataset directory (built dataset, image folder, shards)")
    parser.add_argument("--out", required=True, help="output directory for the shards")
    parser.add_argument("--split", default="all", help="train, val, test, a comma list, or all")
    parser.add_argument("--caption-column", default=None, metavar="NAME",
                        help="caption column of a Hugging Face imagefolder's metadata.jsonl/.csv (default: text)")
    parser.add_argument("--batch-size", type=int_in_range(1, 65536), default=64, help="items per forward pass")
    parser.add_argument("--shard-size", type=int_in_range(1, 10_000_000), default=4096, help="rows per shard")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    parser.add_argument("--update-stats", action="store_true",
                        help="also save the embedding statistics into the encoder directory")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args) -> int:
    from unclip.devices import check_device
    from unclip.encoders import load_encoder
    from unclip.encoders.embed import embed_to_shards
    from unclip.encoders.stats import STATS_FILE

    splits = [s.strip() for s in args.split.split(",") if s.strip()]
    if not splits or any(s not in ("train", "val", "test", "all") for s in splits) or ("all" in splits and len(splits) > 1):
        raise UnclipError(f"--split {args.split!r} must be train, val, test, a comma list of them, or all")
    check_device(args.device)
    encoder = load_encoder(args.encoder, device=args.device)
    info = embed_to_shards(encoder, args.data, args.out, encoder_path=str(args.encoder), splits=splits,
                           batch_size=args.batch_size, shard_size=args.shard_size, overwrite=args.overwrite,
                           progress=not args.no_progress, caption_column=args.caption_column)
    if args.update_stats:
        if str(args.encoder).startswith(("hf:", "open_clip:")) or not Path(args.encoder).is_dir():
            raise UnclipError("--update-stats needs an encoder directory, not an hf:/open_clip: spec")
        shutil.copyfile(Path(args.out) / STATS_FILE, Path(args.encoder) / STATS_FILE)
    print(json.dumps({"out": str(args.out), "counts": info["counts"], "shards": info["num_shards"],
                      "embed_dim": info["embed_dim"], "token_dim": info["token_dim"], "max_len": info["max_len"]}))
    return 0
