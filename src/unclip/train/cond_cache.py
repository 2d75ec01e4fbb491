"""Frozen-encoder outputs computed once per training image instead of at every step.

A decoder trained on a fixed dataset (no augmentation) asks its frozen encoders the same questions every
epoch: the CLIP image embedding and caption tokens of each image and, for a latent decoder, the
autoencoder's latents. ``ConditionCache`` answers them once, in one pass before step 0, and serves them by
dataset index (``IndexedDataset`` adds the index to every item). On emoji at 64 px this removes the
MiniLM text tower, the EfficientNet-Lite0 image tower and the autoencoder from each step.
Tensors are kept in fp16 (tokens) and fp32 (embeddings, latents) on the CPU.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

__all__ = ["IndexedDataset", "ConditionCache"]


class IndexedDataset(Dataset):
    """``dataset[i]`` plus ``"index": i``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return dict(self.dataset[index], index=index)


class ConditionCache:
    """Per-index outputs of ``compute(images, captions) -> (conditions dict, target)``, batched on lookup.

    Variable-length entries (``text_tokens`` [L, Dt] with ``text_mask``) are stored unpadded and padded
    per batch to the longest row.
    """

    def __init__(self, dataset: Dataset, compute: Callable, *, device, batch_size: int = 64, progress: bool = True):
        self.rows: list[dict[str, torch.Tensor]] = []
        self.targets: list[torch.Tensor] = []
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
