"""One contract over every dataset source (house rule 9): item types, shapes, ranges, batching."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from unclip.data import ShapesDataset, collate_samples, open_dataset
from unclip.data.emoji import build_emoji
from unclip.data.shapes import build_shapes
from unclip.data.shards import write_shards

FIXTURE = Path(__file__).parent / "fixtures" / "emoji"


def _png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 14), (i * 30 % 256, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _make(kind: str, tmp: Path):
    if kind == "shapes-live":
        return ShapesDataset(image_size=16, count=24, split="all")
    if kind == "shapes-built":
        build_shapes(tmp / "s", image_size=16, count=24)
        return open_dataset(tmp / "s", "all")
    if kind == "emoji-built":
        build_emoji(tmp / "e", image_size=16, packages=FIXTURE, styles=("twemoji", "fluent"), limit=6)
        return open_dataset(tmp / "e", "all")
    if kind == "folder":
        for i in range(4):
            (tmp / f"{i}.png").write_bytes(_png(i))
            (tmp / f"{i}.txt").write_text(f"picture {i}")
        return open_dataset(tmp, image_size=16)
    if kind == "shards":
        write_shards(((f"{i:04d}", _png(i), "png", f"picture {i}", {"n": i}) for i in range(5)),
                     str(tmp / "%02d.tar"), per_shard=2)
        return open_dataset(str(tmp / "{00..02}.tar"), image_size=16)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["shapes-live", "shapes-built", "emoji-built", "folder", "shards"])
def test_dataset_contract(kind, tmp_path):
    dataset = _make(kind, tmp_path)
    items = list(dataset) if isinstance(dataset, IterableDataset) else [dataset[i] for i in range(len(dataset))]
    assert items
    for item in items:
        assert set(item) == {"image", "caption", "meta"}
        image = item["image"]
        assert image.dtype == torch.float32 and image.shape == (3, 16, 16)
        assert image.min() >= -1.0 and image.max() <= 1.0
        assert isinstance(item["caption"], str) and item["caption"]
        assert isinstance(item["meta"], dict)
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate_samples)))
    assert batch["image"].shape[1:] == (3, 16, 16) and len(batch["caption"]) == len(batch["meta"]) == len(batch["image"])
