"""The contract between the training engine and each stage.

The engine (``unclip.train.engine``) owns everything generic: devices,
mixed precision, optimiser, schedule, EMA, gradient accumulation and
clipping, checkpoints, resume, logging and distribution. A stage only says
what to train: its model, its data and its loss (house rule 8: stages are
small). Stages are registered by name in ``unclip.train.stages.STAGES``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset, default_collate


class Stage:
    """Base class for a training stage (clip, prior, decoder, upsampler, vq, clipvq, ...).

    Subclasses set ``name`` and ``config_class`` — a frozen dataclass with at
    least a ``train: TrainConfig`` field (``unclip.train.config``) — and
    implement ``build_model``, ``build_dataset`` and ``loss``.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type]
    run_dir: Path | None = None  # set by the engine before ``setup``; the folder may not exist yet

    def __init__(self, config: Any):
        self.config = config

    # --- what to train -------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        """The trainable module. Frozen helpers (e.g. a CLIP encoder) live on the stage."""
        raise NotImplementedError

    def build_dataset(self, split: str) -> Dataset:
        """A map-style or iterable dataset for ``split`` ('train' or 'val')."""
        raise NotImplementedError

    def collate(self, samples: list[Any]) -> Any:
        return default_collate(samples)

    def loss(self, model: torch.nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss to minimise plus named floats to log.

        ``generator`` is the engine's seeded generator on the batch's device; draw
        all training noise from it so that resumed runs repeat exactly.
        """
        raise NotImplementedError

    # --- optional hooks --------------------------------------------------
    def setup(self, device: torch.device) -> None:
        """Move frozen helpers (encoders, tokenizers) to ``device``; called once."""

    def started(self, run_dir: Path) -> None:
        """Called once on the main process when ``run_dir`` exists (fresh or resumed), before step 0."""

    def evaluate(self, model: torch.nn.Module, out_dir: Path, step: int) -> dict[str, float]:
        """Periodic stage-specific evaluation (sample grids as PNG, metrics). ``model`` holds EMA weights."""
        return {}

    def export(self, model: torch.nn.Module, out_dir: Path) -> Path:
        """Write the inference model (EMA weights) under ``out_dir``; return its path."""
        from unclip.checkpoint import save_model

        path = Path(out_dir) / "model.safetensors"
        save_model(model, path)
        return path


class ImageStage(Stage):
    """A stage trained on the images (and captions) of the dataset at ``config.data.path``.

    ``config.data`` needs ``path`` and ``val_split``; images are resized to
    ``image_size()`` (``config.data.image_size`` unless a subclass says otherwise). An optional
    ``caption_column`` names the caption column of an ``imagefolder`` (or the caption member of shards).
    """

    def image_size(self) -> int | None:
        return getattr(self.config.data, "image_size", None)

    def build_dataset(self, split: str) -> Dataset:
        """``split`` of ``config.data.path``; for evaluation ("val" → ``data.val_split``, or any other
        name) a source without that split, e.g. a plain folder, gives its train split with a warning."""
        from unclip.data import open_dataset, open_eval_split

        data = self.config.data
        caption_column = getattr(data, "caption_column", "") or None  # a data config may name it
        if split == "train":
            return open_dataset(data.path, split=split, image_size=self.image_size(), caption_column=caption_column)
        split = data.val_split if split == "val" else split
        return open_eval_split(data.path, split, image_size=self.image_size(), caption_column=caption_column)

    def collate(self, samples: list[Any]) -> Any:
        from unclip.data import collate_samples

        return collate_samples(samples)


class PerceptualImageStage(ImageStage):
    """An ``ImageStage`` with a frozen EfficientNet-Lite0 perceptual term (the VQ tokenizer, the autoencoder).

    ``config.loss`` needs ``perceptual_weight`` (0 disables it) and ``perceptual_resize``.
    """

    def __init__(self, config: Any):
        super().__init__(config)
        self._features = None

    @property
    def features(self):
        """The frozen feature network, loaded on first use (None when the perceptual weight is 0)."""
        if self._features is None and self.config.loss.perceptual_weight > 0:
            from unclip.models.perceptual import load_efficientnet_features

            self._features = load_efficientnet_features("cpu", resize=self.config.loss.perceptual_resize)
        return self._features

    def setup(self, device: torch.device) -> None:
        if self.features is not None:
            self._features = self.features.to(device)

    def image_size(self) -> int:
        return self.config.model.image_size
