"""PSNR of an upsampler against the real high-res renders, beside bicubic, with and without low-res anchoring.

    python scripts/upsampler_psnr.py runs/upsampler-emoji64to256 --data data/emoji256-all --count 32 --steps 7
    python scripts/upsampler_psnr.py runs/upsampler-emoji64to256 --data data/emoji256-all --split train \
        --count 100 --recognisability

``--recognisability`` also scores each output with the recognisability metric of ``unclip eval`` (the
upsampler's own share of the cascade's loss: real low-res inputs, so the base decoder plays no part).

Downsamples ``--count`` test renders to the upsampler's input size, upsamples them back (DDIM on the
component's grid) and prints the mean PSNR to the originals: plain, with ``anchor_to_low_res``, and for
bicubic interpolation.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from unclip.data import open_dataset
from unclip.models.degrade import make_low_res
from unclip.models.vq import psnr
from unclip.pipelines.sampling import anchor_to_low_res, sample_upsampler
from unclip.pipelines.unclip import Component
from unclip.precision import autocast, resolve_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("upsampler", help="run dir, or the folder holding the upsampler's model.safetensors")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--spacing", default="quadratic")
    parser.add_argument("--recognisability", action="store_true",
                        help="also print the recognised share of each output against the real render")
    parser.add_argument("--grid", default=None, help="also write a PNG: plain, anchored and real rows (4 images)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    from unclip.pipelines.unclip import _component_dir

    up = Component.load(_component_dir(args.upsampler, "upsampler"), "cpu")
    low_size = int(up.info["low_res_size"])
    dataset = open_dataset(args.data, split=args.split, image_size=up.image_size)
    step = max(1, len(dataset) // args.count)
    images = torch.stack([dataset[i]["image"] for i in range(0, step * args.count, step)][:args.count])
    low = make_low_res(images, low_size)
    x_T = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    with autocast(resolve_precision("auto", "cpu"), "cpu"):
        out = sample_upsampler(up.model, up.diffusion, low, x_T, steps=args.steps, spacing=args.spacing).float()
    bicubic = F.interpolate(low, size=images.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
    anchored = anchor_to_low_res(out, low).clamp(-1, 1)
    if args.grid:
        from unclip.pipelines.images import image_grid, save_png, to_pil

        save_png(image_grid(to_pil(out[:4]) + to_pil(anchored[:4]) + to_pil(images[:4]), columns=4), args.grid)
    result = {"n": len(images), "steps": args.steps, "psnr": float(psnr(out, images).mean()),
              "psnr_anchored": float(psnr(anchored, images).mean()),
              "psnr_bicubic": float(psnr(bicubic, images).mean())}
    if args.recognisability:
        result.update(recognisability(images, {"plain": out, "anchored": anchored, "bicubic": bicubic, "real": images}))
    print(json.dumps(result, indent=2))


def recognisability(references: torch.Tensor, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Recognised share of each output [N,3,H,W] against the real renders (row i: image i's own render)."""
    from unclip.eval.recognisability import load_recogniser, recognised

    recogniser = load_recogniser()
    reference_top1 = recogniser.top_k(references.float(), 1)[:, 0]
    return {f"recognised_{name}": float(recognised(reference_top1, recogniser.top_k(out.float().clamp(-1, 1), 5))
                                        .float().mean()) for name, out in outputs.items()}


if __name__ == "__main__":
    main()
