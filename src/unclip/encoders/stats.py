"""Per-dimension statistics of an encoder's embeddings (``embed_stats.safetensors``).

The unCLIP prior regresses CLIP image embeddings; normalising them per dimension
with the training set's mean and std keeps the diffusion target near unit
variance (Ramesh et al. 2022, sec. 2.2 and App. C). The stats are saved in the
encoder directory so every consumer of the encoder uses the same ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from unclip.checkpoint import load_tensors, save_tensors
from unclip.errors import UnclipError

__all__ = ["STATS_FILE", "STAT_KEYS", "EmbedStats", "save_embed_stats", "load_embed_stats", "compute_embed_stats"]

STATS_FILE = "embed_stats.safetensors"
STAT_KEYS = ("image_mean", "image_std", "text_mean", "text_std")
EmbedStats = dict  # {"image_mean": [D], "image_std": [D], "text_mean": [D], "text_std": [D], "count": [1]}


def save_embed_stats(encoder_dir: str | Path, stats: dict[str, torch.Tensor]) -> Path:
    missing = [k for k in STAT_KEYS if k not in stats]
    if missing:
        raise ValueError(f"embedding stats lack {missing}")
    path = Path(encoder_dir) / STATS_FILE
    save_tensors(path, {k: v.float() for k, v in stats.items()}, {"format": "unclip-embed-stats"})
    return path


def load_embed_stats(encoder_dir: str | Path) -> dict[str, torch.Tensor]:
    """Read ``{"image_mean", "image_std", "text_mean", "text_std"}`` (each [D], float32)."""
    path = Path(encoder_dir) / STATS_FILE
    if not path.is_file():
        raise UnclipError(f"{path} not found; compute it with 'unclip embed --encoder {encoder_dir} "
                          "--data DATA --out EMBDIR --update-stats'")
    return load_tensors(path)


class _Moments:
    """Running sum and sum of squares in float64 (Chan et al. merging is not needed at this size)."""

    def __init__(self):
        self.count, self.total, self.squares = 0, None, None

    def add(self, x: torch.Tensor) -> None:  # x: [B, D]
        x = x.detach().double().cpu()
        self.total = x.sum(0) if self.total is None else self.total + x.sum(0)
        self.squares = (x * x).sum(0) if self.squares is None else self.squares + (x * x).sum(0)
        self.count += len(x)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.total / self.count
        var = (self.squares / self.count - mean * mean).clamp(min=0)
        return mean.float(), var.sqrt().float().clamp(min=1e-6)


def stats_from_embeddings(image_embeds: Iterable[torch.Tensor], text_embeds: Iterable[torch.Tensor]) -> dict:
    """Mean/std per dimension from batches of image and text embeddings ([B, D] each)."""
    image, text = _Moments(), _Moments()
    for batch in image_embeds:
        image.add(batch)
    for batch in text_embeds:
        text.add(batch)
    if not image.count or not text.count:
        raise UnclipError("cannot compute embedding statistics from an empty dataset")
    image_mean, image_std = image.result()
    text_mean, text_std = text.result()
    return {"image_mean": image_mean, "image_std": image_std, "text_mean": text_mean, "text_std": text_std,
            "count": torch.tensor([float(image.count)])}


@torch.no_grad()
def compute_embed_stats(encoder, dataset, *, batch_size: int = 64, max_items: int | None = None) -> dict:
    """Encode ``dataset`` items (``{"image", "caption"}``) and return their embedding stats."""
    n = len(dataset) if max_items is None else min(len(dataset), max_items)
    image_batches, text_batches = [], []
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        image_batches.append(encoder.encode_image(torch.stack([it["image"] for it in items])))
        text_batches.append(encoder.encode_text([it["caption"] for it in items]).embed)
    return stats_from_embeddings(image_batches, text_batches)
