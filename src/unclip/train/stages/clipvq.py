"""Training stage ``clipvq``: CLIP-VQDiffusion's token transformer (Han et al. 2024, arXiv 2403.14944).

Language-free training (the paper's Sec. 3.1, after LAFITE, Zhou et al. 2022, Eq. 3): the
condition is the CLIP *image* embedding c of the training image, perturbed as
c' = normalise(c + α·ε/‖ε‖), ε ~ N(0, I), so that at sampling time the CLIP *text*
embedding of a prompt lands among the conditions seen in training. With
``data.image_only: true`` captions are never read. ``condition: text`` trains the
text-supervised reference (c = caption embedding) and ``condition: none`` the
unconditional floor. The VQ tokenizer (``model.vq``) and the encoder (``data.encoder``)
stay frozen; the discrete diffusion is VQ-Diffusion's (``unclip.diffusion.discrete``).
The condition is dropped to the learned null embedding with probability ``drop_cond``
(Improved VQ-Diffusion's classifier-free guidance).

Export: a complete pipeline directory ``final/`` (pipeline.json, encoder/, vq/, transformer/)
that ``unclip generate --model RUNDIR/final`` samples from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from unclip.diffusion import discrete
from unclip.diffusion.discrete import DiscreteDiffusionConfig
from unclip.diffusion.registry import sampler_names
from unclip.models.vq import load_vq
from unclip.errors import UnclipError
from unclip.models.token_transformer import TokenTransformer, TokenTransformerConfig
from unclip.train.config import TrainConfig
from unclip.train.stage import Stage

__all__ = ["ClipVQData", "ClipVQModel", "ClipVQSample", "ClipVQStageConfig", "ClipVQStage", "perturb_embedding"]


@dataclass(frozen=True)
class ClipVQData:
    path: str = "data/shapes32"   # built dataset or a plain image folder (captions optional)
    encoder: str = ""             # frozen encoder directory (unclip.encoders.load_encoder)
    image_only: bool = False      # true: never read captions (language-free); set by --images
    val_split: str = "val"
    precompute: bool = True       # encode the split once (VQ codes + CLIP embeddings) instead of every step


@dataclass(frozen=True)
class ClipVQModel:
    vq: str = ""                  # frozen VQ tokenizer: model.safetensors or a run's final/ directory
    transformer: TokenTransformerConfig = field(default_factory=TokenTransformerConfig)
    # transformer.num_codes / grid_size / cond_dim / num_steps are filled from the VQ, encoder and diffusion


@dataclass(frozen=True)
class ClipVQSample:
    """How ``evaluate`` samples its grid, and the defaults written to pipeline.json."""
    prompts: tuple[str, ...] = ("a large red circle in the center", "a small blue square in the top left",
                                "a large green triangle in the bottom right", "a small black star in the top right")
    images_per_prompt: int = 2
    guidance_scale: float = 3.0
    truncation: float = 0.9
    steps: int = 50
    sampler: str = "ancestral"        # a discrete sampler of unclip.diffusion.registry

    def __post_init__(self):
        if self.sampler not in sampler_names("discrete"):
            raise ValueError(f"sample.sampler={self.sampler!r}: choose from {', '.join(sampler_names('discrete'))}")


@dataclass(frozen=True)
class ClipVQStageConfig:
    data: ClipVQData = field(default_factory=ClipVQData)
    model: ClipVQModel = field(default_factory=ClipVQModel)
    diffusion: DiscreteDiffusionConfig = field(default_factory=DiscreteDiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    condition: Literal["image", "text", "none"] = "image"
    noise_alpha: float = 0.25     # α of the embedding perturbation (paper: 0.5 FFHQ, 0.25 COCO)
    drop_cond: float = 0.1        # probability of the null condition (classifier-free guidance)
    sample: ClipVQSample = field(default_factory=ClipVQSample)

    def __post_init__(self):
        if self.noise_alpha < 0:
            raise ValueError("noise_alpha must be >= 0")
        if not 0.0 <= self.drop_cond <= 1.0:
            raise ValueError("drop_cond must be in [0, 1]")
        if self.condition == "text" and self.data.image_only:
            raise ValueError("condition 'text' needs captions but data.image_only is true; "
                             "use condition: image for language-free training")


def perturb_embedding(embed: torch.Tensor, alpha: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """c' = normalise(ĉ + α·ε/‖ε‖) with ĉ = c/‖c‖ and ε ~ N(0, I) (LAFITE Eq. 3; CLIP-VQDiffusion Sec. 3.1).

    embed [B,D] → [B,D], unit norm. In high dimension ε ⟂ ĉ almost surely, so the angle
    between ĉ and c' is close to atan(α)."""
    embed = F.normalize(embed.float(), dim=-1)
    if alpha == 0:
        return embed
    noise = torch.randn(embed.shape, generator=generator, device=embed.device)
    return F.normalize(embed + alpha * F.normalize(noise, dim=-1), dim=-1)


class _EncodedSplit(Dataset):
    """Precomputed items {"codes": [N] long, "image_embed": [D], "text_embed": [D] (text mode)}."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors
        self.length = len(next(iter(tensors.values())))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}


class ClipVQStage(Stage):
    name = "clipvq"
    config_class = ClipVQStageConfig

    def __init__(self, config: ClipVQStageConfig):
        super().__init__(config)
        self._encoder = None
        self._vq = None
        self._schedule = None

    # --- frozen helpers ----------------------------------------------------------
    @property
    def encoder(self):
        if self._encoder is None:
            if not self.config.data.encoder:
                raise UnclipError("clipvq needs a frozen CLIP encoder: set data.encoder=PATH (an encoder directory)")
            from unclip.encoders import load_encoder

            self._encoder = load_encoder(self.config.data.encoder).eval().requires_grad_(False)
        return self._encoder

    @property
    def vq(self):
        if self._vq is None:
            self._vq = load_vq(self.config.model.vq)
        return self._vq

    @property
    def schedule(self) -> discrete.DiscreteSchedule:
        if self._schedule is None:
            self._schedule = discrete.mask_replace_schedule(self.vq.config.codebook_size, self.config.diffusion).to("cpu")
        return self._schedule

    def setup(self, device: torch.device) -> None:
        self.vq.to(device)
        if self.config.condition != "none" or not self.config.data.precompute:
            self.encoder.to(device)
        self._schedule = self.schedule.to(device)

    def transformer_config(self) -> TokenTransformerConfig:
        cfg = self.config
        cond_dim = 0 if cfg.condition == "none" else self.encoder.embed_dim
        return dataclasses.replace(cfg.model.transformer, num_codes=self.vq.config.codebook_size,
                                   grid_size=self.vq.config.grid_size, cond_dim=cond_dim,
                                   num_steps=cfg.diffusion.num_steps)

    # --- what to train -----------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        return TokenTransformer(self.transformer_config())

    def build_dataset(self, split: str):
        from unclip.data import open_dataset, open_eval_split

        cfg = self.config
        split = cfg.data.val_split if split == "val" else split
        opener = open_dataset if split == "train" else open_eval_split  # a plain folder has no val split
        dataset = opener(cfg.data.path, split=split, image_size=self.vq.config.image_size)
        if not cfg.data.precompute:
            return dataset
        return _EncodedSplit(self._encode_all(dataset))

    def collate(self, samples):
        from torch.utils.data import default_collate

        from unclip.data import collate_samples

        return default_collate(samples) if "codes" in samples[0] else collate_samples(samples)

    @torch.no_grad()
    def _encode_all(self, dataset, batch_size: int = 128) -> dict[str, torch.Tensor]:
        """VQ codes and CLIP embeddings of every item, computed once on the CPU."""
        from unclip.data import collate_samples

        out: dict[str, list[torch.Tensor]] = {"codes": []}
        for start in range(0, len(dataset), batch_size):
            batch = collate_samples([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
            for key, value in self._encode_batch(batch).items():
                out.setdefault(key, []).append(value.cpu())
        if not out["codes"]:
            raise UnclipError(f"dataset {self.config.data.path} has no images in this split")
        return {k: torch.cat(v) for k, v in out.items()}

    @torch.no_grad()
    def _encode_batch(self, batch) -> dict[str, torch.Tensor]:
        """Images (+ captions) → {"codes" [B,N], "image_embed" [B,D] | "text_embed" [B,D]}."""
        cfg = self.config
        vq_param = next(self.vq.parameters())
        images = batch["image"].to(vq_param.device, vq_param.dtype)
        out = {"codes": self.vq.encode(images).flatten(1)}
        if cfg.condition == "image":
            out["image_embed"] = self.encoder.encode_image(images).float()
        elif cfg.condition == "text":  # never reached with image_only (rejected by the config)
            captions = list(batch["caption"])
            if any(not c.strip() for c in captions):
                raise UnclipError("condition 'text' needs a caption for every image; this dataset has empty ones")
            out["text_embed"] = self.encoder.encode_text(captions).embed.float()
        return out

    def loss(self, model, batch, generator):
        cfg = self.config
        param = next(model.parameters())
        if "codes" not in batch:                    # raw images: encode on the fly
            batch = self._encode_batch(batch)
        codes = batch["codes"].to(param.device)
        cond_embed = None
        if cfg.condition == "image":
            cond_embed = perturb_embedding(batch["image_embed"].to(param.device), cfg.noise_alpha, generator)
        elif cfg.condition == "text":
            cond_embed = F.normalize(batch["text_embed"].to(param.device).float(), dim=-1)
        drop = None
        if cond_embed is not None and cfg.drop_cond > 0:
            drop = torch.rand(codes.shape[0], generator=generator, device=param.device) < cfg.drop_cond

        def model_fn(x_t, t):
            return torch.log_softmax(model(x_t, t, cond_embed=cond_embed, drop_cond=drop).float(), dim=1)

        terms = discrete.training_losses(model_fn, codes, self.schedule.to(param.device), aux_weight=cfg.diffusion.aux_weight,
                                         generator=generator)
        return terms["loss"], {"vlb": float(terms["vlb"].detach()), "aux_nll": float(terms["aux"].detach())}

    # --- evaluation and export ------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model, out_dir: Path, step: int) -> dict[str, float]:
        """A grid of samples for ``sample.prompts`` (text embeddings; rows = prompts)."""
        from unclip.pipelines.images import image_grid, save_png

        s = self.config.sample
        pipe = self.pipeline(model)
        result = pipe(list(s.prompts), num_images_per_prompt=s.images_per_prompt, seed=step, progress=False)
        save_png(image_grid(result.images, columns=s.images_per_prompt), Path(out_dir) / f"clipvq_samples_{step:06d}.png")
        return {}

    def pipeline(self, model):
        from unclip.pipelines.clip_vq import ClipVQPipeline

        cfg, s = self.config, self.config.sample
        defaults = {"guidance_scale": s.guidance_scale, "truncation": s.truncation, "steps": s.steps,
                    "sampler": s.sampler}
        encoder = self.encoder if (cfg.condition != "none" or cfg.data.encoder) else None
        return ClipVQPipeline(encoder, self.vq, model, diffusion=cfg.diffusion, condition=cfg.condition,
                              defaults=defaults, info={"noise_alpha": cfg.noise_alpha,
                                                       "image_only": cfg.data.image_only})

    def export(self, model, out_dir: Path) -> Path:
        return self.pipeline(model).save(Path(out_dir), overwrite=True)
