"""Sheets for judging by eye whether generated images show their prompt (issue 6: "recognisable by a human").

For the same held-out prompts that ``unclip eval --seed S --num-prompts N`` uses, each row shows the real
test image of the prompt, then K generated images (seeds 0..K-1 per prompt). Pages of ``--per-page`` rows go
to OUT/page-XX.png, with OUT/judgements.csv to fill in, one row per prompt. ``recognisable`` scores the
K generated images together: 2 = at least one shows the prompt's concept (a viewer who reads the caption
agrees), 1 = at least one shows the right kind of thing but not the concept (a flag, not that flag; a
person, not a juggler), 0 = neither. ``real_recognisable`` asks the same of the real image at this size.

    python scripts/recognisability_sheet.py --model emoji --data data/emoji32 --num-prompts 48 \\
        --out reports/emoji-recognisable/unclip
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import torch
import torch.nn.functional as F

from unclip.checkpoint import atomic_write_text
from unclip.eval.evaluate import choose_prompts, real_by_caption, split_captions
from unclip.eval.report import sample_grid
from unclip.pipelines import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="emoji", help="shipped model name or pipeline directory")
    parser.add_argument("--data", required=True, help="dataset with the held-out split")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-prompts", type=int, default=48)
    parser.add_argument("--images", type=int, default=4, help="generated images per prompt")
    parser.add_argument("--seed", type=int, default=0, help="prompt choice, as unclip eval --seed")
    parser.add_argument("--per-page", type=int, default=12)
    parser.add_argument("--decoder-spacing", default=None, help="decoder timestep grid (default: the pipeline's)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args.model)
    prompts = choose_prompts(split_captions(args.data, args.split), args.num_prompts, args.seed)
    real = real_by_caption(args.data, args.split, prompts, limit=1)
    for page, first in enumerate(range(0, len(prompts), args.per_page)):
        chunk = prompts[first:first + args.per_page]
        settings = {"decoder_spacing": args.decoder_spacing} if args.decoder_spacing else {}
        generated = pipe(chunk, num_images_per_prompt=args.images, seed=0, output_type="pt", progress=False,
                         **settings).images
        size = generated.shape[-1]
        tiles, labels = [], []
        for i, prompt in enumerate(chunk):
            image = real[prompt][0][None].float()
            tiles.append(F.interpolate(image, size=(size, size), mode="nearest")[0])
            labels.append(f"real: {prompt}")
            tiles.extend(generated[i * args.images:(i + 1) * args.images])
            labels.extend([f"#{first + i + 1} seed {k}" for k in range(args.images)])
        sample_grid(torch.stack(tiles), labels, out / f"page-{page:02d}.png", limit=len(tiles),
                    columns=args.images + 1)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["number", "prompt", "real_recognisable", "recognisable", "note"])
    writer.writerows([[i + 1, p, "", "", ""] for i, p in enumerate(prompts)])
    target = out / "judgements.csv"
    if not target.exists():                          # never overwrite judgements already made
        atomic_write_text(target, table.getvalue())
    print(f"wrote {len(prompts)} prompts on {page + 1} pages to {out}")


if __name__ == "__main__":
    main()
