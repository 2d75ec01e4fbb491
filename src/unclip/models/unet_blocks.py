"""Building blocks of the ADM/GLIDE diffusion UNet (Dhariwal & Nichol 2021; Nichol et al. 2022).

Residual blocks with scale-shift ("FiLM") group norm, ADM §3 (``AdaGN(h, y) = y_s GroupNorm(h) + y_b``);
self-attention whose keys/values are extended with projected context tokens (GLIDE §2.4, the
unCLIP decoder's four CLIP tokens plus caption tokens, unCLIP §2.2); strided down/up sampling.
All blocks are channels-last friendly: no ``.view`` on conv outputs, only ``reshape``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "group_norm",
    "ResBlock",
    "AttentionBlock",
    "Downsample",
    "Upsample",
]


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups that divide ``channels`` (tiny test configs use few channels)."""
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero-init the last layer of a residual branch so each block starts as the identity (ADM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with scale-shift norm: h = conv(SiLU(GN(h) * (1 + s) + b)), (s, b) = Linear(emb)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # x: [B, Cin, H, W], emb: [B, E]
        h = self.conv1(F.silu(self.norm1(x)))  # [B, Cout, H, W]
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # [B, Cout, 1, 1] each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over pixels, keys/values extended by context tokens (GLIDE §2.4).

    ``context``: [B, L, Dc] tokens (CLIP image tokens and/or caption tokens), ``context_mask``: [B, L] bool
    (True = attend). Uses ``F.scaled_dot_product_attention``.
    """

    def __init__(self, channels: int, head_channels: int, context_dim: int = 0):
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"attention channels {channels} not divisible by head_channels {head_channels}")
        self.num_heads = channels // head_channels
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.context_kv = nn.Linear(context_dim, 2 * channels) if context_dim else None
        self.out = zero_module(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, height, width = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)  # [B, HW, C] each
        mask = None
        if self.context_kv is not None and context is not None:
            ck, cv = self.context_kv(context).chunk(2, dim=-1)  # [B, L, C] each
            k, v = torch.cat([k, ck], dim=1), torch.cat([v, cv], dim=1)  # [B, HW + L, C]
            if context_mask is not None:
                pixels = torch.ones(b, height * width, dtype=torch.bool, device=x.device)
                mask = torch.cat([pixels, context_mask.bool()], dim=1)[:, None, None, :]  # [B, 1, 1, HW + L]
        q, k, v = (t.reshape(b, t.shape[1], self.num_heads, -1).transpose(1, 2) for t in (q, k, v))  # [B, nh, N, hd]
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, nh, HW, hd]
        h = self.out(h.transpose(1, 2).reshape(b, height * width, c))  # [B, HW, C]
        return x + h.transpose(1, 2).reshape(b, c, height, width)


class Downsample(nn.Module):
    """Strided 3x3 conv: [B, C, H, W] → [B, C, H/2, W/2]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest ×2 then 3x3 conv: [B, C, H, W] → [B, C, 2H, 2W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
