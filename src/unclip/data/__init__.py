"""Image–text datasets: one interface for every source.

``open_dataset(path, split="train", image_size=None)`` gives items
``{"image": FloatTensor[3, H, W] in [-1, 1], "caption": str, "meta": dict}`` from

* a built dataset directory (``dataset.json`` + ``index.jsonl`` + ``images/``),
  written by ``unclip data build shapes|emoji|icons``;
* a plain folder of images, captions from same-name ``.txt`` files,
  ``captions.jsonl`` or ``captions.csv`` (or none: caption ``""``, language-free), or Hugging Face's
  ``imagefolder`` layout (``metadata.jsonl``/``.csv`` with ``file_name`` and a caption column);
* webdataset ``.tar`` shards in the img2dataset layout (streamed, an IterableDataset): local paths,
  ``{000..009}`` patterns, and ``pipe:``/``http(s)://`` URLs through the optional ``webdataset`` package.

``caption_column`` names the caption column of a folder's metadata (default ``text`` for
``imagefolder``) or the caption member of shards (default ``txt``).

Batch with ``DataLoader(ds, collate_fn=collate_samples)``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from torch.utils.data import Dataset, IterableDataset

from unclip.data.built import BuiltDataset, DatasetWriter, read_info
from unclip.data.common import BadSamples, DataWarning, MissingSplit, collate_samples, decode_image, image_to_tensor
from unclip.data.folder import FolderDataset
from unclip.data.shapes import ShapesDataset, parse_caption, render_shape
from unclip.data.shards import ShardDataset, is_shard_spec
from unclip.errors import DataError

__all__ = [
    "open_dataset",
    "open_eval_split",
    "MissingSplit",
    "collate_samples",
    "BuiltDataset",
    "DatasetWriter",
    "ShapesDataset",
    "FolderDataset",
    "ShardDataset",
    "BadSamples",
    "DataWarning",
    "DataError",
    "read_info",
    "render_shape",
    "parse_caption",
    "decode_image",
    "image_to_tensor",
]


def open_dataset(path: str | Path, split: str = "train", image_size: int | None = None, *,
                 in_memory: bool = False, caption_column: str | None = None) -> Dataset | IterableDataset:
    """Open any supported dataset at ``path`` (see the module docstring).

    ``split`` is ``train``, ``val``, ``test`` or ``all``. ``image_size`` resizes
    (shorter side, Lanczos) and centre-crops every image to a square of that side.
    ``in_memory=True`` (built datasets only) decodes all images once up front.
    """
    text = str(path)
    if in_memory and not (Path(text) / "dataset.json").is_file():
        raise DataError(f"in_memory=True works for built datasets only; {text} is not one")
    if is_shard_spec(text) or (Path(text).is_dir() and _only_shards(Path(text))):
        return ShardDataset(text, split=split, image_size=image_size, caption_key=caption_column or "txt")
    root = Path(text)
    if not root.exists():
        raise DataError(f"dataset not found: {root} (build one with 'unclip data build shapes --out {root}')")
    if (root / "dataset.json").is_file():
        return BuiltDataset(root, split=split, image_size=image_size, in_memory=in_memory)
    if root.is_dir():
        return FolderDataset(root, split=split, image_size=image_size, caption_column=caption_column)
    raise DataError(f"{root} is neither a dataset directory, an image folder nor a .tar shard")


def open_eval_split(path: str | Path, split: str, image_size: int | None = None, *,
                    caption_column: str | None = None) -> Dataset | IterableDataset:
    """``open_dataset(path, split)`` for evaluation: a source without that split (a plain folder of
    images, shards without split sub-folders, a built dataset whose split is empty) is evaluated on its
    train split instead, with a ``DataWarning`` saying so, rather than failing after training."""
    try:
        return open_dataset(path, split=split, image_size=image_size, caption_column=caption_column)
    except MissingSplit as exc:
        if split == "train":
            raise
        warnings.warn(f"{exc}; evaluating on the train split instead (the scores are not held-out)",
                      DataWarning, stacklevel=2)
        return open_dataset(path, split="train", image_size=image_size, caption_column=caption_column)


def _only_shards(root: Path) -> bool:
    """A directory whose data are .tar shards (directly or under train/ val/ test/)."""
    if (root / "dataset.json").exists():
        return False
    found = any(root.glob("*.tar")) or any(root.glob("*/*.tar"))
    has_images = any(p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") for p in root.iterdir() if p.is_file())
    return found and not has_images
