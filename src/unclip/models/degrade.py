"""Conditioning augmentation for the upsamplers (unCLIP, arXiv 2204.06125, §2.2 and Appendix C).

The upsamplers are trained on low-res images that have been corrupted, so they are robust to the base
decoder's artifacts: the 64→256 model with Gaussian blur, the 256→1024 model with a "diverse BSR
degradation" (Zhang et al. 2021, BSRGAN; Rombach et al. 2022). We provide both at small scale:

* ``blur``: Gaussian blur with a random per-image sigma;
* ``bsr``: a lighter BSR chain in a random order-free sequence — random blur, a random down/up resize
  with a random interpolation mode, additive Gaussian noise, and JPEG re-compression (via Pillow).

Plus optional Gaussian noise augmentation at a sampled level (Ho et al. 2021, Cascaded Diffusion §4.1),
which the UNet can be told about (``UNetConfig.noise_level_cond``).
All randomness comes from the caller's ``torch.Generator``. Images are [B, 3, h, w] in [-1, 1].
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["DegradeConfig", "make_low_res", "gaussian_blur", "jpeg", "degrade", "noise_augment"]

_MODES = ("nearest", "bilinear", "bicubic", "area")


@dataclass(frozen=True)
class DegradeConfig:
    kind: Literal["none", "blur", "bsr"] = "blur"
    blur_sigma: tuple[float, float] = (0.4, 0.6)   # in low-res pixels (paper: 0.4–0.6 at 64 px)
    blur_prob: float = 1.0                         # 'bsr': chance of each step
    resize_scale: tuple[float, float] = (0.5, 1.0)  # 'bsr': shrink factor before resizing back
    resize_prob: float = 0.5
    noise_sigma: tuple[float, float] = (0.0, 0.05)  # 'bsr': std of additive noise, in [-1, 1] units
    noise_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (40, 95)       # 'bsr': Pillow JPEG quality range
    jpeg_prob: float = 0.5
    noise_levels: int = 0                          # >0: Gaussian noise augmentation with this many levels
    max_noise_sigma: float = 0.3                   # sigma at the top level

    def __post_init__(self):
        for name in ("blur_prob", "resize_prob", "noise_prob", "jpeg_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        for name in ("blur_sigma", "resize_scale", "noise_sigma"):
            low, high = getattr(self, name)
            if low < 0 or high < low:
                raise ValueError(f"{name} must be a range [low, high] with 0 <= low <= high")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError("jpeg_quality must be a range within [1, 100]")
        if self.noise_levels < 0:
            raise ValueError("noise_levels must be >= 0")


def make_low_res(images: torch.Tensor, size: int) -> torch.Tensor:
    """Anti-aliased bicubic downsampling: [B, C, H, W] → [B, C, size, size], clamped to [-1, 1]."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    low = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return low.clamp(-1, 1)


def _uniform(low: float, high: float, n: int, generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma: images [B, C, H, W], sigma [B] (0 = identity)."""
    b, c, h, w = images.shape
    radius = max(1, int(torch.ceil(3 * sigma.max()).item()))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)  # [K]
    s = sigma.to(images.dtype).clamp_min(1e-6)[:, None]  # [B, 1]
    kernel = torch.exp(-0.5 * (offsets[None] / s) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [B, K]
    kernel = kernel.repeat_interleave(c, dim=0)  # [B*C, K] one kernel per (image, channel)
    x = images.reshape(1, b * c, h, w)
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect" if min(h, w) > radius else "replicate")
    x = F.conv2d(x, kernel[:, None, None, :], groups=b * c)  # horizontal
    x = F.conv2d(x, kernel[:, None, :, None], groups=b * c)  # vertical
    return x.reshape(b, c, h, w)


def jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip of one image [3, h, w] in [-1, 1] through Pillow at ``quality``."""
    array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pil = Image.fromarray(array.permute(1, 2, 0).numpy())
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    out = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(out).permute(2, 0, 1).to(image.device, image.dtype) / 127.5 - 1


def _bsr(images: torch.Tensor, cfg: DegradeConfig, generator) -> torch.Tensor:
    b, _, h, w = images.shape
    dev = images.device
    coins = torch.rand(4, b, generator=generator, device=dev)  # [4 steps, B]
    sigma = _uniform(*cfg.blur_sigma, b, generator, dev) * (coins[0] < cfg.blur_prob)
    out = gaussian_blur(images, sigma)
    scales = _uniform(*cfg.resize_scale, b, generator, dev)
    modes = torch.randint(len(_MODES), (2, b), generator=generator, device=dev)
    rows = []
    for i in range(b):  # resizing differs per image (size and mode), so loop over the small batch
        row = out[i:i + 1]
        if coins[1, i] < cfg.resize_prob:
            small = (max(1, int(round(h * scales[i].item()))), max(1, int(round(w * scales[i].item()))))
            row = F.interpolate(row, size=small, **_mode_kwargs(_MODES[modes[0, i]]))
            row = F.interpolate(row, size=(h, w), **_mode_kwargs(_MODES[modes[1, i]]))
        rows.append(row)
    out = torch.cat(rows)
    noise_sigma = _uniform(*cfg.noise_sigma, b, generator, dev) * (coins[2] < cfg.noise_prob)
    noise = torch.randn(out.shape, generator=generator, device=dev, dtype=out.dtype)
    out = (out + noise * noise_sigma[:, None, None, None].to(out.dtype)).clamp(-1, 1)
    qualities = torch.randint(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1, (b,), generator=generator, device=dev)
    return torch.stack([jpeg(out[i], int(qualities[i])) if coins[3, i] < cfg.jpeg_prob else out[i] for i in range(b)])


def _mode_kwargs(mode: str) -> dict:
    return {"mode": mode} if mode in ("nearest", "area") else {"mode": mode, "align_corners": False}


def degrade(low_res: torch.Tensor, cfg: DegradeConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the configured corruption to a batch of low-res conditioning images [B, 3, h, w]."""
    if cfg.kind == "none":
        return low_res
    if cfg.kind == "blur":
        sigma = _uniform(*cfg.blur_sigma, low_res.shape[0], generator, low_res.device)
        return gaussian_blur(low_res, sigma).clamp(-1, 1)
    return _bsr(low_res, cfg, generator)


def noise_augment(low_res: torch.Tensor, level: torch.Tensor, cfg: DegradeConfig,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Cascaded-diffusion noise augmentation: low_res + (level / noise_levels) * max_noise_sigma * eps.

    level: [B] integers in [0, noise_levels); level 0 leaves the image untouched.
    """
    if cfg.noise_levels == 0:
        return low_res
    sigma = level.to(low_res.dtype) / cfg.noise_levels * cfg.max_noise_sigma  # [B]
    noise = torch.randn(low_res.shape, generator=generator, device=low_res.device, dtype=low_res.dtype)
    return low_res + noise * sigma[:, None, None, None]
