"""A plain folder of images as a dataset (bring your own data).

Captions come from, in this order of preference:

1. ``captions.jsonl`` — one JSON object per line with ``file`` (or ``image``) and
   ``caption`` (or ``text``); other keys go to ``meta``;
2. ``captions.csv`` — a header row with ``file``/``image`` and ``caption``/``text`` columns;
3. ``metadata.jsonl`` or ``metadata.csv`` — Hugging Face's ``imagefolder`` layout: ``file_name`` and a
   caption column, ``text`` unless ``caption_column`` names another (``data.caption_column``, ``unclip
   embed --caption-column``); other columns go to ``meta``. With split sub-folders the metadata may sit in
   each of them or once at the top with ``file_name`` = ``train/0001.png``;
4. same-name ``.txt`` files (``cat.png`` + ``cat.txt``), if any exist;
5. none: every caption is ``""`` and ``meta["has_caption"]`` is False (language-free training).

``caption_column`` also picks the column of ``captions.jsonl``/``captions.csv`` (default: ``caption``,
else ``text``). Sub-folders named ``train``/``val`` (or ``validation``, as ``imagefolder`` names it)/``test``
are used as splits when present; otherwise the whole folder is the ``train`` split. Images are found
recursively.

Checks happen in two places: when the folder is opened (missing, empty or
unreadable files, files that are not images, images over ``unclip.limits.MAX_IMAGE_PIXELS``
(decompression bombs), missing/empty/non-UTF-8 captions — all skipped and reported in one
warning) and in ``__getitem__`` (a truncated or undecodable image is replaced by the next good
one and counted; see ``GuardedDataset``).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from unclip.data.common import (IMAGE_EXTENSIONS, BadSamples, GuardedDataset, MissingSplit, decode_caption,
                                read_image_file)
from unclip.errors import DataError
from unclip.imagefile import ImageRejected, check_image_header

__all__ = ["FolderDataset"]

SIDE_FILES = (".txt", ".json", ".jsonl", ".csv")
SPLITS = ("train", "val", "test")
SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
HF_FILE_KEY, HF_CAPTION_COLUMN = "file_name", "text"


class FolderDataset(GuardedDataset):
    """Images under ``root`` (or ``root/split``) with their captions; see the module docstring."""

    def __init__(self, root: str | Path, split: str = "train", image_size: int | None = None, *,
                 caption_column: str | None = None):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder not found: {root}")
        if split not in SPLITS + ("all",):
            raise DataError(f"unknown split {split!r}; choose train, val, test or all")
        has_split_dirs = any((root / d).is_dir() for names in SPLIT_DIRS.values() for d in names)
        if split != "all" and has_split_dirs:
            folder = next((root / d for d in SPLIT_DIRS[split] if (root / d).is_dir()), root / split)
            if not folder.is_dir():
                raise MissingSplit(f"{root} has no '{split}' sub-folder; add one or use split='train'")
        elif split in ("train", "all"):
            folder = root
        else:
            raise MissingSplit(f"{root} has no train/val/test sub-folders, so only split='train' (or 'all') exists; "
                               "make sub-folders to get a val split")
        self.root, self.folder, self.split, self.image_size = root, folder, split, image_size
        self.caption_column = caption_column or None
        self.bad = BadSamples(str(folder))
        self.items: list[tuple[Path, str, dict[str, Any]]] = []  # (path, caption, meta)
        self.caption_source = self._index()
        self.bad.report(" when opening")
        if not self.items:
            raise DataError(f"{folder} holds no readable images (extensions: {', '.join(IMAGE_EXTENSIONS)})")

    @property
    def captions(self) -> list[str]:
        return [caption for _, caption, _ in self.items]

    # --- indexing ---------------------------------------------------------
    def _index(self) -> str:
        files = sorted(p for p in self.folder.rglob("*") if p.is_file() and not _hidden(p, self.folder))
        images = []
        for path in files:
            suffix = path.suffix.lower()
            if suffix in IMAGE_EXTENSIONS:
                images.append(path)
            elif suffix not in SIDE_FILES:
                self.bad.add(path, "not an image")
        table: dict[str, tuple[str, dict]] | None = None
        for name, reader in (("captions.jsonl", _read_jsonl), ("captions.csv", _read_csv)):
            if (self.folder / name).is_file():
                table = reader(self.folder / name, self.bad, self.caption_column)
                source = name
                break
        else:
            table, source = self._hf_metadata()
        if table is None:
            has_txt = any(p.suffix.lower() == ".txt" for p in files)
            source = "txt" if has_txt else "none"
        for path in images:
            relative = path.relative_to(self.folder).as_posix()
            try:
                caption, meta = self._caption(path, relative, source, table)
                _check_header(path)
            except DataError as exc:
                self.bad.add(path, str(exc))
                continue
            self.items.append((path, caption, {"path": relative, "has_caption": source != "none"} | meta))
        for relative in sorted(set(table or {}) - {p.relative_to(self.folder).as_posix() for p in images}):
            self.bad.add(self.folder / relative, f"listed in {source} but missing")
        return source

    def _hf_metadata(self) -> tuple[dict[str, tuple[str, dict]] | None, str]:
        """The ``imagefolder`` table of this folder, keyed by paths relative to it, or (None, "")."""
        column = self.caption_column or HF_CAPTION_COLUMN
        for directory in dict.fromkeys((self.folder, self.root)):
            for name in ("metadata.jsonl", "metadata.csv"):
                path = directory / name
                if not path.is_file():
                    continue
                table = _read_hf(path, self.bad, column)
                if directory != self.folder:  # top-level metadata: keep this split's rows, relative to it
                    prefix = self.folder.relative_to(directory).as_posix() + "/"
                    table = {k[len(prefix):]: v for k, v in table.items() if k.startswith(prefix)}
                return table, name
        return None, ""

    def _caption(self, path: Path, relative: str, source: str, table) -> tuple[str, dict]:
        if source == "none":
            return "", {}
        if source == "txt":
            try:
                return decode_caption(path.with_suffix(".txt").read_bytes()), {}
            except FileNotFoundError:
                raise DataError("no caption file") from None
        if relative not in table:
            raise DataError(f"not listed in {source}")
        caption, meta = table[relative]
        try:
            data = caption.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\\ud800" in JSON) is no text
            raise DataError(f"caption is not valid Unicode (a lone surrogate in {source})") from None
        return decode_caption(data), meta

    # --- reading ----------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def describe(self, index: int) -> str:
        return str(self.items[index][0])

    def load(self, index: int) -> dict[str, Any]:
        path, caption, meta = self.items[index]
        return {"image": read_image_file(path, self.image_size), "caption": caption, "meta": dict(meta)}


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _check_header(path: Path) -> None:
    """Cheap check (header only) that ``path`` is a non-empty image within the pixel limit."""
    try:
        check_image_header(path)
    except ImageRejected as exc:
        raise DataError(exc.reason) from None


def _pick(row: dict, names: tuple[str, ...]) -> Any:
    for name in names:
        if name in row:
            return row[name]
    return None


def _read_hf(path: Path, bad: BadSamples, column: str) -> dict[str, tuple[str, dict]]:
    """Hugging Face ``imagefolder`` metadata (``file_name`` + ``column``) → {file: (caption, meta)}."""
    rows = _jsonl_rows(path, bad) if path.suffix == ".jsonl" else _csv_rows(path)
    if not rows:
        return {}
    if not any(column in row for _, row in rows):
        found = sorted({k for _, row in rows for k in row} - {HF_FILE_KEY})
        raise DataError(f"{path} has no caption column {column!r} (columns: {', '.join(found) or 'none'}); "
                        "name it with data.caption_column (unclip embed --caption-column)")
    table = {}
    for line_no, row in rows:
        file = row.get(HF_FILE_KEY)
        if not isinstance(file, str) or not file:
            bad.add(f"{path}:{line_no}", f"no '{HF_FILE_KEY}'")
            continue
        caption = row.get(column)
        table[file] = (caption if isinstance(caption, str) else "",
                       {k: v for k, v in row.items() if k not in (HF_FILE_KEY, column)})
    return table


def _jsonl_rows(path: Path, bad: BadSamples) -> list[tuple[int, dict]]:
    rows = []
    for line_no, raw in enumerate(path.read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            bad.add(f"{path}:{line_no}", "malformed JSON line")
            continue
        if isinstance(row, dict):
            rows.append((line_no, row))
        else:
            bad.add(f"{path}:{line_no}", "not a JSON object")
    return rows


def _csv_rows(path: Path) -> list[tuple[int, dict]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8; re-save it as UTF-8") from None
    return [(i, {k: v for k, v in row.items() if k is not None}) for i, row in
            enumerate(csv.DictReader(io.StringIO(text)), 2)]


def _read_jsonl(path: Path, bad: BadSamples, column: str | None = None) -> dict[str, tuple[str, dict]]:
    table = {}
    for line_no, row in _jsonl_rows(path, bad):  # malformed lines and non-objects are counted as bad
        file = _pick(row, ("file", "image", "path"))
        caption = _pick(row, (column,) if column else ("caption", "text"))
        if not isinstance(file, str):
            bad.add(f"{path}:{line_no}", "no 'file' key")
            continue
        extra = {k: v for k, v in row.items() if k not in ("file", "image", "path", column or "caption", "text")}
        table[file] = (caption if isinstance(caption, str) else "", extra)
    return table


def _read_csv(path: Path, bad: BadSamples, column: str | None = None) -> dict[str, tuple[str, dict]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8; re-save it as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames or []
    file_key = next((k for k in ("file", "image", "path") if k in fields), None)
    caption_key = next((k for k in ((column,) if column else ("caption", "text")) if k in fields), None)
    if file_key is None or caption_key is None:
        raise DataError(f"{path} needs a header row with 'file' and 'caption' columns (found: {', '.join(fields)})")
    table = {}
    for row in reader:
        if row.get(file_key):
            extra = {k: v for k, v in row.items() if k not in (file_key, caption_key) and k is not None}
            table[row[file_key]] = (row.get(caption_key) or "", extra)
    return table
