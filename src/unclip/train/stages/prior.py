"""Training stage ``prior``: the unCLIP diffusion prior P(z_i | y) (Ramesh et al. 2022, §2.1, App. C).

Data: an embeddings directory written by ``unclip embed`` (``data.path`` = EMBDIR; read with
``unclip.encoders.shards.open_embeddings``), or embeddings made elsewhere read as they are: a
clip-retrieval output folder or webdataset shards with ``.npy`` members (``unclip.encoders.external``;
they hold no caption token states, so the prior conditions on the text embedding alone). Embeddings are normalised per dimension with the
encoder's ``embed_stats.safetensors`` (looked up in ``data.encoder``, else the encoder named in
EMBDIR/embed.json, else EMBDIR itself; computed from the training split as a last resort).
Loss: MSE on the unnoised image embedding (x0 prediction) via ``GaussianDiffusion.training_losses``;
the text conditioning is dropped with probability ``drop_text`` (paper: 10%) for guidance.
``kind: autoregressive`` trains the AR prior of §2.1 instead (``unclip.models.ar_prior``: PCA,
quantile buckets, cross-entropy over the code sequence); both export to the same place and are
sampled by ``unclip.models.prior.sample_prior``.
Export: ``final/prior/model.safetensors``, one self-describing component file (config, embedding
statistics and sampling defaults inside; ``unclip.components``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from unclip.checkpoint import atomic_write_text
from unclip.components import save_component
from unclip.diffusion import GaussianDiffusion
from unclip.encoders.shards import EmbeddingRows
from unclip.errors import UnclipError
from unclip.models.ar_prior import ARPrior, ARPriorConfig
from unclip.models.prior import DiffusionPrior, PriorConfig, replace_dims
from unclip.pipelines.settings import check_stage_sampling
from unclip.train.config import TrainConfig
from unclip.train.stage import Stage

__all__ = ["PriorData", "PriorSample", "PriorStageConfig", "PriorStage", "find_embed_stats"]


@dataclass(frozen=True)
class PriorData:
    path: str = "data/emb/shapes32"   # EMBDIR from 'unclip embed'
    encoder: str = ""                 # encoder dir holding embed_stats.safetensors ("" = the one in embed.json)
    train_split: str = "train"
    val_split: str = "val"
    max_text_len: int = 0             # caption tokens the prior attends to: 0 = the encoder's max_len (longer are cut)
    caption_column: str = ""          # shards with embeddings inside: the caption member ("" = txt)


@dataclass(frozen=True)
class PriorSample:
    """Sampling settings for ``evaluate`` and the defaults written into the component file."""
    sampler: str = "ddim"             # a Gaussian sampler of unclip.diffusion.registry
    steps: int = 64
    guidance_scale: float = 2.0
    num_candidates: int = 2
    eval_items: int = 256             # held-out captions scored at each evaluation

    def __post_init__(self):
        check_stage_sampling(self, "sample")


@dataclass(frozen=True)
class PriorStageConfig:
    data: PriorData = field(default_factory=PriorData)
    kind: Literal["diffusion", "autoregressive"] = "diffusion"
    model: PriorConfig = field(default_factory=PriorConfig)   # embed_dim/token_dim/max_text_len come from the data
    ar: ARPriorConfig = field(default_factory=ARPriorConfig)  # used when kind: autoregressive
    train: TrainConfig = field(default_factory=TrainConfig)
    drop_text: float = 0.1
    sample: PriorSample = field(default_factory=PriorSample)

    def __post_init__(self):
        if not 0.0 <= self.drop_text <= 1.0:
            raise ValueError("drop_text must be in [0, 1]")


def find_embed_stats(embeddings: str | Path, encoder: str = "", info: dict | None = None) -> dict | None:
    """The encoder's embedding statistics: data.encoder, then embed.json's encoder, then EMBDIR; else None."""
    from unclip.encoders.stats import STATS_FILE, load_embed_stats

    candidates = [encoder, (info or {}).get("encoder", ""), str(embeddings)]
    for directory in candidates:
        if directory and (Path(directory) / STATS_FILE).is_file():
            return load_embed_stats(directory)
    return None


class PriorStage(Stage):
    name = "prior"
    config_class = PriorStageConfig

    def __init__(self, config: PriorStageConfig):
        super().__init__(config)
        self._splits: dict[str, EmbeddingRows] = {}
        self.diffusion = GaussianDiffusion(config.model.diffusion)

    def split(self, name: str) -> EmbeddingRows:
        if name not in self._splits:
            self._splits[name] = EmbeddingRows(self.config.data.path, name, self.config.data.caption_column or "txt")
        return self._splits[name]

    def build_model(self) -> DiffusionPrior | ARPrior:
        rows = self.split(self.config.data.train_split)
        info = rows.info
        if self.config.kind == "autoregressive":
            return self._build_ar(rows)
        config = replace_dims(self.config.model, embed_dim=int(info["embed_dim"]), token_dim=int(info["token_dim"]),
                              max_text_len=self._text_len(info), unit_norm=bool(info.get("normalized", True)),
                              use_text_tokens=self.config.model.use_text_tokens and _has_tokens(info))
        model = DiffusionPrior(config)
        stats = find_embed_stats(self.config.data.path, self.config.data.encoder, info)
        if stats is None:
            print(f"note: no embed_stats.safetensors found for {self.config.data.path}; "
                  "using the training split's statistics", file=sys.stderr)
            stats = _stats_of(rows)
        model.set_embed_stats(stats)
        return model

    def _text_len(self, info: dict) -> int:
        limit = self.config.data.max_text_len
        return min(int(info["max_len"]), limit) if limit > 0 else int(info["max_len"])

    def _build_ar(self, rows: EmbeddingRows) -> ARPrior:
        info = rows.info
        embed_dim = int(info["embed_dim"])
        config = dataclasses.replace(self.config.ar, embed_dim=embed_dim, token_dim=int(info["token_dim"]),
                                     max_text_len=self._text_len(info), unit_norm=bool(info.get("normalized", True)),
                                     pca_dims=min(self.config.ar.pca_dims, embed_dim),
                                     use_text_tokens=self.config.ar.use_text_tokens and _has_tokens(info))
        model = ARPrior(config)
        model.fit_codebook(rows.tensors["image_embed"], rows.tensors["text_embed"])
        return model

    def build_dataset(self, split: str) -> Dataset:
        name = self.config.data.train_split if split == "train" else self.config.data.val_split
        return self.split(name)

    def loss(self, model, batch: dict[str, torch.Tensor], generator: torch.Generator):
        prior = getattr(model, "module", model)   # DDP wraps the network; the buffers live on the inner module
        if isinstance(prior, ARPrior):
            return self._ar_loss(model, prior, batch, generator)
        x_start = prior.normalize_image(batch["image_embed"].float())                  # (B, D)
        B = x_start.shape[0]
        drop = torch.rand(B, generator=generator, device=x_start.device) < self.config.drop_text
        kwargs = {"text_embed": prior.normalize_text(batch["text_embed"].float()), "text_tokens": batch["text_tokens"],
                  "text_mask": batch["text_mask"], "drop_text": drop}
        t = self.diffusion.sample_timesteps(B, generator, x_start.device)
        terms = self.diffusion.training_losses(model, x_start, t, model_kwargs=kwargs, generator=generator)
        loss = terms["loss"].mean()
        return loss, {"mse": float(terms["mse"].detach().mean())}

    def _ar_loss(self, model, prior: ARPrior, batch: dict[str, torch.Tensor], generator: torch.Generator):
        """Cross-entropy of the PCA/bucket code sequence (teacher forcing), text dropped for guidance."""
        codes = prior.encode(batch["image_embed"].float())                                  # (B, K)
        drop = torch.rand(codes.shape[0], generator=generator, device=codes.device) < self.config.drop_text
        logits = model(codes[:, :-1], text_embed=batch["text_embed"], text_tokens=batch["text_tokens"],
                       text_mask=batch["text_mask"], drop_text=drop)                         # (B, K, NB)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), codes.reshape(-1))
        return loss, {"ce": float(loss.detach())}

    def evaluate(self, model, out_dir: Path, step: int) -> dict[str, float]:
        from unclip.eval.prior_eval import evaluate_prior

        try:
            rows = self.split(self.config.data.val_split)
        except UnclipError:
            return {}
        s = self.config.sample
        table = evaluate_prior(model, rows, max_items=s.eval_items, sampler=s.sampler, steps=s.steps,
                               guidance_scale=s.guidance_scale, num_candidates=s.num_candidates)
        atomic_write_text(Path(out_dir) / "prior_eval.json", json.dumps(table, indent=2) + "\n")
        prior = table["prior"]
        return {"cosine": prior["cosine"], "mean_rank": prior["mean_rank"], "top1": prior["top1"]}

    def export(self, model, out_dir: Path) -> Path:
        return save_component(Path(out_dir) / "prior", model, role="prior", sample_defaults=self.config.sample,
                              extra={"kind": self.config.kind, "embeddings": str(self.config.data.path)})


def _has_tokens(info: dict) -> bool:
    """Embeddings made elsewhere (clip-retrieval, shards) carry no caption token states."""
    return info.get("text_tokens", True) is not False


def _stats_of(rows: EmbeddingRows) -> dict[str, torch.Tensor]:
    image, text = rows.tensors["image_embed"].double(), rows.tensors["text_embed"].double()
    return {"image_mean": image.mean(0).float(), "image_std": image.std(0).float().clamp(min=1e-6),
            "text_mean": text.mean(0).float(), "text_std": text.std(0).float().clamp(min=1e-6)}
