"""A judge of emoji style (Noto, Twemoji, OpenMoji, Fluent): its own small CNN, trained on real renders.

It measures style control (issue #21, ``scripts/style_table.py``): the fraction of restyled images that it
reads as the target style. It shares no weights with the generator or with the other judges (no CLIP, no
EfficientNet): a from-scratch 3-level ConvNet (conv–GroupNorm–SiLU blocks, average pooling, a linear head),
trained with cross-entropy on the renders of the training concepts and tested on held-out concepts, so it
reads the style and not the concept. Renders are scored at ``image_size`` (default 64, the shipped emoji
model's base stage; larger images are resized down); training adds the differences samples have from renders: flips, shifts of a few pixels,
a random blur (down-then-up sampling) and a little noise.

    images, labels = load_style_data("data/emoji64-all", "train", image_size=64)
    model = train_style_classifier(images, labels, StyleClassifierConfig(), StyleTrainConfig(steps=1500))
    test_images, test_labels = load_style_data("data/emoji64-all", "test", image_size=64)
    style_accuracy(model, test_images, test_labels)          # {"accuracy", "per_style", "confusion", "n"}
    save_model(model, "runs/style-classifier.safetensors")   # config in the metadata (unclip.checkpoint)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from unclip.errors import UnclipError

__all__ = ["STYLES", "StyleClassifierConfig", "StyleClassifier", "StyleTrainConfig", "load_style_data",
           "augment", "train_style_classifier", "style_accuracy"]

STYLES = ("noto", "twemoji", "openmoji", "fluent")   # the keys of unclip.data.emoji.STYLES, in its order


@dataclass(frozen=True)
class StyleClassifierConfig:
    image_size: int = 64                          # inputs are resized to this side first
    channels: tuple[int, ...] = (16, 32, 64)       # one conv block and a 2x average pool per entry
    styles: tuple[str, ...] = STYLES
    dropout: float = 0.1

    def __post_init__(self):
        if self.image_size < 8 or not self.channels or min(self.channels) < 1:
            raise ValueError("image_size must be >= 8 and channels a non-empty tuple of positive widths")
        if len(self.styles) < 2 or len(set(self.styles)) != len(self.styles):
            raise ValueError("styles must name at least two distinct styles")


def _block(cin: int, cout: int) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU(),
                         nn.AvgPool2d(2))


class StyleClassifier(nn.Module):
    """images [B, 3, H, W] in [-1, 1] → style logits [B, S]."""

    config_class = StyleClassifierConfig

    def __init__(self, config: StyleClassifierConfig):
        super().__init__()
        self.config = config
        widths = (3, *config.channels)
        self.features = nn.Sequential(*[_block(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(widths[-1], len(config.styles)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if images.shape[-1] != size or images.shape[-2] != size:
            images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                                   align_corners=False)
        features = self.features(images).mean(dim=(2, 3))   # [B, C]: global average pool
        return self.head(features)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Style indices [B] (into ``config.styles``), in eval mode."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = [self(images[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(images), batch_size)]
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


@dataclass(frozen=True)
class StyleTrainConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    augment: bool = True


def load_style_data(path, split: str = "train", image_size: int = 64, *, styles: tuple[str, ...] = STYLES,
                    limit: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N, 3, S, S], labels [N]) of a built emoji dataset's ``split``, labelled by ``meta["style"]``.

    ``limit`` keeps a seeded random subset. Rows of another style are skipped."""
    from unclip.data import open_dataset

    data = open_dataset(path, split=split, image_size=image_size)
    order = list(range(len(data)))
    if limit is not None and limit < len(order):
        order = torch.randperm(len(order), generator=torch.Generator().manual_seed(seed))[:limit].sort().values.tolist()
    index = {style: i for i, style in enumerate(styles)}
    images, labels = [], []
    for i in order:
        item = data[i]
        style = (item.get("meta") or {}).get("style")
        if style in index:
            images.append(item["image"])
            labels.append(index[style])
    if not images:
        raise UnclipError(f"{path} ({split}) has no images of the styles {', '.join(styles)} (meta.style); "
                          "build it with 'unclip data build emoji'")
    return torch.stack(images), torch.tensor(labels)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips, shifts of up to 2 px (white padding), blur by a random down/up factor in [1, 2], noise."""
    b, _, h, w = images.shape
    flip = torch.rand(b, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    padded = F.pad(images, (2, 2, 2, 2), value=1.0)   # the renders are on white
    dy, dx = (int(v) for v in torch.randint(0, 5, (2,), generator=generator))
    images = padded[..., dy:dy + h, dx:dx + w]
    factor = 1.0 + float(torch.rand((), generator=generator))
    small = max(4, round(h / factor))
    images = F.interpolate(F.interpolate(images, size=(small, small), mode="bilinear", antialias=True,
                                         align_corners=False), size=(h, w), mode="bilinear", align_corners=False)
    sigma = 0.05 * torch.rand(b, 1, 1, 1, generator=generator)
    return (images + sigma * torch.randn(images.shape, generator=generator)).clamp(-1, 1)


def train_style_classifier(images: torch.Tensor, labels: torch.Tensor,
                           config: StyleClassifierConfig = StyleClassifierConfig(),
                           train: StyleTrainConfig = StyleTrainConfig(), *, device: str | torch.device = "cpu",
                           log: Callable[[int, float], None] | None = None) -> StyleClassifier:
    """AdamW with a cosine learning rate over ``train.steps`` steps of class-balanced batches (every style
    equally often, whatever the counts) → the trained model in eval mode. ``log(step, loss)`` every 100 steps."""
    if len(images) != len(labels) or not len(images):
        raise UnclipError("train_style_classifier needs one label per image and at least one image")
    device = torch.device(device)
    # Initial weights and dropout draw from the global RNG: seed it inside a fork, so the run is reproducible and
    # the caller's random state is untouched (house rule 6).
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad():
        torch.manual_seed(train.seed)
        return _train(images, labels, config, train, device, log)


def _train(images, labels, config, train, device, log) -> StyleClassifier:
    generator = torch.Generator().manual_seed(train.seed)   # batches and augmentation
    model = StyleClassifier(config).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, train.steps))
    by_style = [torch.nonzero(labels == s).flatten() for s in range(len(config.styles))]
    present = [rows for rows in by_style if len(rows)]
    for step in range(train.steps):
        picks = torch.randint(0, len(present), (train.batch_size,), generator=generator)
        rows = torch.stack([present[int(p)][int(torch.randint(0, len(present[int(p)]), (), generator=generator))]
                            for p in picks])
        batch = images[rows]
        if train.augment:
            batch = augment(batch, generator)
        loss = F.cross_entropy(model(batch.to(device)), labels[rows].to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if log is not None and (step + 1) % 100 == 0:
            log(step + 1, loss.item())
    return model.eval()


@torch.no_grad()
def style_accuracy(model: StyleClassifier, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """{"accuracy", "per_style": {style: accuracy}, "confusion": rows = true style, columns = predicted, "n"}."""
    predicted = model.predict(images)
    styles = model.config.styles
    confusion = torch.zeros(len(styles), len(styles), dtype=torch.long)
    for true, guess in zip(labels.tolist(), predicted.tolist()):
        confusion[true, guess] += 1
    per_style = {style: float(confusion[i, i] / confusion[i].sum()) for i, style in enumerate(styles)
                 if confusion[i].sum() > 0}
    return {"accuracy": float((predicted == labels).float().mean()) if len(labels) else 0.0, "per_style": per_style,
            "confusion": confusion.tolist(), "n": int(len(labels))}
