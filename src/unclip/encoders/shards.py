"""Embedding shards on disk: what ``unclip embed`` writes and the prior trains on.

The layout follows clip-retrieval (image/text embeddings as ``.npy`` shards plus
per-row metadata), extended with the text encoder's token states, which the
unCLIP decoder and prior condition on (Ramesh et al. 2022, sec. 2.1)::

    EMBDIR/embed.json                               settings, counts, finished shards
    EMBDIR/img_emb/img_emb_{i:04d}.npy              float16 [N, D]
    EMBDIR/text_emb/text_emb_{i:04d}.npy            float16 [N, D]
    EMBDIR/text_tokens/text_tokens_{i:04d}.npy      float16 [N, L, Dt]
    EMBDIR/text_mask/text_mask_{i:04d}.npy          bool    [N, L]
    EMBDIR/metadata/metadata_{i:04d}.jsonl          {"caption", "split", "image", "meta"} per row

Every file is written atomically and a shard is listed in ``embed.json`` only
after all five of its files exist, so an interrupted run resumes by skipping
the listed shards. ``open_embeddings`` is the reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from unclip.checkpoint import atomic_write, atomic_write_text
from unclip.errors import DataError

__all__ = [
    "FORMAT",
    "ShardRows",
    "EmbeddingDataset",
    "EmbeddingRows",
    "open_embeddings",
    "read_info",
    "write_info",
    "write_shard",
    "shard_paths",
    "write_embedding_shards",
]

FORMAT = "unclip-embeddings"
VERSION = 1
INFO_FILE = "embed.json"
ARRAY_KINDS = ("img_emb", "text_emb", "text_tokens", "text_mask")


def shard_paths(root: Path, index: int) -> dict[str, Path]:
    """Paths of the five files of shard ``index``."""
    root = Path(root)
    paths = {kind: root / kind / f"{kind}_{index:04d}.npy" for kind in ARRAY_KINDS}
    paths["metadata"] = root / "metadata" / f"metadata_{index:04d}.jsonl"
    return paths


@dataclass
class ShardRows:
    """One shard's rows in memory (numpy, already in the on-disk dtypes)."""

    image_embed: np.ndarray          # float16 [N, D]
    text_embed: np.ndarray           # float16 [N, D]
    text_tokens: np.ndarray          # float16 [N, L, Dt]
    text_mask: np.ndarray            # bool    [N, L]
    metadata: list[dict[str, Any]] = field(default_factory=list)  # N rows

    def __post_init__(self):
        self.image_embed = np.asarray(self.image_embed, dtype=np.float16)
        self.text_embed = np.asarray(self.text_embed, dtype=np.float16)
        self.text_tokens = np.asarray(self.text_tokens, dtype=np.float16)
        self.text_mask = np.asarray(self.text_mask, dtype=bool)
        n = len(self.metadata)
        sizes = {len(self.image_embed), len(self.text_embed), len(self.text_tokens), len(self.text_mask)}
        if sizes != {n}:
            raise ValueError(f"shard arrays and metadata disagree on the row count: {sorted(sizes)} vs {n}")
        if self.text_tokens.ndim != 3 or self.text_mask.shape != self.text_tokens.shape[:2]:
            raise ValueError("text_tokens must be [N, L, Dt] and text_mask [N, L]")


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle, so numpy does not append '.npy'
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)

    atomic_write(path, write)


def write_shard(root: Path, index: int, rows: ShardRows) -> None:
    """Write the five files of one shard atomically (does not touch ``embed.json``)."""
    paths = shard_paths(root, index)
    _save_npy(paths["img_emb"], rows.image_embed)
    _save_npy(paths["text_emb"], rows.text_embed)
    _save_npy(paths["text_tokens"], rows.text_tokens)
    _save_npy(paths["text_mask"], rows.text_mask)
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows.metadata)
    atomic_write_text(paths["metadata"], text)


def read_info(root: Path) -> dict[str, Any]:
    """Read ``EMBDIR/embed.json`` (DataError if missing or not an embeddings directory)."""
    path = Path(root) / INFO_FILE
    if not path.is_file():
        raise DataError(f"{root} holds no embeddings ({INFO_FILE} missing); create it with 'unclip embed'")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path} is not valid JSON; delete the directory and re-run 'unclip embed'") from None
    if info.get("format") != FORMAT:
        raise DataError(f"{path} is not an unclip embeddings file (format {info.get('format')!r})")
    return info


def write_info(root: Path, info: dict[str, Any]) -> None:
    atomic_write_text(Path(root) / INFO_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")


def new_info(*, encoder: str, embed_dim: int, token_dim: int, max_len: int, shard_size: int,
             normalized: bool, splits: Sequence[str], counts: dict[str, int], source: str = "") -> dict[str, Any]:
    """The ``embed.json`` of a run that has not finished any shard yet."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "encoder": str(encoder),
        "source": str(source),
        "embed_dim": int(embed_dim),
        "token_dim": int(token_dim),
        "max_len": int(max_len),
        "normalized": bool(normalized),
        "shard_size": int(shard_size),
        "splits": list(splits),
        "counts": {k: int(v) for k, v in counts.items()},
        "total": int(sum(counts.values())),
        "num_shards": -(-int(sum(counts.values())) // int(shard_size)),
        "finished_shards": [],
        "complete": False,
    }


def write_embedding_shards(
    root: Path,
    *,
    image_embed: torch.Tensor | np.ndarray,
    text_embed: torch.Tensor | np.ndarray,
    text_tokens: torch.Tensor | np.ndarray,
    text_mask: torch.Tensor | np.ndarray,
    captions: Sequence[str],
    splits: Sequence[str] | str = "train",
    images: Sequence[str] | None = None,
    metas: Sequence[dict] | None = None,
    encoder: str = "",
    normalized: bool = True,
    shard_size: int = 4096,
) -> Path:
    """Write whole arrays as a finished embeddings directory (for tests and small jobs).

    Shapes: ``image_embed``/``text_embed`` [N, D], ``text_tokens`` [N, L, Dt], ``text_mask`` [N, L].
    """
    arrays = [_numpy(a) for a in (image_embed, text_embed, text_tokens, text_mask)]
    n = len(captions)
    split_list = [splits] * n if isinstance(splits, str) else list(splits)
    image_list = list(images) if images is not None else [""] * n
    meta_list = list(metas) if metas is not None else [{} for _ in range(n)]
    if not (len(split_list) == len(image_list) == len(meta_list) == n) or any(len(a) != n for a in arrays):
        raise ValueError("all arrays and per-row lists must have the same length")
    order = list(dict.fromkeys(split_list))
    counts = {s: split_list.count(s) for s in order}
    info = new_info(encoder=encoder, embed_dim=arrays[0].shape[1], token_dim=arrays[2].shape[2],
                    max_len=arrays[2].shape[1], shard_size=shard_size, normalized=normalized,
                    splits=order, counts=counts)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for index, start in enumerate(range(0, n, shard_size)):
        rows = slice(start, start + shard_size)
        metadata = [
            {"caption": c, "split": s, "image": p, "meta": m}
            for c, s, p, m in zip(captions[rows], split_list[rows], image_list[rows], meta_list[rows])
        ]
        write_shard(root, index, ShardRows(*(a[rows] for a in arrays), metadata=metadata))
        info["finished_shards"].append(index)
    info["complete"] = True
    write_info(root, info)
    return root


def _numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        array = array.float() if array.is_floating_point() else array
        return array.numpy()
    return np.asarray(array)


class EmbeddingDataset(Dataset):
    """Map-style dataset over an embeddings directory.

    Items are dicts ``{"image_embed": [D], "text_embed": [D], "text_tokens": [L, Dt],
    "text_mask": [L] bool, "caption": str, "meta": dict}`` (float tensors are float32).
    Arrays are memory-mapped, so opening is cheap even for large directories.
    Attributes: ``info`` (embed.json), ``embed_dim``, ``token_dim``, ``max_len``, ``normalized``.
    """

    def __init__(self, root: Path, split: str | None = None):
        self.root = Path(root)
        self.info = read_info(self.root)
        self.split = split
        self.embed_dim = int(self.info["embed_dim"])
        self.token_dim = int(self.info["token_dim"])
        self.max_len = int(self.info["max_len"])
        self.normalized = bool(self.info.get("normalized", True))
        self._arrays: dict[int, dict[str, np.ndarray]] = {}
        self._rows: list[tuple[int, int]] = []          # (shard, row) for each item
        self._metadata: list[dict[str, Any]] = []
        for shard in sorted(self.info.get("finished_shards", [])):
            for row, record in enumerate(self._read_metadata(shard)):
                if split is None or record.get("split") == split:
                    self._rows.append((shard, row))
                    self._metadata.append(record)
        if not self._rows:
            what = f"split {split!r}" if split else "rows"
            raise DataError(f"{self.root} holds no finished {what}; run 'unclip embed' (with --split) first")

    def _read_metadata(self, shard: int) -> list[dict[str, Any]]:
        path = shard_paths(self.root, shard)["metadata"]
        if not path.is_file():
            raise DataError(f"{path} is missing; re-run 'unclip embed' to rebuild shard {shard}")
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def _shard(self, shard: int) -> dict[str, np.ndarray]:
        if shard not in self._arrays:
            paths = shard_paths(self.root, shard)
            try:
                self._arrays[shard] = {k: np.load(paths[k], mmap_mode="r") for k in ARRAY_KINDS}
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot read shard {shard} of {self.root} ({exc}); re-run 'unclip embed'") from None
        return self._arrays[shard]

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        shard, row = self._rows[index]
        arrays = self._shard(shard)
        record = self._metadata[index]
        return {
            "image_embed": torch.from_numpy(np.array(arrays["img_emb"][row], dtype=np.float32)),
            "text_embed": torch.from_numpy(np.array(arrays["text_emb"][row], dtype=np.float32)),
            "text_tokens": torch.from_numpy(np.array(arrays["text_tokens"][row], dtype=np.float32)),
            "text_mask": torch.from_numpy(np.array(arrays["text_mask"][row], dtype=bool)),
            "caption": record.get("caption", ""),
            "meta": record.get("meta", {}),
        }

    @property
    def captions(self) -> list[str]:
        return [record.get("caption", "") for record in self._metadata]

    @property
    def metadata(self) -> list[dict[str, Any]]:
        return list(self._metadata)

    def stack(self, key: str) -> torch.Tensor:
        """All rows of one array as a float32 (bool for text_mask) tensor, e.g. ``stack("image_embed")``."""
        kind = {"image_embed": "img_emb", "text_embed": "text_emb"}.get(key, key)
        if kind not in ARRAY_KINDS:
            raise KeyError(f"unknown array {key!r}")
        parts = []
        for shard in sorted({s for s, _ in self._rows}):
            rows = [r for s, r in self._rows if s == shard]
            parts.append(np.asarray(self._shard(shard)[kind])[rows])
        stacked = np.concatenate(parts)
        return torch.from_numpy(stacked.astype(bool if kind == "text_mask" else np.float32))


def open_embeddings(root: str | Path, split: str | None = None, *, caption_key: str = "txt"):
    """Open an embeddings directory written by ``unclip embed`` (``split=None``: all rows), or embeddings
    made elsewhere, read as they are (``unclip.encoders.external``): a clip-retrieval output folder
    (``img_emb/``, ``text_emb/``, ``metadata/``) or webdataset shards with ``.npy`` embedding members."""
    from unclip.data.shards import is_shard_spec
    from unclip.encoders.external import is_clip_retrieval, open_external

    text = str(root)
    if (Path(text) / INFO_FILE).is_file():
        return EmbeddingDataset(Path(text), split=split)
    if is_shard_spec(text) or is_clip_retrieval(Path(text)) or (Path(text).is_dir() and any(Path(text).glob("*.tar"))):
        return open_external(text, split, caption_key=caption_key)
    return EmbeddingDataset(Path(text), split=split)


class EmbeddingRows(Dataset):
    """One split of an embeddings directory held in memory as tensors (embeddings are small)."""

    def __init__(self, path: str | Path, split: str, caption_key: str = "txt"):
        source = open_embeddings(path, split, caption_key=caption_key)
        self.info = source.info
        self.captions = source.captions
        self.tensors = {key: source.stack(key) for key in ("image_embed", "text_embed", "text_tokens", "text_mask")}

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.tensors.items()}
