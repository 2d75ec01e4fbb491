"""``unclip data info``: counts per split and caption statistics, without decoding images."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from unclip.errors import DataError

__all__ = ["dataset_stats", "format_stats"]


def _captions_by_split(root: Path) -> tuple[dict[str, Any], dict[str, list[str]]]:
    from unclip.data.built import read_index, read_info

    if (root / "dataset.json").is_file():
        info = read_info(root)
        by_split: dict[str, list[str]] = {}
        for _, row in read_index(root):
            if isinstance(row, dict):
                by_split.setdefault(str(row.get("split")), []).append(str(row.get("caption", "")))
        return info, by_split
    from unclip.data import open_dataset

    by_split = {}
    for split in ("train", "val", "test"):
        try:
            dataset = open_dataset(root, split=split)
        except DataError:
            continue
        captions = getattr(dataset, "captions", None)
        if captions is None:
            raise DataError(f"{root}: 'info' reads built datasets and image folders; shards are streamed only")
        by_split[split] = list(captions)
    if not by_split:
        raise DataError(f"{root} holds no readable samples")
    return {"name": root.name, "image_size": None, "licences": {}}, by_split


def dataset_stats(path: str | Path) -> dict[str, Any]:
    root = Path(path)
    if not root.exists():
        raise DataError(f"dataset not found: {root}")
    info, by_split = _captions_by_split(root)
    every = [c for captions in by_split.values() for c in captions]
    words = [len(c.split()) for c in every if c]
    vocab = Counter(w.lower().strip(",.") for c in every for w in c.split())
    train = set(by_split.get("train", ()))
    overlap = {s: sum(c in train for c in set(by_split.get(s, ()))) for s in ("val", "test") if s in by_split}
    return {
        "name": info.get("name"),
        "image_size": info.get("image_size"),
        "licences": info.get("licences", {}),
        "counts": {s: len(c) for s, c in sorted(by_split.items(), key=_split_order)} | {"total": len(every)},
        "unique_captions": {s: len(set(c)) for s, c in sorted(by_split.items(), key=_split_order)},
        "captions_also_in_train": overlap,
        "empty_captions": sum(not c for c in every),
        "words_per_caption": {
            "min": min(words, default=0), "mean": round(statistics.fmean(words), 2) if words else 0.0,
            "max": max(words, default=0),
        },
        "vocabulary": len(vocab),
        "top_words": vocab.most_common(12),
    }


def _split_order(item: tuple[str, Any]) -> tuple[int, str]:
    order = {"train": 0, "val": 1, "test": 2}
    return order.get(item[0], 3), item[0]


def format_stats(stats: dict[str, Any]) -> str:
    lines = [f"dataset: {stats['name']}  image size: {stats['image_size']}"]
    lines.append("counts: " + ", ".join(f"{k} {v}" for k, v in stats["counts"].items()))
    lines.append("unique captions: " + ", ".join(f"{k} {v}" for k, v in stats["unique_captions"].items()))
    if stats["captions_also_in_train"]:
        lines.append("captions also in train: "
                     + ", ".join(f"{k} {v}" for k, v in stats["captions_also_in_train"].items()))
    w = stats["words_per_caption"]
    lines.append(f"words per caption: min {w['min']}, mean {w['mean']}, max {w['max']}; "
                 f"empty captions {stats['empty_captions']}; vocabulary {stats['vocabulary']} words")
    lines.append("top words: " + ", ".join(f"{word} ({n})" for word, n in stats["top_words"]))
    for source, licence in stats["licences"].items():
        lines.append(f"licence: {source}: {licence}")
    return "\n".join(lines)
