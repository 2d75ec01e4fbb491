"""Shared pieces of every dataset: decoding images to tensors, bad-sample accounting, collate.

Items are dicts ``{"image": FloatTensor[3, H, W] in [-1, 1], "caption": str, "meta": dict}``.
Bad data (corrupt or truncated images, non-images, empty or non-UTF-8 captions,
missing files) never crashes an epoch: it is skipped, counted in a ``BadSamples``
log and reported in one warning naming the count and the first few paths.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from unclip.errors import DataError
from unclip.imagefile import ImageRejected, image_to_tensor, open_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadSamples",
    "decode_image",
    "read_image_file",
    "image_to_tensor",
    "decode_caption",
    "collate_samples",
    "DataWarning",
    "MissingSplit",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


class MissingSplit(DataError):
    """The dataset has no such split (a plain folder without val/ or test/, an empty split)."""


class DataWarning(UserWarning):
    """Some samples of a dataset were skipped (the message says how many and which)."""


class BadSamples:
    """Counts skipped samples; warns once per batch of findings with the first few paths.

    Warnings are ``DataWarning``s (``warnings`` module): filter, record or turn them
    into log records with ``logging.captureWarnings(True)``.
    """

    def __init__(self, source: str, show: int = 5):
        self.source = source
        self.show = show
        self.items: list[tuple[str, str]] = []  # (path, reason)
        self._reported = 0
        self._found_while_reading = 0

    def add(self, path: str | Path, reason: str) -> None:
        self.items.append((str(path), reason))

    def __len__(self) -> int:
        return len(self.items)

    def report(self, when: str = "") -> None:
        """One warning summarising everything skipped since the last report (nothing if none)."""
        new = len(self.items) - self._reported
        if new <= 0:
            return
        first = "; ".join(f"{p} ({r})" for p, r in self.items[: self.show])
        more = f" and {len(self.items) - self.show} more" if len(self.items) > self.show else ""
        message = (f"{self.source}: skipped {len(self.items)} bad sample(s){when}: {first}{more}")
        self._reported = len(self.items)
        warnings.warn(message, DataWarning, stacklevel=3)

    def report_sparsely(self) -> None:
        """Call after each bad sample found while iterating: warns at the 1st, 10th, 100th ... of them."""
        self._found_while_reading += 1
        n = self._found_while_reading
        if str(n).rstrip("0") == "1":
            self.report(" while reading")


def decode_image(data: bytes, image_size: int | None = None) -> torch.Tensor:
    """Bytes of an image file → tensor; ``DataError`` for non-images, truncated files and images over
    ``unclip.limits.MAX_IMAGE_PIXELS`` (checked from the header, so a bomb is skipped like any bad file)."""
    try:
        image = open_image(data)
    except ImageRejected as exc:
        raise DataError(exc.reason) from None
    return image_to_tensor(image, image_size)


def read_image_file(path: str | Path, image_size: int | None = None) -> torch.Tensor:
    """A dataset's image file → tensor (``image_to_tensor``); any failure is a ``DataError`` (a bad sample)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_image(data, image_size)


def decode_caption(data: bytes) -> str:
    """UTF-8 bytes → stripped one-line caption; DataError if not UTF-8 or empty."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError("caption is not UTF-8") from None
    text = " ".join(text.split())
    if not text:
        raise DataError("caption is empty")
    return text


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch items: images stacked to [B, 3, H, W]; captions and meta kept as lists.

    Use as ``DataLoader(..., collate_fn=collate_samples)``: torch's default_collate
    fails on meta dicts whose keys differ between samples.
    """
    if not samples:
        raise DataError("cannot collate an empty batch")
    shapes = {tuple(s["image"].shape) for s in samples}
    if len(shapes) > 1:
        raise DataError(f"images in a batch differ in size {sorted(shapes)}; open the dataset with image_size=N")
    batch = {
        "image": torch.stack([s["image"] for s in samples]),
        "caption": [s["caption"] for s in samples],
        "meta": [s["meta"] for s in samples],
    }
    for key in ("image_embed", "text_embed"):  # embeddings stored inside shards (unclip.data.shards)
        if all(key in s for s in samples):
            batch[key] = torch.stack([s[key] for s in samples])
    return batch


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class GuardedDataset(torch.utils.data.Dataset):
    """Map-style dataset whose ``__getitem__`` never fails on bad data.

    Subclasses implement ``load(index) -> item`` (raising ``DataError`` for a bad
    sample) and ``describe(index) -> path``. A bad sample is recorded in
    ``self.bad`` and replaced by the next good one (wrapping around), so an epoch
    keeps its length and never crashes; warnings come at the 1st, 10th, 100th ...
    bad sample. If nothing in the dataset can be read, ``DataError`` is raised.
    """

    bad: BadSamples

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        return f"#{index}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n}")
        index %= n
        known_bad: set[int] = self.__dict__.setdefault("_known_bad", set())
        for attempt in range(min(n, 64)):
            i = (index + attempt) % n
            if i in known_bad:  # already counted; substitute silently
                continue
            try:
                return self.load(i)
            except DataError as exc:
                known_bad.add(i)
                self.bad.add(self.describe(i), str(exc))
                self.bad.report_sparsely()
        raise DataError(f"{self.bad.source}: 64 samples in a row are unreadable, e.g. {self.describe(index)}; "
                        "check the files")
