"""Frozen-encoder outputs computed once per training image instead of at every step.

A decoder trained on a fixed dataset (no augmentation) asks its frozen encoders the same questions every
epoch: the CLIP image embedding and caption tokens of each image and, for a latent decoder, the
autoencoder's latents. ``ConditionCache`` answers them once, in one pass before step 0, and serves them by
dataset index (``IndexedDataset`` adds the index to every item). On emoji at 64 px this removes the
MiniLM text tower, the EfficientNet-Lite0 image tower and the autoencoder from each step.
Tensors are kept in fp16 (tokens) and fp32 (embeddings, latents) on the CPU.

``save``/``load`` keep the pass across resumes: the cache is written to the run directory as one
safetensors file whose metadata holds a fingerprint of what produced it (dataset, encoder,
autoencoder, sizes); a resumed run whose fingerprint matches reads it back in seconds instead of
recomputing it (4 minutes for emoji at 64 px on 2 cores), and any mismatch recomputes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from unclip.checkpoint import load_tensors, read_metadata, save_tensors
from unclip.errors import CheckpointError

__all__ = ["IndexedDataset", "ConditionCache", "file_stamp"]


class IndexedDataset(Dataset):
    """``dataset[i]`` plus ``"index": i``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return dict(self.dataset[index], index=index)


def file_stamp(path: str | Path) -> list:
    """What identifies the contents of ``path`` cheaply, for a cache fingerprint: its resolved name and
    the number, total size and latest mtime (ns) of the files in it (recursively) or of the file; "" → []."""
    if not str(path):
        return []
    path = Path(path).resolve()
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path] if path.exists() else []
    stats = [f.stat() for f in files]
    return [str(path), len(stats), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)]


class ConditionCache:
    """Per-index outputs of ``compute(images, captions) -> (conditions dict, target)``, batched on lookup.

    Variable-length entries (``text_tokens`` [L, Dt] with ``text_mask``) are stored unpadded and padded
    per batch to the longest row.
    """

    FILE = "cond_cache.safetensors"

    def __init__(self, dataset: Dataset | None, compute: Callable | None = None, *, device=None, batch_size: int = 64,
                 progress: bool = True):
        self.rows: list[dict[str, torch.Tensor]] = []
        self.targets: list[torch.Tensor] = []
        if dataset is None:  # filled by ``load``
            return
        for start in tqdm(range(0, len(dataset), batch_size), desc="caching conditions", disable=not progress,
                          leave=False):
            items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
            images = torch.stack([item["image"] for item in items]).to(device)
            cond, target = compute(images, [item["caption"] for item in items])
            self.targets.extend(target.float().cpu())
            for i in range(len(items)):
                row = {}
                for key, value in cond.items():
                    value = value[i].cpu()
                    if key == "text_tokens":
                        value = value[cond["text_mask"][i].cpu()].half()
                    if key != "text_mask":
                        row[key] = value
                self.rows.append(row)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: torch.Tensor | list[int], device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(conditions, target) for ``indices``, as ``compute`` returned them for those images."""
        rows = [self.rows[int(i)] for i in indices]
        out: dict[str, torch.Tensor] = {}
        for key in rows[0]:
            if key == "text_tokens":
                length = max(r[key].shape[0] for r in rows)
                tokens = torch.zeros(len(rows), length, rows[0][key].shape[-1])
                mask = torch.zeros(len(rows), length, dtype=torch.bool)
                for i, r in enumerate(rows):
                    tokens[i, :r[key].shape[0]] = r[key].float()
                    mask[i, :r[key].shape[0]] = True
                out["text_tokens"], out["text_mask"] = tokens.to(device), mask.to(device)
            else:
                out[key] = torch.stack([r[key] for r in rows]).to(device)
        target = torch.stack([self.targets[int(i)] for i in indices]).to(device)
        return out, target

    def save(self, path: str | Path, fingerprint: dict[str, Any]) -> None:
        """Write the cache (atomically) with ``fingerprint`` (JSON-able) in its metadata."""
        tensors = {"target": torch.stack(self.targets)}
        for key in self.rows[0]:
            values = [row[key] for row in self.rows]
            if key == "text_tokens":  # unpadded rows: concatenated, with their lengths
                tensors["lengths.text_tokens"] = torch.tensor([v.shape[0] for v in values])
                tensors["cond.text_tokens"] = torch.cat(values)
            else:
                tensors[f"cond.{key}"] = torch.stack(values)
        save_tensors(Path(path), tensors, {"fingerprint": json.dumps(fingerprint, sort_keys=True)})

    @classmethod
    def load(cls, path: str | Path, fingerprint: dict[str, Any]) -> "ConditionCache | None":
        """The cache saved at ``path`` if it exists and was made with the same ``fingerprint``; else None."""
        path = Path(path)
        try:
            if not path.is_file() or read_metadata(path).get("fingerprint") != json.dumps(fingerprint, sort_keys=True):
                return None
            tensors = load_tensors(path)
        except CheckpointError:
            return None  # unreadable: recompute (the file is only a cache)
        cache = cls(None)
        cache.targets = list(tensors.pop("target"))
        lengths = tensors.pop("lengths.text_tokens", None)
        columns: dict[str, list[torch.Tensor]] = {}
        for name, value in tensors.items():
            key = name.removeprefix("cond.")
            columns[key] = list(value.split(lengths.tolist())) if key == "text_tokens" and lengths is not None \
                else list(value)
        cache.rows = [{key: column[i] for key, column in columns.items()} for i in range(len(cache.targets))]
        return cache
