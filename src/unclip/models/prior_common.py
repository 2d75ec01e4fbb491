"""What the two priors share (unCLIP §2.1): the Transformer block and the best-of-K candidate noise.

The diffusion prior (``models/prior.py``) and the autoregressive prior (``models/ar_prior.py``)
both import from here, so neither imports the other's module for its parts.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TransformerBlock", "candidate_noise"]


class TransformerBlock(nn.Module):
    """Pre-LayerNorm Transformer block with scaled_dot_product_attention."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.dropout = dropout

    def qkv_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, C) → q, k, v stacked as (3, B, nh, S, hs)."""
        B, S, C = x.shape
        return self.qkv(self.norm1(x)).view(B, S, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, qkv: torch.Tensor | None = None,
                past: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, S, C); mask (B, 1, S, P + S) bool, True = may attend; ``past`` (B, 2, nh, P, hs): keys and
        values of P earlier positions that x attends to; ``qkv`` = ``qkv_heads(x)`` when already computed."""
        B, S, C = x.shape
        q, k, v = self.qkv_heads(x) if qkv is None else qkv
        if past is not None:
            k, v = torch.cat([past[:, 0].to(k.dtype), k], dim=2), torch.cat([past[:, 1].to(v.dtype), v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(y.transpose(1, 2).reshape(B, S, C))
        return x + F.dropout(self.mlp(self.norm2(x)), self.dropout, self.training)


def candidate_noise(noise: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """[B, D] -> [B, K, D]: the given noise first, further candidates seeded from each row's bytes.

    Seeding per row keeps every caption's result independent of how captions are batched.
    """
    B, D = noise.shape
    candidates = noise[:, None].repeat(1, num_candidates, 1)                     # (B, K, D)
    for b, row in enumerate(noise.detach().float().cpu()):
        if num_candidates > 1:
            seed = int.from_bytes(hashlib.sha256(row.numpy().tobytes()).digest()[:8], "little") % (2**63)
            extra = torch.randn(num_candidates - 1, D, generator=torch.Generator().manual_seed(seed))
            candidates[b, 1:] = extra.to(device=noise.device, dtype=noise.dtype)
    return candidates
