"""An independent judge of generated *shapes* images.

It shares no weights with any generator: colour, position and size are read
off the pixels, and the shape is named by a nearest-neighbour classifier whose
training set is real renders of every shape (``unclip.data.shapes``), compared
on a scale- and position-normalised silhouette. Used for the attribute
accuracy of issues 6–8 (per attribute, exact match, seen vs withheld pairs).

Reading rules, all relative to the image side ``S``:
- foreground: pixels farther than ``FOREGROUND_DISTANCE`` (RGB L2) from white;
- colour: the palette colour nearest to the median RGB of the foreground core
  (foreground pixels whose 3x3 neighbourhood is all foreground, so the
  anti-aliased rim does not tint it);
- position / size: the robust bounding box (1st–99th percentile of the
  foreground coordinates); its centre picks the nearest of the five centres,
  its half-extent the nearer of the two radii. Every outline in the grammar
  fits the square of half-side ``radius`` around its centre, so the box is the
  right statistic for all six shapes;
- shape: the colour's coverage map (how much of each pixel the shape covers,
  recovered from the anti-aliased mix with white) is cropped to the box,
  resized to ``SILHOUETTE``² and matched to the nearest real render.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from unclip.data.shapes import COLORS, POSITIONS, SHAPES, SIZES, is_withheld, parse_caption, render_shape

__all__ = ["judge_image", "score_images", "ShapeJudgement", "ATTRIBUTES"]

ATTRIBUTES = ("color", "shape", "position", "size")
FOREGROUND_DISTANCE = 60.0
MIN_FOREGROUND_FRACTION = 0.003
SILHOUETTE = 24  # side of the normalised silhouette the classifier compares


@dataclass(frozen=True)
class ShapeJudgement:
    """Predicted attributes; ``None`` where the image shows no shape at all."""

    color: str | None
    shape: str | None
    position: str | None
    size: str | None

    def as_dict(self) -> dict[str, str | None]:
        return {name: getattr(self, name) for name in ATTRIBUTES}


def _to_rgb_array(image) -> np.ndarray:
    """PIL image, uint8 HxWx3 array, or tensor [3,H,W] in [-1,1] → float HxWx3 in 0..255."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    if isinstance(image, torch.Tensor):
        array = image.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5)
        return array.permute(1, 2, 0).numpy().astype(np.float64)
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got an array of shape {array.shape}")
    return array


def _silhouette(alpha: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Crop the coverage map ``alpha`` (in [0, 1]) to ``box`` (one pixel of margin), resize to SILHOUETTE²."""
    top, bottom, left, right = box
    h, w = alpha.shape
    crop = alpha[max(top - 1, 0) : min(bottom + 2, h), max(left - 1, 0) : min(right + 2, w)]
    image = Image.fromarray(crop.astype(np.float32), mode="F")
    return np.asarray(image.resize((SILHOUETTE, SILHOUETTE), Image.BILINEAR), dtype=np.float64)


def _coverage(rgb: np.ndarray, color: np.ndarray) -> np.ndarray:
    """Per-pixel fraction covered by ``color`` over white: pixel = a·color + (1−a)·255."""
    direction = 255.0 - color
    alpha = ((255.0 - rgb) @ direction) / max(float(direction @ direction), 1e-6)
    return np.clip(alpha, 0.0, 1.0)


def _foreground(rgb: np.ndarray) -> np.ndarray:
    return np.linalg.norm(255.0 - rgb, axis=2) > FOREGROUND_DISTANCE


def _robust_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    top, bottom = np.percentile(ys, [1, 99])
    left, right = np.percentile(xs, [1, 99])
    return int(round(top)), int(round(bottom)), int(round(left)), int(round(right))


@lru_cache(maxsize=8)
def _templates(image_size: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """Silhouettes of real renders: every shape, both sizes, a few sub-pixel offsets."""
    features, labels = [], []
    for shape in SHAPES:
        for size in SIZES:
            for dx, dy in ((0.0, 0.0), (0.01, -0.01), (-0.013, 0.007)):
                render = np.asarray(render_shape(shape, "black", "center", size, image_size, dx=dx, dy=dy),
                                    dtype=np.float64)
                alpha = _coverage(render, np.array(COLORS["black"], dtype=np.float64))
                features.append(_silhouette(alpha, _robust_box(_foreground(render))).ravel())
                labels.append(shape)
    return np.stack(features), tuple(labels)


def judge_image(image) -> ShapeJudgement:
    """Read colour, shape, position and size off one image."""
    rgb = _to_rgb_array(image)
    side = rgb.shape[0]
    mask = _foreground(rgb)
    if mask.mean() < MIN_FOREGROUND_FRACTION:
        return ShapeJudgement(None, None, None, None)
    # colour from the core of the foreground, away from the anti-aliased rim
    padded = np.pad(mask, 1)
    core = np.ones_like(mask)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            core &= padded[dy : dy + side, dx : dx + mask.shape[1]]
    pixels = rgb[core] if core.sum() >= 3 else rgb[mask]
    median = np.median(pixels, axis=0)
    color = min(COLORS, key=lambda name: np.sum((median - np.array(COLORS[name])) ** 2))
    box = _robust_box(mask)
    top, bottom, left, right = box
    centre = np.array([(left + right + 1) / 2, (top + bottom + 1) / 2]) / side
    position = min(POSITIONS, key=lambda name: np.sum((centre - np.array(POSITIONS[name])) ** 2))
    half_extent = max(bottom - top + 1, right - left + 1) / 2 / side
    size = min(SIZES, key=lambda name: abs(half_extent - SIZES[name]))
    features, labels = _templates(side)
    silhouette = _silhouette(_coverage(rgb, np.array(COLORS[color], dtype=np.float64)), box).ravel()
    shape = labels[int(np.argmin(((features - silhouette) ** 2).sum(axis=1)))]
    return ShapeJudgement(color, shape, position, size)


def score_images(images: Iterable, captions: Sequence[str]) -> dict[str, float | int]:
    """Per-attribute and exact-match accuracy of ``images`` against their shapes ``captions``.

    Returns keys ``{attr}_acc`` and ``exact`` over all images, the same with the
    prefixes ``seen_`` and ``withheld_`` for the two kinds of (shape, color)
    pairs (absent when a group is empty), and the counts ``n``, ``n_seen``,
    ``n_withheld``.
    """
    rows = []
    for image, caption in zip(images, captions, strict=True):
        truth = parse_caption(caption)
        guess = judge_image(image).as_dict()
        hits = {name: guess[name] == truth[name] for name in ATTRIBUTES}
        hits["exact"] = all(hits.values())
        rows.append((is_withheld(truth["shape"], truth["color"]), hits))
    result: dict[str, float | int] = {"n": len(rows)}
    for prefix, keep in (("", None), ("seen_", False), ("withheld_", True)):
        group = [hits for withheld, hits in rows if keep is None or withheld == keep]
        if prefix:
            result[f"n_{prefix[:-1]}"] = len(group)
        if not group:
            continue
        for name in (*ATTRIBUTES, "exact"):
            key = f"{prefix}{name}" if name == "exact" else f"{prefix}{name}_acc"
            result[key] = float(np.mean([hits[name] for hits in group]))
    return result
