"""Image conversions, grids and file I/O shared by the pipelines, stages and the CLI.

Tensors are [B, 3, H, W] in [-1, 1]; PIL images are RGB; numpy arrays are [B, H, W, 3] float32 in [0, 1].
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from unclip.checkpoint import atomic_write
from unclip.errors import CheckpointError, UnclipError
from unclip.imagefile import image_to_tensor, load_image

__all__ = ["to_pil", "to_numpy", "format_images", "image_to_tensor", "check_finite", "image_grid", "load_image", "save_png", "save_gif"]


def check_finite(images: torch.Tensor, model: str | None = None) -> torch.Tensor:
    """``images`` unchanged if every value is finite; else a one-line ``CheckpointError``: NaN or inf
    out of a network means damaged weights (e.g. flipped bits), and must not become a black PNG."""
    if not torch.isfinite(images).all():
        name = f"model {model!r}" if model else "the model"
        raise CheckpointError(f"{name} produced NaN or infinite values, so its weights are damaged (a flipped bit "
                              "or a diverged training run); re-download or re-export it")
    return images


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [-1, 1] → list of RGB PIL images."""
    array = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).numpy(), "RGB") for a in array]


def to_numpy(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] → [B, H, W, 3] float32 in [0, 1]."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()


def format_images(images: torch.Tensor, output_type: str):
    """A pipeline's output [N, ...] as ``output_type``: "pil" (list of images), "np" ([N, H, W, 3] in [0, 1]),
    "pt" or "latent" (the tensor itself, on the CPU: a latent decoder's samples or CLIP-VQ's codes)."""
    if output_type == "pil":
        return to_pil(images)
    if output_type == "np":
        return to_numpy(images)
    if output_type in ("pt", "latent"):
        return images.detach().cpu()
    raise UnclipError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")


def image_grid(images: Sequence[Image.Image], columns: int | None = None, pad: int = 2,
               zoom: int = 1) -> Image.Image:
    """Tile PIL images (all the same size) into one white-padded grid; ``columns`` defaults to ~sqrt(N).

    ``zoom`` enlarges each image by an integer factor with nearest-neighbour pixels first, so
    32 px samples stay sharp and visible in an image viewer.
    """
    if not images:
        raise ValueError("image_grid needs at least one image")
    if zoom > 1:
        images = [image.resize((image.width * zoom, image.height * zoom), Image.NEAREST) for image in images]
    n = len(images)
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width + (columns + 1) * pad, rows * height + (rows + 1) * pad), "white")
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid.paste(image, (pad + c * (width + pad), pad + r * (height + pad)))
    return grid


def _check_suffix(path: Path, suffixes: tuple[str, ...]) -> None:
    if path.suffix.lower() not in suffixes:
        raise UnclipError(f"output {path} must end in {' or '.join(suffixes)}")


def png_writer(image: Image.Image) -> Callable[[Path], None]:
    """A function that writes ``image`` as a PNG to the path it is given (for ``atomic_write``)."""
    return lambda path: image.save(path, format="PNG")


def gif_writer(frames: Sequence[Image.Image], duration_ms: int = 120) -> Callable[[Path], None]:
    """A function that writes an animated, looping GIF that plays the frames forward then back."""
    frames = list(frames)
    sequence = frames + frames[-2:0:-1]
    return lambda path: sequence[0].save(path, format="GIF", save_all=True, append_images=sequence[1:],
                                         duration=duration_ms, loop=0)


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG atomically (no half-written files)."""
    path = Path(path)
    _check_suffix(path, (".png",))
    atomic_write(path, png_writer(image))
    return path


def save_gif(frames: Sequence[Image.Image], path: str | Path, duration_ms: int = 120) -> Path:
    """Write an animated, looping GIF atomically (plays forward then back)."""
    path = Path(path)
    _check_suffix(path, (".gif",))
    atomic_write(path, gif_writer(frames, duration_ms))
    return path
