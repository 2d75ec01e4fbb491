"""VQ tokenizer: a convolutional VQ autoencoder (VQGAN-style).

van den Oord et al. 2017 (VQ-VAE, arXiv 1711.00937) and Esser et al. 2021 (VQGAN,
arXiv 2012.09841). An encoder E maps images [B,3,H,W] in [-1,1] to z [B,D,h,w]
with h = H / f (f = 2^(len(channel_mult) - 1), 4 or 8 in the presets); each
vector is replaced by its nearest codebook entry, z_q = e_k, k = argmin ‖z - e_k‖
(VQ-VAE Eq. 1-2); the decoder G maps z_q back to an image. Gradients pass the
quantiser by the straight-through estimator z + sg(z_q - z). The loss
(VQ-VAE Eq. 3) is reconstruction + ‖sg(z_q) - z‖²·β (commitment); the codebook is
learned either by the codebook term ‖z_q - sg(z)‖² or by exponential moving
averages (VQ-VAE Appendix A.1), optionally k-means-initialised on the first batch,
and codes unused for a while are restarted at random encoder outputs
(Dhariwal et al. 2020, Jukebox, Sec. 3.2). ``normalize`` looks codes up by cosine
similarity on l2-normalised vectors (Yu et al. 2021, ViT-VQGAN, arXiv 2110.04627,
Sec. 3.2), which keeps rare content (small coloured shapes) from sharing codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from unclip.errors import UnclipError

__all__ = ["VQConfig", "VQModel", "Codebook", "load_vq"]


@dataclass(frozen=True)
class VQConfig:
    image_size: int = 32
    in_channels: int = 3
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)   # one entry per resolution; f = 2^(len-1)
    num_res_blocks: int = 1
    embed_dim: int = 64                          # D, codebook vector size
    codebook_size: int = 512                     # K
    codebook_update: Literal["ema", "loss"] = "ema"
    ema_decay: float = 0.99
    commitment_weight: float = 0.25              # β
    kmeans_init: bool = True                     # k-means on the first training batch
    kmeans_iters: int = 10
    dead_code_threshold: float = 0.03            # EMA usage (vectors per step) below which a code restarts
    normalize: bool = False                      # l2-normalised codes and encoder outputs (ViT-VQGAN)

    def __post_init__(self):
        if len(self.channel_mult) < 1 or self.base_channels < 1:
            raise ValueError("channel_mult needs at least one entry and base_channels >= 1")
        if self.image_size % self.downsample_factor:
            raise ValueError(f"image_size {self.image_size} is not divisible by the factor {self.downsample_factor}")
        if self.codebook_size < 2 or self.embed_dim < 1:
            raise ValueError("codebook_size must be >= 2 and embed_dim >= 1")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError("ema_decay must be in (0, 1)")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.image_size // self.downsample_factor
        return (side, side)


NORMS = ("group", "channel")


class ChannelNorm(nn.Module):
    """Layer norm over the channels of each pixel alone ([B,C,H,W]; weight and bias [C], named as GroupNorm's).

    GroupNorm's statistics pool over the whole image, so a decoder can steer them with one strong local spike,
    which then shows as a blob in every output (StyleGAN's "droplets", Karras et al. 2020, "Analyzing and
    Improving the Image Quality of StyleGAN", §2); per-pixel statistics give it nothing to steer."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def _norm(ch: int, kind: str = "group") -> nn.Module:
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {kind!r}")
    if kind == "channel":
        return ChannelNorm(ch)
    return nn.GroupNorm(min(32, ch) if ch % min(32, ch) == 0 else 1, ch)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str = "group"):
        super().__init__()
        self.body = nn.Sequential(_norm(cin, norm), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                  _norm(cout, norm), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class Encoder(nn.Module):
    """images [B,3,H,W] → z [B,D,H/f,W/f] (D = ``out_channels``, default ``cfg.embed_dim``).

    Shared by the VQ tokenizer and the continuous autoencoder (``unclip.models.autoencoder``), whose
    configs both name ``in_channels``, ``base_channels``, ``channel_mult``, ``num_res_blocks``.
    """

    def __init__(self, cfg, out_channels: int | None = None):
        super().__init__()
        chans = [cfg.base_channels * m for m in cfg.channel_mult]
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)]
        cin = chans[0]
        for level, ch in enumerate(chans):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(cin, ch))
                cin = ch
            if level < len(chans) - 1:
                layers.append(nn.Conv2d(cin, cin, 4, stride=2, padding=1))   # halve H, W
        layers += [ResBlock(cin, cin), _norm(cin), nn.SiLU(), nn.Conv2d(cin, out_channels or cfg.embed_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """z_q [B,D,h,w] → images [B,3,h·f,w·f] (unbounded; clamp for display); D = ``in_channels`` or ``cfg.embed_dim``."""

    def __init__(self, cfg, in_channels: int | None = None, norm: str = "group"):
        super().__init__()
        chans = [cfg.base_channels * m for m in cfg.channel_mult][::-1]
        cin = chans[0]
        layers: list[nn.Module] = [nn.Conv2d(in_channels or cfg.embed_dim, cin, 3, padding=1),
                                   ResBlock(cin, cin, norm)]
        for level, ch in enumerate(chans):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(cin, ch, norm))
                cin = ch
            if level < len(chans) - 1:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cin, 3, padding=1)]
        layers += [_norm(cin, norm), nn.SiLU(), nn.Conv2d(cin, cfg.in_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Codebook(nn.Module):
    """Nearest-neighbour quantiser with EMA or loss-driven codes, k-means init and dead-code restarts.

    The codes live in buffers (``embed`` [K,D]) when updated by EMA, so an optimiser never touches them.
    """

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        K, D = cfg.codebook_size, cfg.embed_dim
        init = torch.randn(K, D) / D ** 0.5
        if cfg.codebook_update == "ema":
            self.register_buffer("embed", init)
        else:
            self.embed = nn.Parameter(init)
        self.register_buffer("cluster_size", torch.ones(K))        # EMA count of vectors per code
        self.register_buffer("embed_sum", init.clone())            # EMA sum of vectors per code
        self.register_buffer("initialised", torch.tensor(not cfg.kmeans_init))

    def prepare(self, flat: torch.Tensor) -> torch.Tensor:
        """Encoder vectors [M,D] in the space codes live in (unit sphere when ``normalize``)."""
        return F.normalize(flat, dim=1) if self.cfg.normalize else flat

    def codes(self) -> torch.Tensor:
        """The code vectors [K,D] as the decoder sees them."""
        return self.prepare(self.embed)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """flat [M,D] (already ``prepare``d) → code indices [M]."""
        embed = self.codes()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ embed.t() + embed.pow(2).sum(1)[None]
        return dist.argmin(dim=1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z [B,D,h,w] → (z_q straight-through [B,D,h,w], codes [B,h,w], vq loss scalar)."""
        B, D, h, w = z.shape
        flat = self.prepare(z.permute(0, 2, 3, 1).reshape(-1, D))           # [M,D], M = B·h·w
        if self.training and not bool(self.initialised):
            self._kmeans_init(flat.detach())
        codes = self.nearest(flat.detach())
        quant = F.embedding(codes, self.codes())                            # [M,D]
        if self.training and self.cfg.codebook_update == "ema":
            self._ema_update(flat.detach(), codes)
        commit = F.mse_loss(flat, quant.detach())
        loss = self.cfg.commitment_weight * commit
        if self.cfg.codebook_update == "loss":
            loss = loss + F.mse_loss(quant, flat.detach())
        quant = flat + (quant - flat).detach()                             # straight-through estimator
        z_q = quant.view(B, h, w, D).permute(0, 3, 1, 2)
        return z_q, codes.view(B, h, w), loss

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        K = self.cfg.codebook_size
        centers = _kmeans_plus_plus(flat, K)
        for _ in range(self.cfg.kmeans_iters):
            assign = torch.cdist(flat, centers).argmin(1)
            counts = torch.bincount(assign, minlength=K).float()
            sums = torch.zeros_like(centers).index_add_(0, assign, flat)
            empty = counts == 0
            centers = torch.where(empty[:, None], centers, sums / counts.clamp_min(1)[:, None])
            centers = self.prepare(centers)
        self.embed.data.copy_(centers)
        self.embed_sum.copy_(centers)
        self.cluster_size.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        K, decay = self.cfg.codebook_size, self.cfg.ema_decay
        counts = torch.bincount(codes, minlength=K).to(flat.dtype)
        sums = torch.zeros(K, flat.shape[1], device=flat.device, dtype=flat.dtype).index_add_(0, codes, flat)
        self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        self.embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
        # Laplace smoothing keeps rarely used codes finite (VQ-VAE Appendix A.1)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + 1e-5) / (n + K * 1e-5) * n
        self.embed.copy_(self.prepare(self.embed_sum / smoothed[:, None]))
        dead = self.cluster_size < self.cfg.dead_code_threshold
        if dead.any():                                                      # restart at random encoder outputs
            fresh = _random_rows(flat, int(dead.sum()))
            self.embed[dead] = fresh
            self.embed_sum[dead] = fresh
            self.cluster_size[dead] = 1.0


def _kmeans_plus_plus(flat: torch.Tensor, count: int) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre is drawn with
    probability proportional to the squared distance to the nearest chosen one."""
    if flat.shape[0] <= count:
        return _random_rows(flat, count)
    centers = [flat[torch.randint(0, flat.shape[0], (1,), device=flat.device)]]
    nearest = (flat - centers[0]).pow(2).sum(1)                             # [M]
    for _ in range(count - 1):
        pick = torch.multinomial(nearest + 1e-12, 1)
        centers.append(flat[pick])
        nearest = torch.minimum(nearest, (flat - flat[pick]).pow(2).sum(1))
    return torch.cat(centers).clone()


def _random_rows(flat: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` rows of flat [M,D] (with replacement and a little jitter when M < count)."""
    M = flat.shape[0]
    if M >= count:
        return flat[torch.randperm(M, device=flat.device)[:count]].clone()
    idx = torch.randint(0, M, (count,), device=flat.device)
    return flat[idx] + 0.01 * flat.std() * torch.randn(count, flat.shape[1], device=flat.device, dtype=flat.dtype)


class VQModel(nn.Module):
    """VQ autoencoder: ``encode(images) -> codes [B,h,w]``, ``decode(codes) -> images [B,3,H,W]``."""

    config_class = VQConfig

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.codebook = Codebook(config)
        self.decoder = Decoder(config)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [B,3,H,W] in [-1,1] → {"recon" [B,3,H,W], "codes" [B,h,w], "vq_loss" scalar}."""
        z = self.encoder(images)
        z_q, codes, vq_loss = self.codebook(z)
        return {"recon": self.decoder(z_q), "codes": codes, "vq_loss": vq_loss}

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B,3,H,W] in [-1,1] → codes [B,h,w] long."""
        z = self.encoder(images)
        B, D, h, w = z.shape
        return self.codebook.nearest(self.codebook.prepare(z.permute(0, 2, 3, 1).reshape(-1, D))).view(B, h, w)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B,h,w] (or [B,h·w]) → images [B,3,H,W] clamped to [-1,1]."""
        if codes.dim() == 2:
            h, w = self.config.grid_size
            codes = codes.view(-1, h, w)
        z_q = F.embedding(codes, self.codebook.codes()).permute(0, 3, 1, 2)  # [B,D,h,w]
        return self.decoder(z_q).clamp(-1, 1)


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Perplexity exp(H(p)) of the code histogram and the fraction of codes used at least once."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).float()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"perplexity": float(entropy.exp()), "codes_used": float((counts > 0).float().mean())}


def psnr(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image for images in [-1,1] (peak-to-peak 2) → [B]."""
    mse = (images.clamp(-1, 1) - targets).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def load_vq(path: str | Path):
    """A frozen VQModel from ``model.safetensors``, a directory holding it, or a run dir (its final/)."""
    from unclip.checkpoint import load_model

    if not str(path):
        raise UnclipError("clipvq needs a trained VQ tokenizer: set model.vq=PATH (e.g. runs/vq-shapes/final)")
    path = Path(path)
    for candidate in (path, path / "model.safetensors", path / "final" / "model.safetensors",
                      path / "vq" / "model.safetensors"):
        if candidate.is_file():
            return load_model(candidate, expected=VQModel).requires_grad_(False)
    raise UnclipError(f"no VQ tokenizer at {path} (train one with 'unclip train vq --config configs/vq/shapes.yaml')")
