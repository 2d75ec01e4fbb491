"""A KL-regularised convolutional autoencoder: the latent space of the latent decoder.

Rombach et al. 2022 (Latent Diffusion, arXiv 2112.10752), §3.1 and App. G: an encoder E maps an image x
[B,3,H,W] in [-1,1] to a diagonal Gaussian q(z | x) over latents [B,C,H/f,W/f]; the decoder D maps z back
to an image. Training minimises reconstruction (L1 + a perceptual distance) plus a small KL to N(0, I)
("KL-reg", weight ~1e-6), which keeps the latent space smooth without shrinking its information. The
diffusion decoder then runs on ``encode(x) = scale · mean`` at H/f (Kandinsky 2.2 does the same on MoVQ
latents), where ``latent_scale`` = 1 / std of the training latents (LDM §4.3.2, "rescaling"), set once
after training and saved with the weights.

The convolutional trunks are the VQ tokenizer's (``unclip.models.vq.Encoder`` / ``Decoder``), without the
codebook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from unclip.models.vq import NORMS, Decoder, Encoder

__all__ = ["AutoencoderConfig", "Autoencoder"]


@dataclass(frozen=True)
class AutoencoderConfig:
    image_size: int = 64
    in_channels: int = 3
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 4)   # one entry per resolution; f = 2^(len-1)
    num_res_blocks: int = 1
    latent_channels: int = 4
    # the decoder's normalisation: "group" (GroupNorm, as LDM) or "channel" (per-pixel, unclip.models.vq.ChannelNorm),
    # which removes the blob GroupNorm's image-wide statistics invite (measured on emoji, docs/results.md)
    decoder_norm: Literal["group", "channel"] = "group"

    def __post_init__(self):
        if len(self.channel_mult) < 1 or self.base_channels < 1 or self.latent_channels < 1:
            raise ValueError("channel_mult needs at least one entry; base_channels and latent_channels must be >= 1")
        if self.decoder_norm not in NORMS:
            raise ValueError(f"decoder_norm must be one of {', '.join(NORMS)}, got {self.decoder_norm!r}")
        if self.image_size % self.downsample_factor:
            raise ValueError(f"image_size {self.image_size} is not divisible by the factor {self.downsample_factor}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample_factor


class Autoencoder(nn.Module):
    """``encode(images) -> latents [B,C,h,w]`` (scaled), ``decode(latents) -> images [B,3,H,W]``."""

    config_class = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, out_channels=2 * config.latent_channels)   # mean and log-variance
        self.decoder = Decoder(config, in_channels=config.latent_channels, norm=config.decoder_norm)
        self.register_buffer("latent_scale", torch.ones(()))                   # 1 / std of training latents

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B,3,H,W] → (mean, logvar), each [B,C,h,w] (unscaled)."""
        mean, logvar = self.encoder(images).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Training pass: {"recon" [B,3,H,W], "kl" [B]} with z ~ q(z | x) by reparameterisation."""
        mean, logvar = self.posterior(images)
        std = (0.5 * logvar).exp()
        z = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)
        return {"recon": self.decoder(z), "kl": kl}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B,3,H,W] in [-1,1] → latents [B,C,h,w], the posterior mean times ``latent_scale``."""
        mean, _ = self.posterior(images)
        return mean * self.latent_scale.to(mean.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B,C,h,w] → images [B,3,H,W] clamped to [-1,1]."""
        return self.decoder(latents / self.latent_scale.to(latents.dtype)).clamp(-1, 1)
