"""The procedural *shapes* dataset: one coloured shape on white, captioned exactly.

The grammar is fixed (issue 2) so that outside checkers can judge generated
images: ``a {size} {color} {shape} in the {position}``. Attribute values,
colours, centres and radii below are part of the public contract; do not edit
them. Each shape is drawn inside the square of half-side ``radius`` around its
centre (radius and centre as fractions of the image side) and rendered with
anti-aliasing by drawing at ``SUPERSAMPLE``x the side and box-averaging down,
so pixels fully inside the shape carry the exact RGB colour.

A fixed list of (shape, color) pairs, ``WITHHELD_PAIRS``, never appears in the
train or val split; every image of those pairs goes to test with
``meta["withheld"] = True`` to measure composition (unCLIP, arXiv 2204.06125,
Sec. 7 discusses attribute binding failures).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from itertools import product
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw

from unclip.errors import DataError

__all__ = [
    "SHAPES",
    "COLORS",
    "POSITIONS",
    "SIZES",
    "WITHHELD_PAIRS",
    "SUPERSAMPLE",
    "ShapeSpec",
    "caption_for",
    "parse_caption",
    "is_withheld",
    "all_combinations",
    "render_shape",
    "sample_specs",
    "split_for",
    "ShapesDataset",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (140, 60, 190),
    "orange": (245, 140, 20),
    "black": (20, 20, 20),
    "cyan": (30, 200, 210),
}
# centre (x, y) as a fraction of the side; y grows downwards
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.28, 0.28),
    "top right": (0.72, 0.28),
    "bottom left": (0.28, 0.72),
    "bottom right": (0.72, 0.72),
    "center": (0.5, 0.5),
}
# radius as a fraction of the side
SIZES: dict[str, float] = {"small": 0.13, "large": 0.24}

# (shape, color) pairs kept out of train/val: one per shape, each colour at most once.
WITHHELD_PAIRS: tuple[tuple[str, str], ...] = (
    ("circle", "purple"),
    ("square", "orange"),
    ("triangle", "cyan"),
    ("star", "green"),
    ("heart", "blue"),
    ("cross", "yellow"),
)

SUPERSAMPLE = 8
BACKGROUND = (255, 255, 255)

_CAPTION_RE = re.compile(
    r"^a (?P<size>{}) (?P<color>{}) (?P<shape>{}) in the (?P<position>{})$".format(
        "|".join(SIZES), "|".join(COLORS), "|".join(SHAPES), "|".join(POSITIONS)
    )
)


@dataclass(frozen=True)
class ShapeSpec:
    """One image: the four caption attributes plus an optional sub-pixel jitter."""

    shape: str
    color: str
    position: str
    size: str
    dx: float = 0.0  # centre offset, fraction of the side
    dy: float = 0.0
    scale: float = 1.0  # radius multiplier

    @property
    def caption(self) -> str:
        return caption_for(self.shape, self.color, self.position, self.size)

    @property
    def center(self) -> tuple[float, float]:
        x, y = POSITIONS[self.position]
        return (x + self.dx, y + self.dy)

    @property
    def radius(self) -> float:
        return SIZES[self.size] * self.scale

    def meta(self) -> dict:
        cx, cy = self.center
        return {
            "shape": self.shape,
            "color": self.color,
            "position": self.position,
            "size": self.size,
            "center": [round(cx, 5), round(cy, 5)],
            "radius": round(self.radius, 5),
            "withheld": is_withheld(self.shape, self.color),
        }


def caption_for(shape: str, color: str, position: str, size: str) -> str:
    _check(shape, color, position, size)
    return f"a {size} {color} {shape} in the {position}"


def parse_caption(caption: str) -> dict[str, str]:
    """``'a small red circle in the top left'`` → {size, color, shape, position}; DataError if off-grammar."""
    match = _CAPTION_RE.match(caption.strip())
    if match is None:
        raise DataError(
            f"caption {caption!r} is not in the shapes grammar 'a {{size}} {{color}} {{shape}} in the {{position}}'"
        )
    return match.groupdict()


def is_withheld(shape: str, color: str) -> bool:
    return (shape, color) in WITHHELD_PAIRS


def all_combinations() -> list[ShapeSpec]:
    """All 6*8*5*2 = 480 attribute combinations, in a fixed order."""
    return [
        ShapeSpec(shape, color, position, size)
        for shape, color, position, size in product(SHAPES, COLORS, POSITIONS, SIZES)
    ]


def _check(shape: str, color: str, position: str, size: str) -> None:
    for value, choices, what in (
        (shape, SHAPES, "shape"),
        (color, COLORS, "color"),
        (position, POSITIONS, "position"),
        (size, SIZES, "size"),
    ):
        if value not in choices:
            raise DataError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def _outline(shape: str) -> list[tuple[float, float]]:
    """Polygon of ``shape`` in unit coordinates: fits [-1, 1]^2, y downwards."""
    if shape == "square":
        return [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    if shape == "triangle":  # apex up, base on the bottom edge
        return [(0, -1), (1, 1), (-1, 1)]
    if shape == "cross":  # plus sign, arms one third of the width
        a = 1 / 3
        return [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1),
                (-a, a), (-1, a), (-1, -a), (-a, -a)]
    if shape == "star":  # five points, one up; inner radius 0.45
        points = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((r * math.cos(angle), r * math.sin(angle)))
        return points
    if shape == "heart":  # classic parametric heart, scaled to touch all four sides
        ts = [2 * math.pi * k / 180 for k in range(180)]
        xs = [16 * math.sin(t) ** 3 for t in ts]
        ys = [-(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) for t in ts]
        x_mid, y_mid = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
        half_w, half_h = (max(xs) - min(xs)) / 2, (max(ys) - min(ys)) / 2
        return [((x - x_mid) / half_w, (y - y_mid) / half_h) for x, y in zip(xs, ys)]
    raise DataError(f"unknown shape {shape!r}; choose one of: {', '.join(SHAPES)}")


def render_shape(
    shape: str,
    color: str,
    position: str,
    size: str,
    image_size: int = 64,
    *,
    dx: float = 0.0,
    dy: float = 0.0,
    scale: float = 1.0,
) -> Image.Image:
    """Render one shape as an RGB ``PIL.Image`` of side ``image_size`` on white, anti-aliased."""
    _check(shape, color, position, size)
    if image_size < 8:
        raise DataError(f"image_size must be at least 8 pixels, got {image_size}")
    big = image_size * SUPERSAMPLE
    cx, cy = POSITIONS[position]
    cx, cy = (cx + dx) * big, (cy + dy) * big
    radius = SIZES[size] * scale * big
    canvas = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    else:
        draw.polygon([(cx + x * radius, cy + y * radius) for x, y in _outline(shape)], fill=fill)
    # box filter = exact average of each SUPERSAMPLE^2 block: interior pixels keep the exact colour
    return canvas.reduce(SUPERSAMPLE)


def render_spec(spec: ShapeSpec, image_size: int) -> Image.Image:
    return render_shape(spec.shape, spec.color, spec.position, spec.size, image_size,
                        dx=spec.dx, dy=spec.dy, scale=spec.scale)


def sample_specs(count: int, seed: int = 0, jitter: float = 0.0) -> list[ShapeSpec]:
    """``count`` specs cycling through all 480 combinations, each pass shuffled by ``seed``.

    ``jitter`` > 0 moves each centre by up to ``jitter`` of the side and scales the
    radius by up to ``1 ± 2*jitter``; with the default jitter of the builder (0.02)
    every image still reads unambiguously as its caption (positions are 0.22 apart,
    sizes 0.13 vs 0.24).
    """
    if count < 1:
        raise DataError(f"count must be at least 1, got {count}")
    if not 0.0 <= jitter <= 0.05:
        raise DataError(f"jitter must be in [0, 0.05] so captions stay exact, got {jitter}")
    rng = random.Random(seed)
    combos = all_combinations()
    specs: list[ShapeSpec] = []
    while len(specs) < count:
        order = combos[:]
        rng.shuffle(order)
        for base in order[: count - len(specs)]:
            if jitter > 0:
                base = ShapeSpec(base.shape, base.color, base.position, base.size,
                                 dx=round(rng.uniform(-jitter, jitter), 5),
                                 dy=round(rng.uniform(-jitter, jitter), 5),
                                 scale=round(rng.uniform(1 - 2 * jitter, 1 + 2 * jitter), 5))
            specs.append(base)
    return specs


def split_for(spec: ShapeSpec, index: int, seed: int = 0) -> str:
    """Withheld pairs → test; the rest 90% train, 5% val, 5% test (deterministic in index and seed)."""
    if is_withheld(spec.shape, spec.color):
        return "test"
    u = random.Random(f"{seed}:{index}").random()
    return "train" if u < 0.90 else ("val" if u < 0.95 else "test")


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image → FloatTensor [3, H, W] in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)  # [H, W, 3] in 0..255
    return torch.from_numpy(array).permute(2, 0, 1).div(127.5).sub(1.0)


class ShapesDataset(torch.utils.data.Dataset):
    """Shapes rendered on the fly (no files): same specs and splits as ``unclip data build shapes``."""

    def __init__(self, image_size: int = 32, count: int = 4800, seed: int = 0, split: str = "train",
                 jitter: float = 0.02):
        if split not in ("train", "val", "test", "all"):
            raise DataError(f"unknown split {split!r}; choose train, val, test or all")
        self.image_size = image_size
        specs = sample_specs(count, seed, jitter)
        self.specs = [s for i, s in enumerate(specs) if split == "all" or split_for(s, i, seed) == split]

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, index: int) -> dict:
        spec = self.specs[index]
        return {"image": pil_to_tensor(render_spec(spec, self.image_size)), "caption": spec.caption,
                "meta": spec.meta()}

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self[i]


DEFAULT_COUNT = 4800  # 10 jittered renderings of each of the 480 combinations
DEFAULT_JITTER = 0.02


def build_shapes(out, image_size: int = 32, count: int = DEFAULT_COUNT, seed: int = 0,
                 jitter: float = DEFAULT_JITTER, progress=None) -> bool:
    """Write the shapes dataset to ``out`` in the built format; False if already built identically."""
    from unclip.data.built import DatasetWriter, is_built

    build = {"dataset": "shapes", "image_size": image_size, "count": count, "seed": seed,
             "jitter": jitter, "withheld": [list(p) for p in WITHHELD_PAIRS], "supersample": SUPERSAMPLE}
    if is_built(out, build):
        return False
    specs = sample_specs(count, seed, jitter)
    with DatasetWriter(out, name="shapes", image_size=image_size, build=build,
                       licences={"shapes": "MIT (generated by unclip)"},
                       sources=[{"name": "unclip.data.shapes", "licence": "MIT"}]) as writer:
        for index, spec in enumerate(specs):
            writer.add(render_spec(spec, image_size), spec.caption, split_for(spec, index, seed), spec.meta())
            if progress is not None:
                progress(index + 1, count)
    return True
