"""The sinusoidal timestep embedding every network of the project uses (Vaswani et al. 2017, §3.5).

One home for it: the UNet (decoder, upsampler), both priors and the VQ token transformer import
it from here. Networks only see ``t`` as a number to embed; what it means in noise terms is the
diffusion code's business (house rule 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, *, sin_first: bool = False) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: t [B] → [B, dim].

    Frequencies ``max_period ** (-i / half)``; the cosines come first (as in improved-diffusion),
    or the sines with ``sin_first`` (the order the VQ token transformer was trained with). An odd
    ``dim`` gets one zero column.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]                                      # [B, half]
    parts = (args.sin(), args.cos()) if sin_first else (args.cos(), args.sin())
    return F.pad(torch.cat(parts, dim=-1), (0, dim % 2))
