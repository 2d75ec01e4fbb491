"""Training stage ``vq``: the VQ tokenizer of CLIP-VQDiffusion (VQGAN-style, Esser et al. 2021).

Loss (VQ-VAE, van den Oord et al. 2017, Eq. 3, with VQGAN's perceptual term, Esser et al.
2021, Eq. 4 without the adversarial part): ``recon (L1 or L2) + perceptual_weight ·
LPIPS-style distance on EfficientNet-Lite0 features + vq_loss`` (commitment, and the
codebook term when the codebook is not EMA-updated). ``evaluate`` reports reconstruction
PSNR and codebook usage (perplexity, fraction of codes used) on ``data.eval_split``.
Export: ``final/model.safetensors`` (a ``VQModel``, config inside).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from unclip.models.vq import VQConfig, VQModel, codebook_usage, psnr
from unclip.train.config import TrainConfig
from unclip.train.stage import PerceptualImageStage

__all__ = ["VQData", "VQLoss", "VQStageConfig", "VQStage", "evaluate_tokenizer"]


@dataclass(frozen=True)
class VQData:
    path: str = "data/shapes32"   # built dataset, image folder or shards (unclip.data.open_dataset)
    val_split: str = "val"
    eval_split: str = "test"      # where evaluate() measures PSNR and codebook usage
    eval_items: int = 512


@dataclass(frozen=True)
class VQLoss:
    recon: Literal["l1", "l2"] = "l1"
    perceptual_weight: float = 0.1       # 0 disables the EfficientNet-Lite0 term
    perceptual_resize: int = 64          # small images are upsampled so the feature maps keep some extent

    def __post_init__(self):
        if self.perceptual_weight < 0:
            raise ValueError("perceptual_weight must be >= 0")


@dataclass(frozen=True)
class VQStageConfig:
    data: VQData = field(default_factory=VQData)
    model: VQConfig = field(default_factory=VQConfig)
    loss: VQLoss = field(default_factory=VQLoss)
    train: TrainConfig = field(default_factory=TrainConfig)


class VQStage(PerceptualImageStage):
    name = "vq"
    config_class = VQStageConfig

    def build_model(self) -> torch.nn.Module:
        return VQModel(self.config.model)

    def loss(self, model, batch, generator):
        param = next(model.parameters())
        images = batch["image"].to(param.device, param.dtype)
        out = model(images)
        recon = out["recon"]
        rec = F.l1_loss(recon, images) if self.config.loss.recon == "l1" else F.mse_loss(recon, images)
        total = rec + out["vq_loss"]
        logs = {"recon": float(rec.detach()), "vq": float(out["vq_loss"].detach())}
        if self.features is not None:
            perc = _perceptual(self.features, recon, images).mean()
            total = total + self.config.loss.perceptual_weight * perc
            logs["perceptual"] = float(perc.detach())
        with torch.no_grad():
            logs["psnr"] = float(psnr(recon, images).mean())
            logs.update(codebook_usage(out["codes"], model.config.codebook_size))
        return total, logs

    @torch.no_grad()
    def evaluate(self, model, out_dir: Path, step: int) -> dict[str, float]:
        """PSNR and codebook usage on ``data.eval_split``; writes a grid (originals above reconstructions)."""
        from unclip.pipelines.images import image_grid, save_png, to_pil

        dataset = self.build_dataset(self.config.data.eval_split)
        metrics, originals, recons = evaluate_tokenizer(model, dataset, max_items=self.config.data.eval_items)
        n = min(8, originals.shape[0])
        if n:
            grid = image_grid(to_pil(originals[:n]) + to_pil(recons[:n]), columns=n)
            save_png(grid, Path(out_dir) / f"vq_recon_{step:06d}.png")
        return metrics


def _perceptual(features, recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    from unclip.models.perceptual import perceptual_distance

    return perceptual_distance(features, recon, images)


@torch.no_grad()
def evaluate_tokenizer(model: VQModel, dataset, *, max_items: int = 512, batch_size: int = 64):
    """→ ({"psnr", "perplexity", "codes_used", "items"}, first originals [n,3,H,W], their reconstructions)."""
    param = next(model.parameters())
    count = min(len(dataset), max_items)
    scores, all_codes, originals, recons = [], [], None, None
    for start in range(0, count, batch_size):
        items = [dataset[i] for i in range(start, min(count, start + batch_size))]
        images = torch.stack([x["image"] for x in items]).to(param.device, param.dtype)
        codes = model.encode(images)
        out = model.decode(codes)
        scores.append(psnr(out, images).cpu())
        all_codes.append(codes.cpu())
        if originals is None:
            originals, recons = images.cpu(), out.cpu()
    if not scores:
        return {}, torch.zeros(0, 3, 1, 1), torch.zeros(0, 3, 1, 1)
    usage = codebook_usage(torch.cat(all_codes), model.config.codebook_size)
    metrics = {"psnr": float(torch.cat(scores).mean()), **usage, "items": float(count)}
    return metrics, originals, recons
