"""Stage "clip": train a contrastive text/image encoder (backends "clip" and "lit").

Backend "clip" trains both towers from scratch (Radford et al. 2021); backend
"lit" keeps a pretrained text tower locked and trains its projection and the
image tower (Zhai et al. 2022). Both minimise the symmetric InfoNCE loss
(``unclip.encoders.clip.clip_loss``), with captions that repeat inside a batch
counted as positives of each other (small grammars repeat captions often).

At setup the BPE tokenizer (backend "clip") is trained on the training
captions in index order, so the same data give the same tokenizer. The export
writes ``RUNDIR/final/encoder`` (weights, tokenizer, ``encoder.json``) with
``embed_stats.safetensors`` computed on the training split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from unclip.checkpoint import atomic_write_text
from unclip.encoders.clip import ClipConfig, ClipEncoder, clip_loss
from unclip.encoders.lit import LitConfig
from unclip.train.config import TrainConfig
from unclip.train.stage import Stage

__all__ = ["ClipDataConfig", "ClipStageConfig", "ClipStage"]


@dataclass(frozen=True)
class ClipDataConfig:
    path: str = "data/shapes32"
    image_size: int = 0              # 0: the image tower's size
    eval_split: str = "val"
    eval_items: int = 1000           # retrieval check on this many eval items
    stats_items: int = 20000         # training items used for embed_stats
    tokenizer_vocab: int = 0         # 0: the text tower's vocab_size
    caption_column: str = ""         # imagefolder metadata column / shard member with the caption ("" = text / txt)
    cache: bool = True               # keep decoded training images in memory


@dataclass(frozen=True)
class ClipStageConfig:
    backend: Literal["clip", "lit"] = "clip"
    model: ClipConfig = field(default_factory=ClipConfig)   # used when backend == "clip"
    lit: LitConfig = field(default_factory=LitConfig)       # used when backend == "lit"
    data: ClipDataConfig = field(default_factory=ClipDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class _ImageCaption(Dataset):
    """Items ``{"image": [3,S,S], "caption": str}`` from any unclip dataset.

    With ``cache`` the decoded items are kept in memory (per loader worker):
    small datasets then decode each PNG once instead of once per epoch.
    """

    def __init__(self, dataset: Dataset, cache: bool = False):
        self.dataset = dataset
        self.cache: dict[int, dict[str, Any]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        item = self.dataset[index]
        item = {"image": item["image"], "caption": item["caption"], "index": index}
        if self.cache is not None:
            self.cache[index] = item
        return item


def dataset_captions(dataset: Dataset) -> list[str]:
    """Captions of a dataset in index order, without decoding images where the dataset allows."""
    rows = getattr(dataset, "rows", None)
    if isinstance(rows, list) and all(isinstance(r, dict) and "caption" in r for r in rows):
        return [r["caption"] for r in rows]
    return [dataset[i]["caption"] for i in range(len(dataset))]


class ClipStage(Stage):
    name = "clip"
    config_class = ClipStageConfig

    def __init__(self, config: ClipStageConfig):
        super().__init__(config)
        self._tokenizer = None
        self._text_cache: dict[str, torch.Tensor] = {}   # lit: frozen pooled features per caption
        self._image_cache: dict[int, torch.Tensor] = {}  # lit/efficientnet: frozen trunk features per train index

    # --- data ----------------------------------------------------------------
    @property
    def image_size(self) -> int:
        cfg = self.config
        vision = cfg.model.vision if cfg.backend == "clip" else cfg.lit.vision
        return cfg.data.image_size or vision.image_size

    def _open(self, split: str) -> Dataset:
        from unclip.data import open_dataset, open_eval_split

        opener = open_dataset if split == "train" else open_eval_split  # a plain folder has no val split
        return opener(self.config.data.path, split=split, image_size=self.image_size,
                      caption_column=self.config.data.caption_column or None)

    def build_dataset(self, split: str) -> Dataset:
        if split != "train":
            split = self.config.data.eval_split
        return _ImageCaption(self._open(split), cache=self.config.data.cache and split == "train")

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {"image": torch.stack([s["image"] for s in samples]), "caption": [s["caption"] for s in samples],
                "index": torch.tensor([s.get("index", -1) for s in samples])}

    # --- model ---------------------------------------------------------------
    def tokenizer(self):
        """The BPE tokenizer trained on the training captions (built once, deterministic)."""
        if self._tokenizer is None:
            from unclip.encoders.tokenizer import train_bpe

            vocab = self.config.data.tokenizer_vocab or self.config.model.text.vocab_size
            self._tokenizer = train_bpe(dataset_captions(self._open("train")), vocab_size=vocab)
        return self._tokenizer

    def build_model(self) -> torch.nn.Module:
        if self.config.backend == "clip":
            return ClipEncoder(self.config.model, tokenizer=self.tokenizer())
        from unclip.encoders.lit import LitEncoder

        return LitEncoder(self.config.lit)

    def setup(self, device: torch.device) -> None:
        if self.config.backend == "clip":
            self.tokenizer()

    # --- loss ----------------------------------------------------------------
    def _lit_text(self, model, captions: list[str]) -> torch.Tensor:
        """Frozen MiniLM pooled features [B, W], cached per caption (the tower never changes)."""
        missing = sorted({c for c in captions if c not in self._text_cache})
        for start in range(0, len(missing), 256):
            chunk = missing[start:start + 256]
            pooled = model.frozen_text_features(chunk)[0].cpu()
            self._text_cache.update(zip(chunk, pooled))
        return torch.stack([self._text_cache[c] for c in captions])

    def _lit_image(self, model, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Frozen EfficientNet features [B, 1280], cached per training index (no augmentation, so exact)."""
        keys = [int(i) for i in indices]
        missing = [row for row, key in enumerate(keys) if key < 0 or key not in self._image_cache]
        if missing:
            features = model.frozen_image_features(model.preprocess(images[missing])).cpu()
            self._image_cache.update({keys[row]: f for row, f in zip(missing, features) if keys[row] >= 0})
            fresh = dict(zip(missing, features))
        else:
            fresh = {}
        return torch.stack([fresh[row] if row in fresh else self._image_cache[key] for row, key in enumerate(keys)])

    def embed_batch(self, model, images: torch.Tensor, captions: list[str],
                    indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.backend == "lit" and self.config.lit.image_tower == "efficientnet" and indices is not None:
            image_embed = model.project_image(self._lit_image(model, images, indices).to(images.device))
        else:
            image_embed = model.encode_image(images)                      # [B, D]
        if self.config.backend == "lit":
            pooled = self._lit_text(model, captions).to(image_embed.device)
            text_embed = model.project_text(pooled)                       # [B, D]
        else:
            text_embed = model.encode_text(captions).embed                # [B, D]
        return image_embed, text_embed

    def loss(self, model, batch, generator):
        captions = list(batch["caption"])
        image_embed, text_embed = self.embed_batch(model, batch["image"], captions, batch.get("index"))
        ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        caption_ids = torch.tensor([ids[c] for c in captions], device=image_embed.device)
        same = caption_ids[:, None] == caption_ids[None, :]               # [B, B] shared caption
        return clip_loss(image_embed, text_embed, model.scale(), same)

    # --- evaluation and export ---------------------------------------------
    @torch.no_grad()
    def evaluate(self, model, out_dir: Path, step: int) -> dict[str, float]:
        from unclip.eval.retrieval import evaluate_encoder

        dataset = self._open(self.config.data.eval_split)
        was_training = model.training
        metrics = evaluate_encoder(model.eval(), dataset, max_items=self.config.data.eval_items)
        model.train(was_training)
        return metrics

    @torch.no_grad()
    def export(self, model, out_dir: Path) -> Path:
        from unclip.encoders.stats import save_embed_stats

        directory = Path(out_dir) / "encoder"
        model = model.eval()
        if self.config.backend == "clip" and getattr(model, "tokenizer", None) is None:
            model.set_tokenizer(self.tokenizer())
        model.save(directory)
        save_embed_stats(directory, self._train_stats(model))
        atomic_write_text(directory / "data.json", json.dumps({"data": self.config.data.path}) + "\n")
        return directory

    def _train_stats(self, model) -> dict[str, torch.Tensor]:
        """Embedding mean/std over (up to ``stats_items``) training items, reusing the frozen-feature caches."""
        from unclip.encoders.stats import stats_from_embeddings

        dataset = self._open("train")
        n = min(len(dataset), self.config.data.stats_items)
        captions = dataset_captions(dataset)
        cached = self.config.backend == "lit" and self.config.lit.image_tower == "efficientnet"
        images, texts = [], []
        for start in range(0, n, 256):
            indices = list(range(start, min(n, start + 256)))
            if cached and all(i in self._image_cache for i in indices):
                batch_images = torch.zeros(len(indices), 3, 1, 1)      # never read: trunk features are cached
            else:
                batch_images = torch.stack([dataset[i]["image"] for i in indices])
            batch_captions = captions[start:start + len(indices)]
            image_embed, text_embed = self.embed_batch(model, batch_images, batch_captions, torch.tensor(indices))
            images.append(image_embed)
            texts.append(text_embed)
        return stats_from_embeddings(images, texts)
