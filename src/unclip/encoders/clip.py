"""Backend "clip": a small CLIP trained from scratch (Radford et al. 2021).

Image tower: a ViT; text tower: a Transformer over a BPE tokenizer trained on
the dataset's captions. Both are projected linearly into a shared D-dim space
and L2-normalised. Training minimises the symmetric InfoNCE loss with a
learnable temperature (Radford et al. 2021, Fig. 3):

    logits = exp(t) * I @ T^T,   loss = (CE(logits, y) + CE(logits^T, y)) / 2

Directory: ``encoder.json``, ``model.safetensors`` (config inside) and
``tokenizer.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unclip.checkpoint import load_model, save_model
from unclip.encoders.base import Encoder, TextEncoding, write_encoder_json
from unclip.encoders.tokenizer import BPETokenizer
from unclip.encoders.towers import TextConfig, TextTower, VisionConfig, VisionTower
from unclip.errors import UnclipError

__all__ = ["ClipConfig", "ClipEncoder", "clip_loss"]


@dataclass(frozen=True)
class ClipConfig:
    embed_dim: int = 128
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    init_temperature: float = 0.07      # logits scale starts at 1 / 0.07 (CLIP's value)
    max_logit_scale: float = 100.0      # CLIP clips the scale at 100

    def __post_init__(self):
        if self.embed_dim < 1:
            raise ValueError("embed_dim must be >= 1")
        if not 0 < self.init_temperature < 1:
            raise ValueError("init_temperature must be in (0, 1)")


def clip_loss(image_embed: torch.Tensor, text_embed: torch.Tensor, logit_scale: torch.Tensor,
              same: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric InfoNCE over a batch of matched pairs (Radford et al. 2021, Fig. 3).

    ``image_embed``/``text_embed``: [B, D], L2-normalised. ``same`` [B, B] bool marks
    pairs that share a caption: such duplicates are all counted as positives (the
    target row is spread evenly over them), so identical captions are not pushed apart.
    """
    logits = logit_scale * image_embed @ text_embed.t()               # [B, B]
    if same is None:
        same = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
    targets = same.float() / same.float().sum(dim=1, keepdim=True)   # [B, B], rows sum to 1
    loss_i2t = torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()
    loss_t2i = torch.sum(-targets.t() * F.log_softmax(logits.t(), dim=1), dim=1).mean()
    loss = (loss_i2t + loss_t2i) / 2
    with torch.no_grad():
        hits = same[torch.arange(len(logits)), logits.argmax(dim=1)].float().mean()
    return loss, {"acc_i2t": float(hits), "logit_scale": float(logit_scale.detach())}


class ClipEncoder(Encoder):
    """Own CLIP: ``ClipEncoder(config)``; attach the tokenizer with ``set_tokenizer``."""

    backend = "clip"
    config_class = ClipConfig
    normalized = True

    def __init__(self, config: ClipConfig, tokenizer: BPETokenizer | None = None):
        super().__init__()
        self.config = config
        self.vision = VisionTower(config.vision)
        self.text = TextTower(config.text)
        self.image_proj = nn.Linear(config.vision.width, config.embed_dim, bias=False)
        self.text_proj = nn.Linear(config.text.width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))
        self.embed_dim = config.embed_dim
        self.token_dim = config.text.width
        self.max_len = config.text.max_len
        self.image_size = config.vision.image_size
        self.tokenizer = tokenizer

    def set_tokenizer(self, tokenizer: BPETokenizer) -> None:
        if tokenizer.vocab_size > self.config.text.vocab_size:
            raise UnclipError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only "
                              f"{self.config.text.vocab_size}; raise model.text.vocab_size")
        self.tokenizer = tokenizer

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    def _encode_text(self, captions: list[str]) -> TextEncoding:
        if self.tokenizer is None:
            raise UnclipError("this CLIP has no tokenizer; load it with load_encoder(dir) or call set_tokenizer")
        ids, mask = self.tokenizer(captions, self.max_len)               # [B, L] each
        ids, mask = ids.to(self.device), mask.to(self.device)
        pooled, states = self.text(ids, mask)                             # [B, C], [B, L, C]
        embed = F.normalize(self.text_proj(pooled), dim=-1)              # [B, D]
        return TextEncoding(embed=embed, tokens=states, mask=mask)

    def _encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.vision(images)), dim=-1)  # [B, D]

    def save(self, directory: str | Path) -> Path:
        if self.tokenizer is None:
            raise UnclipError("cannot save a CLIP without its tokenizer; call set_tokenizer first")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_model(self, directory / "model.safetensors")
        self.tokenizer.save(directory / "tokenizer.json")
        write_encoder_json(directory, self)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "ClipEncoder":
        directory = Path(directory)
        model = load_model(directory / "model.safetensors", device=device, model_class=cls)
        model.set_tokenizer(BPETokenizer.load(directory / "tokenizer.json"))
        return model
