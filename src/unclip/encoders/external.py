"""Embeddings made by other tools, read as they are, so the prior can train on them (issue 20).

* **clip-retrieval** (``clip-retrieval inference``) writes a folder::

      EMB/img_emb/img_emb_{i}.npy          float [N, D]   CLIP image embeddings
      EMB/text_emb/text_emb_{i}.npy        float [N, D]   CLIP text embeddings (``--enable_text``)
      EMB/metadata/metadata_{i}.parquet    one row per embedding (``caption``, ``url``, ...)

  Parts pair up by their number i. The parquet files need ``pyarrow`` (``pip install
  'unclip[parquet]'``); without it the embeddings still load and captions are empty, with one warning.
* **webdataset shards with embeddings inside**: each sample's ``.npy`` or ``.img_emb.npy`` member is its
  image embedding and ``.text_emb.npy`` its text embedding (``unclip.data.shards``); local paths, brace
  patterns and ``pipe:``/``http(s)://`` URLs.

Neither carries the text encoder's token states, so the prior trained on them conditions on the text
embedding alone (``PriorConfig.use_text_tokens`` is switched off; ``info["text_tokens"]`` is False).
``open_external`` returns an ``ExternalEmbeddings`` with the interface of ``EmbeddingDataset``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unclip.data.common import DataWarning, MissingSplit
from unclip.errors import DataError

__all__ = ["ExternalEmbeddings", "open_external", "is_clip_retrieval", "PARQUET_HINT"]

PARQUET_HINT = "pip install 'unclip[parquet]'"
_PART = re.compile(r"_(\d+)\.(npy|parquet)$")


def is_clip_retrieval(root: Path) -> bool:
    """A clip-retrieval output folder: ``img_emb/`` with ``.npy`` parts and no unclip ``embed.json``."""
    root = Path(root)
    return (root / "img_emb").is_dir() and not (root / "embed.json").exists() and any((root / "img_emb").glob("*.npy"))


class ExternalEmbeddings(torch.utils.data.Dataset):
    """Rows of image/text embeddings held in memory; the same interface as ``EmbeddingDataset``.

    ``image_embed``/``text_embed`` [N, D] float32; captions and per-row metadata. There are no caption
    token states: ``text_tokens`` is zeros [N, 1, 1] and ``text_mask`` False [N, 1].
    """

    def __init__(self, image_embed: np.ndarray, text_embed: np.ndarray, metadata: list[dict[str, Any]],
                 *, source: str, format: str):
        if image_embed.ndim != 2 or image_embed.shape != text_embed.shape:
            raise DataError(f"{source}: image and text embeddings must both be [N, D], got "
                            f"{tuple(image_embed.shape)} and {tuple(text_embed.shape)}")
        if len(image_embed) == 0:
            raise DataError(f"{source} holds no embeddings")
        self.arrays = {"image_embed": torch.from_numpy(np.asarray(image_embed, dtype=np.float32)),
                       "text_embed": torch.from_numpy(np.asarray(text_embed, dtype=np.float32))}
        n, dim = image_embed.shape
        self.arrays["text_tokens"] = torch.zeros(n, 1, 1)
        self.arrays["text_mask"] = torch.zeros(n, 1, dtype=torch.bool)
        self._metadata = metadata
        norms = self.arrays["image_embed"][:256].norm(dim=-1)
        self.embed_dim, self.token_dim, self.max_len = dim, 1, 1
        self.normalized = bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-2))
        self.info = {"format": format, "source": source, "encoder": "", "embed_dim": dim, "token_dim": 1,
                     "max_len": 1, "normalized": self.normalized, "text_tokens": False, "splits": ["train"],
                     "counts": {"train": n}, "total": n}

    def __len__(self) -> int:
        return len(self._metadata)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = {key: value[index] for key, value in self.arrays.items()}
        record = self._metadata[index]
        return row | {"caption": record.get("caption", ""), "meta": record}

    @property
    def captions(self) -> list[str]:
        return [str(record.get("caption") or "") for record in self._metadata]

    @property
    def metadata(self) -> list[dict[str, Any]]:
        return list(self._metadata)

    def stack(self, key: str) -> torch.Tensor:
        if key not in self.arrays:
            raise KeyError(f"unknown array {key!r}")
        return self.arrays[key]


def open_external(spec: str | Path, split: str | None = None, *, caption_key: str = "txt") -> ExternalEmbeddings:
    """A clip-retrieval folder or embedding-carrying shards → ``ExternalEmbeddings`` (one split: train)."""
    if split not in (None, "train", "all"):
        raise MissingSplit(f"{spec} has no '{split}' split (embeddings made elsewhere are all 'train')")
    if not isinstance(spec, Path) and not Path(str(spec)).is_dir():
        return _from_shards(str(spec), caption_key)
    root = Path(spec)
    if is_clip_retrieval(root):
        return _from_clip_retrieval(root)
    return _from_shards(str(root), caption_key)


# --- clip-retrieval -----------------------------------------------------------------------
def _parts(folder: Path, suffix: str) -> dict[int, Path]:
    parts = {}
    for path in folder.glob(f"*.{suffix}") if folder.is_dir() else ():
        match = _PART.search(path.name)
        if match:
            parts[int(match.group(1))] = path
    return parts


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} ({exc})") from None


def _from_clip_retrieval(root: Path) -> ExternalEmbeddings:
    images, texts = _parts(root / "img_emb", "npy"), _parts(root / "text_emb", "npy")
    if not texts:
        raise DataError(f"{root} has image embeddings but no text_emb/ parts, and the prior needs both; "
                        "run clip-retrieval inference with --enable_text True")
    if set(images) != set(texts):
        raise DataError(f"{root}: img_emb/ and text_emb/ hold different parts "
                        f"({sorted(images)} vs {sorted(texts)}); re-run clip-retrieval inference")
    metadata_parts = _parts(root / "metadata", "parquet")
    image_arrays, text_arrays, metadata = [], [], []
    for index in sorted(images):
        image, text = _load_npy(images[index]), _load_npy(texts[index])
        if len(image) != len(text):
            raise DataError(f"{images[index]} has {len(image)} rows but {texts[index]} has {len(text)}")
        image_arrays.append(np.asarray(image, dtype=np.float32))
        text_arrays.append(np.asarray(text, dtype=np.float32))
        metadata += _read_metadata(metadata_parts.get(index), len(image))
    return ExternalEmbeddings(np.concatenate(image_arrays), np.concatenate(text_arrays), metadata,
                              source=str(root), format="clip-retrieval")


def _read_metadata(path: Path | None, rows: int) -> list[dict[str, Any]]:
    """One parquet part's rows (``caption`` from ``caption`` or ``text``), or empty rows."""
    if path is None:
        return [{} for _ in range(rows)]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        warnings.warn(f"{path.parent}: captions not read (the parquet metadata needs pyarrow: {PARQUET_HINT}); "
                      "the prior trains on the embeddings alone", DataWarning, stacklevel=4)
        return [{} for _ in range(rows)]
    try:
        records = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises its own error types  # noqa: BLE001
        raise DataError(f"cannot read {path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") \
            from None
    if len(records) != rows:
        raise DataError(f"{path} has {len(records)} rows but its embeddings have {rows}")
    for record in records:
        if "caption" not in record and "text" in record:
            record["caption"] = record["text"]
    return records


# --- webdataset shards with .npy members ----------------------------------------------------
def _from_shards(spec: str, caption_key: str) -> ExternalEmbeddings:
    from unclip.data.shards import ShardDataset

    shards = ShardDataset(spec, split="train", caption_key=caption_key, decode_images=False)
    images, texts, metadata, missing = [], [], [], 0
    for item in shards:
        if "image_embed" not in item or "text_embed" not in item:
            missing += 1
            continue
        images.append(item["image_embed"].numpy())
        texts.append(item["text_embed"].numpy())
        metadata.append(item["meta"] | {"caption": item["caption"]})
    if not images:
        raise DataError(f"{spec} holds no samples with both an image embedding (.npy or .img_emb.npy) and a "
                        "text embedding (.text_emb.npy); write them into the shards or run 'unclip embed'")
    if missing:
        warnings.warn(f"{spec}: {missing} samples without both embeddings skipped", DataWarning, stacklevel=3)
    if len({a.shape for a in images + texts}) != 1:
        raise DataError(f"{spec}: the embeddings in the shards differ in size; use one encoder for all of them")
    return ExternalEmbeddings(np.stack(images), np.stack(texts), metadata, source=spec, format="webdataset")
