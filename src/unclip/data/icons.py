"""The *icons* dataset: Tabler Icons (MIT), ~5.2k outline + ~1.1k filled, captioned by name, category and tags.

Read from the pinned ``@tabler/icons`` tarball: ``icons.json`` (name, category,
tags, styles) and ``tabler-nodes-{outline,filled}.json`` (SVG child nodes). Each
icon is drawn black on white (stroke width 2 on the 24-unit grid for outline)
with resvg-py. Captions read ``a tabler outline icon of arrow left, arrows,
back, direction``: the name, the category, then up to three tags not already
said. Splits are by icon name, so the outline and filled versions of one icon
share a split (80/10/10 by a seeded hash).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Sequence
from xml.sax.saxutils import quoteattr

from unclip.data.common import BadSamples
from unclip.data.emoji import SPLIT_FRACTIONS, split_for_concept
from unclip.data.npm import open_package
from unclip.data.svg import rasterise
from unclip.errors import DataError

__all__ = ["TABLER", "ICON_STYLES", "icon_caption", "tabler_svg", "build_icons"]

TABLER = "@tabler/icons"
ICON_STYLES = ("outline", "filled")
BUILDER_VERSION = 1
_ROOT = {
    "outline": 'fill="none" stroke="black" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"',
    "filled": 'fill="black" stroke="none"',
}


def tabler_svg(nodes: list, style: str) -> str:
    """Standalone 24x24 SVG from Tabler's ``[[tag, {attr: value}], ...]`` node list."""
    parts = []
    for tag, attrs in nodes:
        if not re.fullmatch(r"[a-zA-Z]+", tag):
            raise DataError(f"unexpected SVG element {tag!r} in Tabler nodes")
        text = " ".join(f"{k}={quoteattr(str(v))}" for k, v in attrs.items() if re.fullmatch(r"[a-zA-Z:-]+", k))
        parts.append(f"<{tag} {text}/>")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="24" height="24" viewBox="0 0 24 24" '
            f'{_ROOT[style]}>{"".join(parts)}</svg>')


def icon_caption(name: str, style: str, category: str = "", tags: Sequence[str] = (), extras: int = 3) -> str:
    label = name.replace("-", " ")
    used = set(label.split())
    words = []
    if category and category.lower() not in used:
        words.append(category.lower())
        used.add(category.lower())
    added = 0
    for tag in tags:
        tag = str(tag).strip().lower()
        if added < extras and tag and tag not in used and re.fullmatch(r"[a-z][a-z0-9 '-]*", tag):
            words.append(tag)
            used.add(tag)
            added += 1
    return f"a tabler {style} icon of {label}" + "".join(f", {w}" for w in words)


def build_icons(out, image_size: int = 64, seed: int = 0, limit: int | None = None, cache: Path | None = None,
                packages: Path | None = None, progress: Callable[[int, int], None] | None = None,
                styles: Sequence[str] = ICON_STYLES, split: Sequence[float] = SPLIT_FRACTIONS) -> bool:
    """Build the Tabler icons dataset into ``out``; False if already built with these parameters."""
    from unclip.data.built import DatasetWriter, is_built

    unknown = [s for s in styles if s not in ICON_STYLES]
    if unknown or not styles:
        raise DataError(f"unknown icon style {unknown[0] if unknown else ''!r}; choose from {', '.join(ICON_STYLES)}")
    package = open_package(TABLER, cache, packages)
    build = {"dataset": "icons", "builder": BUILDER_VERSION, "image_size": image_size, "seed": seed,
             "limit": limit, "styles": list(styles), "packages": {TABLER: package.version}}
    if tuple(split) != SPLIT_FRACTIONS:
        build["split"] = list(split)
    if is_built(out, build):
        return False
    catalogue: dict[str, Any] = package.read_json("icons.json")
    items = []
    for style in styles:
        nodes = package.read_json(f"tabler-nodes-{style}.json")
        for name in sorted(nodes):
            entry = catalogue.get(name) or {}
            category, tags = entry.get("category") or "", entry.get("tags") or []
            meta = {"name": name, "style": style, "category": category, "concept": name}
            items.append((name, style, nodes[name], icon_caption(name, style, category, tags), meta))
    items.sort(key=lambda it: (it[0], styles.index(it[1])))
    if limit is not None:
        items = items[:limit]
    bad = BadSamples(f"icons build {out}")
    with DatasetWriter(out, name="icons", image_size=image_size, build=build,
                       licences={"tabler": f"MIT (Tabler Icons, via {TABLER} {package.version})"},
                       sources=[{"name": TABLER, "version": package.version, "licence": "MIT"}]) as writer:
        for index, (name, style, node_list, caption, meta) in enumerate(items):
            try:
                image = rasterise(tabler_svg(node_list, style), image_size)
            except DataError as exc:
                bad.add(f"{style}:{name}", str(exc))
                continue
            writer.add(image, caption, split_for_concept(name, seed, split), meta)
            if progress is not None:
                progress(index + 1, len(items))
    bad.report(" (not rendered)")
    package.close()
    return True
