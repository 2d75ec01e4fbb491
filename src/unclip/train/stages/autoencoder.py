"""Training stage ``autoencoder``: the KL-regularised autoencoder of the latent decoder.

Loss (Rombach et al. 2022, App. G, without the adversarial term — CPU budget): ``L1 + perceptual_weight ·
LPIPS-style distance on EfficientNet-Lite0 features + kl_weight · KL(q(z|x) || N(0, I))``. EfficientNet-Lite0
is the generator's own feature network; the recognisability metric's classifier (EfficientNet-Lite1) is
never used here. ``evaluate`` reports reconstruction PSNR on ``data.eval_split`` and writes a grid;
``export`` measures the std of the training latents, stores ``latent_scale = 1 / std`` in the weights and
writes ``final/model.safetensors`` (an ``Autoencoder``, config inside).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from unclip.checkpoint import save_model
from unclip.models.autoencoder import Autoencoder, AutoencoderConfig
from unclip.models.vq import psnr
from unclip.train.config import TrainConfig
from unclip.train.stage import PerceptualImageStage

__all__ = ["AutoencoderData", "AutoencoderLoss", "AutoencoderStageConfig", "AutoencoderStage", "latent_std"]


@dataclass(frozen=True)
class AutoencoderData:
    path: str = "data/emoji64"    # built dataset, image folder or shards (unclip.data.open_dataset)
    val_split: str = "val"
    eval_split: str = "test"      # where evaluate() measures PSNR (falls back to train when it is empty)
    eval_items: int = 256
    scale_items: int = 1024       # training images whose latents set latent_scale at export


@dataclass(frozen=True)
class AutoencoderLoss:
    perceptual_weight: float = 0.1       # 0 disables the EfficientNet-Lite0 term
    perceptual_resize: int = 64
    kl_weight: float = 1.0e-6            # LDM's KL-reg: a nudge towards N(0, I), not a VAE bottleneck

    def __post_init__(self):
        if self.perceptual_weight < 0 or self.kl_weight < 0:
            raise ValueError("perceptual_weight and kl_weight must be >= 0")


@dataclass(frozen=True)
class AutoencoderStageConfig:
    data: AutoencoderData = field(default_factory=AutoencoderData)
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    loss: AutoencoderLoss = field(default_factory=AutoencoderLoss)
    train: TrainConfig = field(default_factory=TrainConfig)
    # False: fine-tune the decoder only (start with --init from a trained autoencoder). The encoder, and so
    # the latent space and latent_scale, stay exactly as they were: latent decoders trained on them still fit
    # (as Stable Diffusion's ft-MSE VAE decoder was refined under a fixed encoder).
    train_encoder: bool = True

    def __post_init__(self):
        if not self.train_encoder and not self.train.init:
            raise ValueError("train_encoder: false fine-tunes a trained autoencoder's decoder; give --init PATH")


class AutoencoderStage(PerceptualImageStage):
    name = "autoencoder"
    config_class = AutoencoderStageConfig

    def build_model(self) -> torch.nn.Module:
        model = Autoencoder(self.config.model)
        if not self.config.train_encoder:
            model.encoder.requires_grad_(False)
        return model

    def loss(self, model, batch, generator):
        from unclip.models.perceptual import perceptual_distance

        param = next(model.parameters())
        images = batch["image"].to(param.device, param.dtype)
        out = model(images, generator=generator)
        rec = F.l1_loss(out["recon"], images)
        kl = out["kl"].mean()
        total = rec + self.config.loss.kl_weight * kl
        logs = {"l1": float(rec.detach()), "kl": float(kl.detach())}
        if self.features is not None:
            perc = perceptual_distance(self.features, out["recon"], images).mean()
            total = total + self.config.loss.perceptual_weight * perc
            logs["perceptual"] = float(perc.detach())
        with torch.no_grad():
            logs["psnr"] = float(psnr(out["recon"].float(), images.float()).mean())
        return total, logs

    def _eval_dataset(self):
        dataset = self.build_dataset(self.config.data.eval_split)
        return dataset if len(dataset) else self.build_dataset("train")

    @torch.no_grad()
    def evaluate(self, model, out_dir: Path, step: int) -> dict[str, float]:
        """Reconstruction PSNR on ``data.eval_split``; a grid of originals above reconstructions."""
        from unclip.pipelines.images import image_grid, save_png, to_pil

        dataset = self._eval_dataset()
        param = next(model.parameters())
        count, scores, first = min(len(dataset), self.config.data.eval_items), [], None
        for start in range(0, count, 64):
            images = torch.stack([dataset[i]["image"] for i in range(start, min(count, start + 64))])
            images = images.to(param.device, param.dtype)
            recon = model.decode(model.encode(images))
            scores.append(psnr(recon, images).cpu())
            first = first if first is not None else (images[:8].cpu(), recon[:8].cpu())
        if first is None:
            return {}
        save_png(image_grid(to_pil(first[0]) + to_pil(first[1]), columns=first[0].shape[0]),
                 Path(out_dir) / f"autoencoder_recon_{step:06d}.png")
        return {"psnr": float(torch.cat(scores).mean())}

    def export(self, model, out_dir: Path) -> Path:
        if self.config.train_encoder:  # a frozen encoder keeps the latent_scale it was loaded with
            dataset = self.build_dataset("train")
            model.latent_scale.fill_(1.0 / latent_std(model, dataset, self.config.data.scale_items))
        path = Path(out_dir) / "model.safetensors"
        save_model(model, path)
        return path


@torch.no_grad()
def latent_std(model: Autoencoder, dataset, max_items: int = 1024, batch_size: int = 64) -> float:
    """The std of the unscaled posterior means over the first ``max_items`` images (LDM §4.3.2)."""
    param = next(model.parameters())
    means = []
    for start in range(0, min(len(dataset), max_items), batch_size):
        images = torch.stack([dataset[i]["image"] for i in range(start, min(len(dataset), max_items, start + batch_size))])
        means.append(model.posterior(images.to(param.device, param.dtype))[0].float().cpu())
    if not means:
        return 1.0
    return float(torch.cat(means).std().clamp_min(1e-6))
