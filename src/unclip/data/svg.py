"""SVG helpers: Iconify icon sets to standalone SVG, and rasterising with resvg-py on white."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from unclip.imagefile import to_rgb_on_white
from unclip.errors import DataError

__all__ = ["iconify_names", "iconify_svg", "rasterise"]


def iconify_names(icon_set: dict[str, Any]) -> list[str]:
    """Every icon and alias name of an Iconify set (icons first)."""
    return list(icon_set.get("icons", {})) + list(icon_set.get("aliases", {}))


def _resolve(icon_set: dict[str, Any], name: str) -> tuple[dict[str, Any], str]:
    """Merge an alias chain into one icon dict; returns (props, root icon name)."""
    icons, aliases = icon_set.get("icons", {}), icon_set.get("aliases", {})
    chain: list[dict[str, Any]] = []
    seen = set()
    while name not in icons:
        if name not in aliases or name in seen:
            raise DataError(f"icon {name!r} not found in Iconify set {icon_set.get('prefix', '?')!r}")
        seen.add(name)
        chain.append(aliases[name])
        name = aliases[name]["parent"]
    props = dict(icons[name])
    for alias in reversed(chain):  # nearest alias applied last
        for key in ("hFlip", "vFlip"):
            if alias.get(key):
                props[key] = not props.get(key, False)
        if alias.get("rotate"):
            props["rotate"] = (props.get("rotate", 0) + alias["rotate"]) % 4
        for key in ("left", "top", "width", "height"):
            if key in alias:
                props[key] = alias[key]
    return props, name


def iconify_svg(icon_set: dict[str, Any], name: str) -> str:
    """A standalone ``<svg>`` for icon (or alias) ``name``.

    The viewBox is the icon's ``left``/``top`` (default 0) and ``width``/``height``
    (the icon's own, else the set's, else 16); flips and quarter turns become a
    transform about the centre.
    """
    props, _ = _resolve(icon_set, name)
    left, top = props.get("left", icon_set.get("left", 0)), props.get("top", icon_set.get("top", 0))
    width = props.get("width", icon_set.get("width", 16))
    height = props.get("height", icon_set.get("height", 16))
    body = props["body"]
    cx, cy = left + width / 2, top + height / 2
    transforms = []
    if props.get("rotate"):
        transforms.append(f"rotate({90 * props['rotate']} {cx} {cy})")
    if props.get("hFlip") or props.get("vFlip"):
        sx, sy = (-1 if props.get("hFlip") else 1), (-1 if props.get("vFlip") else 1)
        transforms.append(f"translate({cx} {cy}) scale({sx} {sy}) translate({-cx} {-cy})")
    if transforms:
        body = f'<g transform="{" ".join(transforms)}">{body}</g>'
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'width="{width}" height="{height}" viewBox="{left} {top} {width} {height}">{body}</svg>')


def rasterise(svg: str, size: int) -> Image.Image:
    """Render ``svg`` to an RGB ``size``x``size`` image composited on white (resvg-py)."""
    import resvg_py

    try:
        png = resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size)
    except (ValueError, RuntimeError) as exc:
        raise DataError(f"cannot render SVG: {exc}") from None
    with Image.open(io.BytesIO(bytes(png))) as image:
        image.load()
        image = to_rgb_on_white(image)
    if image.size != (size, size):  # non-square viewBox: centre on a white square
        canvas = Image.new("RGB", (size, size), "white")
        image.thumbnail((size, size), Image.LANCZOS)
        canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
        image = canvas
    return image
