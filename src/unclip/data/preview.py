"""``unclip data preview``: a captioned grid of dataset images (Pillow only)."""

from __future__ import annotations

import itertools
import math
import random
import textwrap
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from unclip.checkpoint import atomic_write
from unclip.errors import DataError

__all__ = ["caption_grid", "write_preview"]


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] in [-1, 1] → RGB PIL image."""
    array = image.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), "RGB")


def caption_grid(images: Sequence[Image.Image], captions: Sequence[str], cell: int = 128,
                 columns: int | None = None, lines: int = 4) -> Image.Image:
    """Images scaled to ``cell`` px (nearest for integer upscales) with wrapped captions below."""
    if not images:
        raise DataError("nothing to draw: the grid has no images")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    font = ImageFont.load_default(size=11)
    line_height, pad = 13, 4
    text_height = lines * line_height + pad
    chars = max(8, int(cell / 6.2))
    grid = Image.new("RGB", (columns * (cell + pad) + pad, rows * (cell + text_height + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for index, (image, caption) in enumerate(zip(images, captions)):
        x = pad + (index % columns) * (cell + pad)
        y = pad + (index // columns) * (cell + text_height + pad)
        w, h = image.size
        scale = cell / max(w, h)  # fit inside the cell, keep the aspect ratio
        resample = Image.NEAREST if scale == int(scale) else Image.LANCZOS
        fitted = image.convert("RGB").resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)
        grid.paste(fitted, (x + (cell - fitted.width) // 2, y + (cell - fitted.height) // 2))
        draw.rectangle([x - 1, y - 1, x + cell, y + cell], outline=(200, 200, 200))
        wrapped = textwrap.wrap(caption or "(no caption)", chars)[:lines]
        for k, line in enumerate(wrapped):
            draw.text((x, y + cell + 2 + k * line_height), line, fill=(0, 0, 0), font=font)
    return grid


def write_preview(path: str | Path, out: str | Path, n: int = 16, split: str = "train",
                  seed: int | None = None) -> int:
    """Write the first ``n`` items of ``split`` (or a random ``n`` with ``seed``) as a grid PNG."""
    from unclip.data import open_dataset

    dataset = open_dataset(path, split=split)
    if hasattr(dataset, "__len__") and not isinstance(dataset, torch.utils.data.IterableDataset):
        indices = list(range(len(dataset)))
        if seed is not None:
            indices = random.Random(seed).sample(indices, min(n, len(indices)))
        items = [dataset[i] for i in indices[:n]]
    else:
        items = list(itertools.islice(iter(dataset), n))
    if not items:
        raise DataError(f"{path} has no images in split {split!r}")
    images = [tensor_to_pil(item["image"]) for item in items]
    captions = [item["caption"] for item in items]
    grid = caption_grid(images, captions)
    out = Path(out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise DataError(f"--out {out} must end in .png (or .jpg/.webp)")
    atomic_write(out, lambda tmp: grid.save(tmp, format=out.suffix.lstrip(".").upper().replace("JPG", "JPEG")))
    return len(items)
