"""The *emoji* dataset: ~4.6k emoji concepts in four open styles, captioned from emojibase.

Sources (pinned npm packages, read from their tarballs): Iconify sets
``@iconify-json/noto`` (Apache-2.0), ``twemoji`` (CC-BY-4.0), ``openmoji``
(CC-BY-SA-4.0), ``fluent-emoji-flat`` (MIT), and ``emojibase-data`` (MIT) for
labels, tags and groups. Each icon is rasterised with resvg-py and composited
on white. Captions read ``a Twemoji-style emoji of red apple, fruit, food, diet``
(``an OpenMoji-style ...``):
the emojibase label (skin-tone variants carry their tone in the label), then up
to three extra words from the subgroup name and the tags; icons without an
emojibase entry fall back to their icon name.

Splits are by **concept** — the codepoint sequence without FE0F and without
skin-tone modifiers — so all styles and tones of one emoji land in the same
split and no test caption is ever seen in training (80/10/10 by a seeded hash; ``split=(0.95, 0.0,
0.05)`` keeps a small held-out set instead, as the shipped model does). With one seed the hash is the
same for every choice of fractions, so a 5% test split is a subset of the 10% one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from unclip.data.common import BadSamples
from unclip.data.npm import Package, open_package
from unclip.data.svg import iconify_svg, rasterise
from unclip.errors import DataError

__all__ = ["STYLES", "normalise_hexcode", "concept_of", "split_for_concept", "parse_split", "EmojiEntry",
           "load_emojibase", "emoji_caption", "collect_style", "build_emoji"]

# style key → (npm package, name in captions, licence holder)
STYLES: dict[str, tuple[str, str, str]] = {
    "noto": ("@iconify-json/noto", "Noto", "Google Noto Emoji"),
    "twemoji": ("@iconify-json/twemoji", "Twemoji", "Twitter Twemoji"),
    "openmoji": ("@iconify-json/openmoji", "OpenMoji", "OpenMoji"),
    "fluent": ("@iconify-json/fluent-emoji-flat", "Fluent", "Microsoft Fluent Emoji (flat)"),
}
EMOJIBASE = "emojibase-data"
SKIN_TONES = frozenset({"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"})
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train, val, test by concept
BUILDER_VERSION = 1
_WORD = re.compile(r"^[a-z][a-z']{2,}$")


def normalise_hexcode(code: str) -> str:
    """``1F636-200D-1F32B-FE0F`` → ``1f636-200d-1f32b`` (lower case, no FE0F variation selector)."""
    return "-".join(part for part in code.lower().replace("_", "-").split("-") if part and part != "fe0f")


def concept_of(hexcode: str) -> str:
    """The concept of a normalised hexcode: skin-tone modifiers removed."""
    return "-".join(part for part in hexcode.split("-") if part not in SKIN_TONES)


def parse_split(text: str) -> tuple[float, float, float]:
    """``"80/10/10"`` or ``"95/0/5"`` → train, val, test fractions (percentages summing to 100)."""
    parts = text.split("/")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 100) > 1e-6 or values[0] <= 0:
        raise DataError(f"--split {text!r} is not TRAIN/VAL/TEST percentages summing to 100 (e.g. 80/10/10 or 95/0/5)")
    return tuple(v / 100 for v in values)


def split_for_concept(concept: str, seed: int = 0, fractions: Sequence[float] = SPLIT_FRACTIONS) -> str:
    """The split of a concept: a seeded hash in [0, 1) cut at the train and val fractions."""
    digest = hashlib.sha1(f"{seed}:{concept}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    train, val, _ = fractions
    return "train" if u < train else ("val" if u < train + val else "test")


@dataclass(frozen=True)
class EmojiEntry:
    label: str
    tags: tuple[str, ...] = ()
    subgroup: str = ""
    group: str = ""
    emoji: str = ""
    tone: Any = None
    extra: dict = field(default_factory=dict, compare=False)


def load_emojibase(package: Package) -> dict[str, EmojiEntry]:
    """Normalised hexcode → entry, for every emoji and skin-tone variant in ``en/data.json``."""
    data = package.read_json("en/data.json")
    groups = package.read_json("meta/groups.json")
    group_names = {int(k): v for k, v in groups.get("groups", {}).items()}
    subgroup_names = {int(k): v for k, v in groups.get("subgroups", {}).items()}
    table: dict[str, EmojiEntry] = {}
    for item in data:
        tags = tuple(item.get("tags") or ())
        group, subgroup = group_names.get(item.get("group"), ""), subgroup_names.get(item.get("subgroup"), "")
        for variant in [item] + list(item.get("skins") or ()):
            table[normalise_hexcode(variant["hexcode"])] = EmojiEntry(
                label=variant["label"], tags=tags, subgroup=subgroup, group=group,
                emoji=variant.get("emoji", ""), tone=variant.get("tone"))
    return table


def emoji_caption(style_title: str, label: str, subgroup: str = "", tags: Sequence[str] = (), extras: int = 3) -> str:
    """``a {style}-style emoji of {label}`` + up to ``extras`` subgroup words and tags not already in the label."""
    used = set(re.findall(r"[a-z']+", label.lower()))
    words: list[str] = []
    for word in list(reversed(subgroup.split("-"))) + list(tags):
        word = word.lower()
        if len(words) < extras and _WORD.match(word) and word not in used:
            words.append(word)
            used.add(word)
    article = "an" if style_title[:1].lower() in "aeiou" else "a"
    return f"{article} {style_title}-style emoji of {label}" + "".join(f", {w}" for w in words)


@dataclass(frozen=True)
class EmojiItem:
    concept: str
    style: str
    icon: str
    caption: str
    meta: dict = field(compare=False)


def collect_style(style: str, icon_set: dict, chars: dict[str, str], emojibase: dict[str, EmojiEntry]) -> list[EmojiItem]:
    """One item per distinct emoji of one Iconify set; un-coded icons fall back to their name."""
    title = STYLES[style][1]
    icons, aliases = icon_set.get("icons", {}), icon_set.get("aliases", {})
    items: dict[str, EmojiItem] = {}
    used_icons: set[str] = set()
    for code, icon in sorted(chars.items()):
        hexcode = normalise_hexcode(code)
        if hexcode in items or (icon not in icons and icon not in aliases):
            continue
        used_icons.add(_root_icon(icon_set, icon))
        entry = emojibase.get(hexcode)
        if entry is None:
            caption = emoji_caption(title, icon.replace("-", " "))
            meta = {"label": icon.replace("-", " "), "has_emojibase": False}
        else:
            caption = emoji_caption(title, entry.label, entry.subgroup, entry.tags)
            meta = {"label": entry.label, "emoji": entry.emoji, "group": entry.group, "subgroup": entry.subgroup,
                    "skin_tone": entry.tone, "has_emojibase": True}
        concept = concept_of(hexcode)
        items[hexcode] = EmojiItem(concept, style, icon, caption,
                                   meta | {"style": style, "icon": icon, "hexcode": hexcode, "concept": concept})
    for icon in sorted(icons):
        if icon in used_icons:
            continue
        concept = f"name:{icon}"
        label = icon.replace("-", " ")
        items[concept] = EmojiItem(concept, style, icon, emoji_caption(title, label),
                                   {"label": label, "has_emojibase": False, "style": style, "icon": icon,
                                    "hexcode": None, "concept": concept})
    return list(items.values())


def _root_icon(icon_set: dict, name: str) -> str:
    aliases = icon_set.get("aliases", {})
    for _ in range(16):  # alias chains are short; the bound guards against cycles
        if name not in aliases:
            break
        name = aliases[name]["parent"]
    return name


def build_emoji(out, image_size: int = 64, seed: int = 0, limit: int | None = None, cache: Path | None = None,
                packages: Path | None = None, progress: Callable[[int, int], None] | None = None,
                styles: Sequence[str] = tuple(STYLES), split: Sequence[float] = SPLIT_FRACTIONS) -> bool:
    """Build the emoji dataset into ``out``; False if it is already built with these parameters."""
    from unclip.data.built import DatasetWriter, is_built

    unknown = [s for s in styles if s not in STYLES]
    if unknown or not styles:
        raise DataError(f"unknown emoji style {unknown[0] if unknown else ''!r}; choose from {', '.join(STYLES)}")
    names = [STYLES[s][0] for s in styles] + [EMOJIBASE]
    opened = {name: open_package(name, cache, packages) for name in names}
    build = {"dataset": "emoji", "builder": BUILDER_VERSION, "image_size": image_size, "seed": seed,
             "limit": limit, "styles": list(styles), "packages": {n: p.version for n, p in opened.items()}}
    if tuple(split) != SPLIT_FRACTIONS:  # recorded only when not the default, so older builds stay built
        build["split"] = list(split)
    if is_built(out, build):
        return False
    emojibase = load_emojibase(opened[EMOJIBASE])
    items, icon_sets = [], {}
    for style in styles:
        package = opened[STYLES[style][0]]
        icon_sets[style] = package.read_json("icons.json")
        items += collect_style(style, icon_sets[style], package.read_json("chars.json"), emojibase)
    style_order = {s: i for i, s in enumerate(styles)}
    items.sort(key=lambda it: (it.concept, it.meta["hexcode"] or "", style_order[it.style]))
    if limit is not None:
        items = items[:limit]
    licences = {style: f"{opened[STYLES[style][0]].licence} ({STYLES[style][2]}, via {STYLES[style][0]} "
                       f"{opened[STYLES[style][0]].version})" for style in styles}
    licences["captions"] = f"MIT (emojibase-data {opened[EMOJIBASE].version})"
    sources = [{"name": n, "version": p.version, "licence": p.licence} for n, p in opened.items()]
    bad = BadSamples(f"emoji build {out}")
    with DatasetWriter(out, name="emoji", image_size=image_size, build=build, licences=licences,
                       sources=sources) as writer:
        for index, item in enumerate(items):
            try:
                image = rasterise(iconify_svg(icon_sets[item.style], item.icon), image_size)
            except DataError as exc:
                bad.add(f"{item.style}:{item.icon}", str(exc))
                continue
            writer.add(image, item.caption, split_for_concept(item.concept, seed, split), item.meta)
            if progress is not None:
                progress(index + 1, len(items))
    bad.report(" (not rendered)")
    for package in opened.values():
        package.close()
    return True
