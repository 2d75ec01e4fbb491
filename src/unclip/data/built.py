"""The on-disk format of a built dataset (docs/ARCHITECTURE.md, "Datasets").

```
DIR/dataset.json   {"name", "version", "image_size", "licences", "counts", "sources", "build"}
DIR/index.jsonl    {"image": "images/000123.png", "caption": "...", "split": "train|val|test", "meta": {...}}
DIR/images/*.png   RGB on white
```
``dataset.json`` is written last (atomically), so its presence means the build
finished; its ``build`` entry holds the build parameters, and a second build with
the same parameters is a no-op.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import torch
from PIL import Image

from unclip.checkpoint import atomic_write_text
from unclip.data.common import BadSamples, GuardedDataset, MissingSplit, read_image_file
from unclip.errors import DataError

__all__ = ["FORMAT_VERSION", "SPLITS", "DatasetWriter", "is_built", "read_info", "BuiltDataset"]

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
_MARKER = ".building"


def read_info(root: str | Path) -> dict[str, Any]:
    path = Path(root) / "dataset.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{root} is not a built dataset (no dataset.json); build one with 'unclip data build'") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}; rebuild the dataset") from None
    if not isinstance(info, dict):
        raise DataError(f"{path} does not hold a JSON object; rebuild the dataset")
    return info


def is_built(root: str | Path, build: dict[str, Any]) -> bool:
    """True when ``root`` holds a finished build with exactly these build parameters."""
    root = Path(root)
    if not (root / "dataset.json").is_file() or (root / _MARKER).exists():
        return False
    try:
        return read_info(root).get("build") == json.loads(json.dumps(build))
    except DataError:
        return False


class DatasetWriter:
    """Writes images + index + dataset.json into ``root``; use as a context manager.

    ``root`` must be empty, missing, or an earlier (finished or interrupted)
    unclip dataset, whose files are replaced.
    """

    def __init__(self, root: str | Path, *, name: str, image_size: int, build: dict[str, Any],
                 licences: dict[str, str] | None = None, sources: list[dict[str, Any]] | None = None):
        self.root = Path(root)
        self.name = name
        self.image_size = image_size
        self.build = build
        self.licences = licences or {}
        self.sources = sources or []
        self.rows: list[dict[str, Any]] = []

    def __enter__(self) -> "DatasetWriter":
        root = self.root
        if root.exists() and not root.is_dir():
            raise DataError(f"--out {root} is a file; choose a directory")
        if root.is_dir() and any(root.iterdir()):
            ours = (root / "dataset.json").is_file() or (root / _MARKER).is_file()
            if not ours:
                raise DataError(f"{root} is not empty and not an unclip dataset; choose another --out")
            (root / "dataset.json").unlink(missing_ok=True)
            (root / "index.jsonl").unlink(missing_ok=True)
            shutil.rmtree(root / "images", ignore_errors=True)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / _MARKER).write_text("build in progress; delete this directory if the build was abandoned\n")
        return self

    def add(self, image: Image.Image, caption: str, split: str, meta: dict[str, Any] | None = None) -> str:
        """Save ``image`` as the next PNG and record its row; returns the relative path."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        relative = f"images/{len(self.rows):06d}.png"
        image.convert("RGB").save(self.root / relative, optimize=False, compress_level=6)
        self.rows.append({"image": relative, "caption": caption, "split": split, "meta": meta or {}})
        return relative

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            return  # keep the marker: the directory is a partial build
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in self.rows)
        atomic_write_text(self.root / "index.jsonl", text)
        counts = Counter(row["split"] for row in self.rows)
        info = {
            "name": self.name,
            "version": FORMAT_VERSION,
            "image_size": self.image_size,
            "licences": self.licences,
            "counts": {split: counts.get(split, 0) for split in SPLITS} | {"total": len(self.rows)},
            "sources": self.sources,
            "build": self.build,
        }
        atomic_write_text(self.root / "dataset.json", json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        (self.root / _MARKER).unlink(missing_ok=True)


def read_index(root: Path) -> Iterable[tuple[int, Any]]:
    path = root / "index.jsonl"
    try:
        handle = open(path, encoding="utf-8")
    except OSError:
        raise DataError(f"{root} has no readable index.jsonl; rebuild the dataset") from None
    with handle:
        for line_no, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError:
                    yield line_no, None


class BuiltDataset(GuardedDataset):
    """A built dataset directory, one split (or ``"all"``).

    ``in_memory=True`` decodes every image once into a uint8 tensor (shapes32:
    ~12 MB, emoji64 train: ~155 MB), which makes small-model training on a CPU
    many times faster than decoding PNGs every step.
    """

    def __init__(self, root: str | Path, split: str = "train", image_size: int | None = None, *,
                 in_memory: bool = False):
        self.root = Path(root)
        self.info = read_info(self.root)
        if (self.root / _MARKER).exists():
            raise DataError(f"{root} is an unfinished build; run 'unclip data build' again")
        if split not in SPLITS + ("all",):
            raise DataError(f"unknown split {split!r}; choose train, val, test or all")
        self.split = split
        self.image_size = image_size
        self.bad = BadSamples(str(self.root))
        self.rows: list[dict[str, Any]] = []
        seen = 0  # rows of this split, good or bad
        for line_no, row in read_index(self.root):
            if split != "all" and isinstance(row, dict) and row.get("split") != split:
                continue
            seen += 1
            problem = self._check_row(row)
            if problem:
                where = row.get("image") if isinstance(row, dict) and row.get("image") else f"index.jsonl:{line_no}"
                self.bad.add(where, problem)
            else:
                self.rows.append(row)
        self.bad.report(" when opening")
        if not self.rows:
            error = DataError if seen else MissingSplit
            raise error(f"{root} has no usable samples in split {split!r}")
        self.pixels: torch.Tensor | None = None  # [N, 3, H, W] uint8 when in_memory
        if in_memory:
            self._decode_all()

    def _decode_all(self) -> None:
        """Decode every image once into one uint8 tensor; undecodable rows are dropped and reported."""
        kept, pixels = [], []
        for row in self.rows:
            try:
                image = read_image_file(self.root / row["image"], self.image_size)  # [3, H, W] in [-1, 1]
            except DataError as exc:
                self.bad.add(self.root / row["image"], str(exc))
                continue
            kept.append(row)
            pixels.append(image.add(1).mul(127.5).round().to(torch.uint8))
        self.bad.report(" when decoding")
        if not kept:
            raise DataError(f"{self.root} has no decodable images in split {self.split!r}")
        if len({tuple(p.shape) for p in pixels}) > 1:
            raise DataError(f"{self.root}: images differ in size; pass image_size=N with in_memory=True")
        self.rows, self.pixels = kept, torch.stack(pixels)

    def _check_row(self, row: Any) -> str:
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            return "malformed index row"
        caption = row.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            return "empty caption"
        if not (self.root / row["image"]).is_file():
            return "missing file"
        return ""

    def __len__(self) -> int:
        return len(self.rows)

    def describe(self, index: int) -> str:
        return str(self.root / self.rows[index]["image"])

    def load(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        if self.pixels is not None:
            image = self.pixels[index].float().div(127.5).sub(1.0)
        else:
            image = read_image_file(self.root / row["image"], self.image_size)
        meta = dict(row.get("meta") or {}) | {"split": row["split"], "path": row["image"]}
        return {"image": image, "caption": row["caption"], "meta": meta}
