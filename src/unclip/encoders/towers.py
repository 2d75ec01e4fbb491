"""The two towers of a CLIP trained from scratch (Radford et al. 2021, sec. 2.4).

``VisionTower``: a Vision Transformer (Dosovitskiy et al. 2021): patchify,
learned position embeddings, a class token, pre-LN blocks, and a linear
projection of the class token to the joint embedding space.

``TextTower``: a Transformer over BPE tokens with learned positions; the
state at the [EOS] token, layer-normed and linearly projected, is the text
embedding (CLIP's choice). Attention is bidirectional with a padding mask
(CLIP uses a causal mask; we want every token state to see the whole caption,
since the unCLIP decoder attends to them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unclip.models.prior_common import TransformerBlock

__all__ = ["VisionConfig", "TextConfig", "VisionTower", "TextTower", "Block"]


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 32
    patch_size: int = 4
    width: int = 128
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 1024
    max_len: int = 32
    width: int = 128
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        if self.max_len < 3:
            raise ValueError("max_len must be >= 3 (BOS, a token, EOS)")


class Block(TransformerBlock):
    """The priors' pre-LN Transformer block (``models.prior_common``) with dropout after its MLP and a
    padding-mask attention: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__(width, heads, mlp_ratio, dropout)
        self.mlp.append(nn.Dropout(dropout))   # no parameters: the weight names are unchanged

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = key_mask[:, None, None, :] if key_mask is not None else None  # [B,1,1,T] True = attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)  # [B,h,T,hs]
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.norm2(x))


class VisionTower(nn.Module):
    """ViT: images [B,3,S,S] in [-1,1] → features [B,width] (class token after the final LN)."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        grid = config.image_size // config.patch_size
        self.patch = nn.Conv2d(3, config.width, config.patch_size, stride=config.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos = nn.Parameter(torch.randn(1, grid * grid + 1, config.width) * 0.02)
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, config.mlp_ratio, config.dropout) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch(images).flatten(2).transpose(1, 2)                 # [B, N, C]
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos  # [B, N+1, C]
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, 0])                                          # [B, C]


class TextTower(nn.Module):
    """Transformer: ids [B,L], mask [B,L] → (pooled [B,width] at EOS, states [B,L,width])."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.width)
        self.pos = nn.Parameter(torch.randn(1, config.max_len, config.width) * 0.01)
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, config.mlp_ratio, config.dropout) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]                  # [B, L, C]
        for block in self.blocks:
            x = block(x, key_mask=mask)
        states = self.norm(x) * mask[..., None]                            # [B, L, C], pads zeroed
        eos = mask.long().sum(dim=1) - 1                                   # [B] index of EOS
        pooled = states[torch.arange(len(ids), device=ids.device), eos]    # [B, C]
        return pooled, states
