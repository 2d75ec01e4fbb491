"""Token transformer that predicts p_θ(x_0 | x_t, c) over VQ codes.

The denoising network of VQ-Diffusion (Gu et al. 2022, arXiv 2111.14822, Sec. 3.3 and
Fig. 2): transformer blocks whose layer norms are AdaLayerNorms driven by the
timestep. In CLIP-VQDiffusion (Han et al. 2024, arXiv 2403.14944, Sec. 3.2) the CLIP
embedding enters the same way: the AdaLayerNorm scale/shift come from
``time_embed(t) + cond_proj(c)``. Cross-attention to a few tokens projected from c is
an option (``cond_mode="cross_attn"``). A learned null condition (Improved
VQ-Diffusion, Tang et al. 2022) replaces c for classifier-free guidance.

The network knows nothing about the noise process (house rule 2): it maps codes
x_t [B,N] in 0..K (K = [MASK]) and steps t [B] to logits [B,K,N].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from unclip.models.embeddings import timestep_embedding

__all__ = ["TokenTransformerConfig", "TokenTransformer"]


@dataclass(frozen=True)
class TokenTransformerConfig:
    num_codes: int = 512                  # K (the input vocabulary is K + 1 with [MASK])
    grid_size: tuple[int, int] = (8, 8)   # token grid (h, w); N = h·w
    cond_dim: int = 0                     # CLIP embedding size; 0 = unconditional
    cond_mode: Literal["adaln", "cross_attn"] = "adaln"
    cond_tokens: int = 4                  # context tokens made from c in cross_attn mode
    width: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    num_steps: int = 100                  # T, for the timestep embedding

    def __post_init__(self):
        if self.num_codes < 2:
            raise ValueError("num_codes must be >= 2")
        if self.width % self.heads:
            raise ValueError("width must be divisible by heads")
        if min(self.grid_size) < 1 or self.depth < 1 or self.num_steps < 1:
            raise ValueError("grid_size, depth and num_steps must be >= 1")
        if self.cond_dim < 0 or self.cond_tokens < 1:
            raise ValueError("cond_dim must be >= 0 and cond_tokens >= 1")

    @property
    def seq_len(self) -> int:
        return self.grid_size[0] * self.grid_size[1]


class AdaLayerNorm(nn.Module):
    """LayerNorm whose scale and shift are predicted from an embedding: LN(x)(1 + s) + b."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.to_scale_shift = nn.Linear(width, 2 * width)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.to_scale_shift(F.silu(emb)).unsqueeze(1).chunk(2, dim=-1)   # [B,1,W] each
        return self.norm(x) * (1 + scale) + shift


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.to_q = nn.Linear(width, width)
        self.to_kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, N, W = x.shape
        context = x if context is None else context
        q = self.to_q(x).view(B, N, self.heads, -1).transpose(1, 2)                       # (B, nh, N, hs)
        k, v = self.to_kv(context).view(B, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, N, W))


class Block(nn.Module):
    def __init__(self, cfg: TokenTransformerConfig):
        super().__init__()
        W = cfg.width
        self.norm1 = AdaLayerNorm(W)
        self.attn = Attention(W, cfg.heads, cfg.dropout)
        self.cross = None
        if cfg.cond_mode == "cross_attn" and cfg.cond_dim > 0:
            self.norm_cross = nn.LayerNorm(W)
            self.cross = Attention(W, cfg.heads, cfg.dropout)
        self.norm2 = AdaLayerNorm(W)
        hidden = int(W * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(W, hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(hidden, W))

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x, emb))
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), context)
        return x + self.mlp(self.norm2(x, emb))


class TokenTransformer(nn.Module):
    """p_θ(x_0 | x_t, t, c): codes [B,N] (K = [MASK]) → logits [B,K,N]."""

    config_class = TokenTransformerConfig

    def __init__(self, config: TokenTransformerConfig):
        super().__init__()
        self.config = cfg = config
        W = cfg.width
        self.token_embed = nn.Embedding(cfg.num_codes + 1, W)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.seq_len, W) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(W, W), nn.SiLU(), nn.Linear(W, W))
        if cfg.cond_dim > 0:
            # learned null condition for classifier-free guidance (Tang et al. 2022)
            self.null_cond = nn.Parameter(torch.randn(cfg.cond_dim) / math.sqrt(cfg.cond_dim))
            if cfg.cond_mode == "adaln":
                self.cond_proj = nn.Sequential(nn.Linear(cfg.cond_dim, W), nn.SiLU(), nn.Linear(W, W))
            else:
                self.cond_proj = nn.Linear(cfg.cond_dim, cfg.cond_tokens * W)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(W)
        self.head = nn.Linear(W, cfg.num_codes)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond_embed: Optional[torch.Tensor] = None,
        drop_cond: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x_t [B,N] long, t [B] long, cond_embed [B,cond_dim] or None (= null condition),
        drop_cond [B] bool (True: use the null condition for that row) → logits [B,K,N]."""
        cfg = self.config
        B = x_t.shape[0]
        x = self.token_embed(x_t) + self.pos_embed                                       # [B,N,W]
        emb = self.time_mlp(timestep_embedding(t, cfg.width, sin_first=True))                            # [B,W]
        context = None
        if cfg.cond_dim > 0:
            cond = self._condition(cond_embed, drop_cond, B, x.dtype)                    # [B,cond_dim]
            if cfg.cond_mode == "adaln":
                emb = emb + self.cond_proj(cond)
            else:
                context = self.cond_proj(cond).view(B, cfg.cond_tokens, cfg.width)      # [B,M,W]
        for block in self.blocks:
            x = block(x, emb, context)
        return self.head(self.norm_out(x)).transpose(1, 2)                               # [B,K,N]

    def _condition(self, cond_embed, drop_cond, batch: int, dtype) -> torch.Tensor:
        null = self.null_cond.to(dtype).unsqueeze(0).expand(batch, -1)
        if cond_embed is None:
            return null
        if cond_embed.shape != (batch, self.config.cond_dim):
            raise ValueError(f"cond_embed must be [{batch}, {self.config.cond_dim}], got {list(cond_embed.shape)}")
        if drop_cond is None:
            return cond_embed.to(dtype)
        return torch.where(drop_cond.view(-1, 1), null, cond_embed.to(dtype))
