"""Kandinsky 2.2 (diffusers ``KandinskyV22PriorPipeline`` + ``KandinskyV22Pipeline``) as an unclip pipeline.

Razzhigaev et al. 2023 ("Kandinsky: an Improved Text-to-Image Synthesis with Image Prior and Latent
Diffusion") cut unCLIP at the CLIP image embedding: a prior (diffusers' ``PriorTransformer`` on a CLIP
ViT-bigG text encoder, x0-prediction on an ``UnCLIPScheduler``, as Karlo's) samples z_i, and a latent
decoder (``UNet2DConditionModel`` with ``addition_embed_type="image"``: z_i is projected into context tokens
and added to the time embedding, no text) denoises MoVQ latents (Zheng et al. 2022) that
``VQModel.decode(latents, force_not_quantize=True)`` turns into pixels. Here:

* the prior is ``KarloPrior`` (the same diffusers module and call);
* ``KandinskyDecoder`` puts the UNet behind ``net(x_t, t, image_embed, drop_image)``; the dropped (unconditional)
  embedding is diffusers' ``get_zero_embed``, the image encoder's embedding of an all-zero pixel tensor, held
  as a buffer; when the scheduler's variance is fixed the UNet's variance channels are dropped, as diffusers
  does, so guidance (eq. 6 of Ho & Salimans) acts on eps alone either way;
* ``MovqAutoencoder`` is the latent decoder's autoencoder (``unclip.pipelines.decoder.Component``): ``decode``
  unquantised, ``encode`` = ``VQModel.encode(x).latents`` (what diffusers' Kandinsky img2img noises), so
  img2img, inpainting and DDIM-inverted variations run on latents;
* a negative prompt is, as in diffusers, the unconditional branch of the prior and, through the prior's
  sample for the negative prompt (sampled beside the prompt's, one batch per image), the decoder's negative
  image embedding (``KandinskyPipeline.sample``); without one the decoder's is the zero-image embedding.

Layouts: a ``KandinskyV22CombinedPipeline`` folder (``prior_*`` sub-folders + ``unet``/``scheduler``/``movq``), or a
``KandinskyV22Pipeline`` folder with its ``KandinskyV22PriorPipeline`` folder passed as ``prior``. Images are
``unet.sample_size`` × the MoVQ factor (2^(levels-1)) pixels, else diffusers' default 512. The defaults
(``DEFAULTS``: diffusers' steps and guidance, ``ddpm`` on the grids of ``unclip.interop.schedulers``) reproduce
diffusers' pipelines at the same noise (tests/test_interop_kandinsky.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unclip.config import to_dict
from unclip.errors import UnclipError
from unclip.interop import read_model_index, require_diffusers
from unclip.interop.diffusers_unclip import (AdaptedPriorConfig, AdaptedUNetConfig, DiffusersClipEncoder,
                                             DiffusersUnCLIPPipeline, KarloPrior, KarloPriorComponent, _drop,
                                             _from_pretrained, _pixel_stats, _scheduler, merge_defaults)
from unclip.pipelines.decoder import Component

__all__ = ["MovqConfig", "MovqAutoencoder", "KandinskyDecoder", "KandinskyPipeline", "component_dirs", "load",
           "DEFAULTS"]

# diffusers' KandinskyV22CombinedPipeline defaults; the decoder's spacing comes from its scheduler
DEFAULTS = {
    "prior": {"steps": 25, "sampler": "ddpm", "spacing": "linspace", "guidance_scale": 4.0, "precision": "fp32"},
    "decoder": {"steps": 100, "sampler": "ddpm", "guidance_scale": 4.0, "precision": "fp32"},
}
DEFAULT_SIZE = 512  # diffusers' Kandinsky height / width
# role -> sub-folder of a KandinskyV22CombinedPipeline folder (a decoder + prior pair: the name without prior_)
_COMBINED = {"prior": "prior_prior", "text_encoder": "prior_text_encoder", "tokenizer": "prior_tokenizer",
             "image_encoder": "prior_image_encoder", "image_processor": "prior_image_processor",
             "prior_scheduler": "prior_scheduler", "unet": "unet", "scheduler": "scheduler", "movq": "movq"}


def component_dirs(folder: Path, prior: Path | None) -> dict[str, Path]:
    """role → component folder, for a combined folder or a decoder folder + its prior folder."""
    name, _ = read_model_index(folder)
    if name == "KandinskyV22CombinedPipeline":
        return {role: folder / sub for role, sub in _COMBINED.items()}
    read_model_index(prior, expect="KandinskyV22PriorPipeline")
    return {role: (folder / sub if sub in ("unet", "scheduler", "movq") else prior / sub.removeprefix("prior_"))
            for role, sub in _COMBINED.items()}


# --- the autoencoder and the decoder ------------------------------------------------------------
@dataclass(frozen=True)
class MovqConfig:
    image_size: int
    latent_channels: int
    downsample_factor: int


class MovqAutoencoder(nn.Module):
    """diffusers' MoVQ ``VQModel`` as a latent decoder's autoencoder: ``encode`` images [B,3,H,W] in [-1,1] →
    latents [B,C,H/f,W/f] (unquantised, as Kandinsky's img2img), ``decode`` latents → images clamped to [-1,1]."""

    def __init__(self, movq: nn.Module, image_size: int):
        super().__init__()
        cfg = movq.config
        if getattr(cfg, "lookup_from_codebook", False):
            raise UnclipError("a MoVQ that looks its latents up in the codebook (lookup_from_codebook) is not "
                              "supported; Kandinsky 2.2 decodes unquantised latents")
        self.movq = movq
        self.config = MovqConfig(image_size=image_size, latent_channels=int(cfg.latent_channels),
                                 downsample_factor=2 ** (len(cfg.block_out_channels) - 1))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.movq.encode(images).latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.movq.decode(latents, force_not_quantize=True).sample.clamp(-1, 1)


class KandinskyDecoder(nn.Module):
    """``UNet2DConditionModel`` (``addition_embed_type="image"``) as ``net(x_t, t, image_embed, drop_image)`` →
    eps [B, C, h, w], or [eps; variance values] [B, 2C, h, w] when ``learn_variance``."""

    def __init__(self, unet: nn.Module, zero_image_embed: torch.Tensor, *, latent_size: int, learn_variance: bool):
        super().__init__()
        cfg = unet.config
        if cfg.addition_embed_type != "image":
            raise UnclipError(f"a Kandinsky 2.2 decoder UNet has addition_embed_type 'image', not "
                              f"{cfg.addition_embed_type!r}")
        if learn_variance and int(cfg.out_channels) != 2 * int(cfg.in_channels):
            raise UnclipError("the decoder's scheduler learns the variance (learned_range) but its UNet has no "
                              "variance channels (out_channels != 2 * in_channels)")
        self.unet, self.learn_variance = unet, learn_variance
        self.register_buffer("null_image_embed", zero_image_embed.reshape(-1).detach().float(), persistent=False)
        self.config = AdaptedUNetConfig(image_size=latent_size, in_channels=int(cfg.in_channels),
                                        out_channels=int(cfg.in_channels) * (2 if learn_variance else 1),
                                        image_embed_dim=int(self.null_image_embed.shape[0]))

    def forward(self, x_t, t, *, image_embed=None, drop_image=None):
        embed = _drop(image_embed, self.null_image_embed, drop_image, x_t.shape[0]).to(x_t.dtype)  # [B, D]
        out = self.unet(x_t, t, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": embed}).sample
        return out if self.learn_variance else out[:, : x_t.shape[1]]


def _latent_size(unet: nn.Module, factor: int) -> int:
    size = unet.config.sample_size
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise UnclipError(f"the decoder UNet's sample_size {list(size)} is not square; unclip makes square images")
        size = size[0]
    return int(size) if size else DEFAULT_SIZE // factor


# --- the pipeline --------------------------------------------------------------------------------
def _rows(first, second):
    """The TextEncoding of ``first``'s rows then ``second``'s."""
    return type(first)(**{k: torch.cat([getattr(first, k), getattr(second, k)]) for k in ("embed", "tokens", "mask")})


class KandinskyPipeline(DiffusersUnCLIPPipeline):
    """An imported Kandinsky 2.2: the decoder's negative image embedding is the prior's sample for the negative
    prompt, drawn from image i's generator after its cascade noise (``noise["negative_prior"]``)."""

    def noise(self, seeds, *, with_prior: bool, decoder_noise: torch.Tensor | None = None):
        out = super().noise(seeds, with_prior=with_prior, decoder_noise=decoder_noise)
        if with_prior:
            out["negative_prior"] = self.prior_pipeline.noise(out["generators"])
        return out

    def sample(self, noise: dict[str, Any], settings: dict[str, dict], *, text=None, negative=None,
               image_embed: torch.Tensor | None = None, callback=None, progress: bool = True, batch_size: int = 16,
               edit=None) -> torch.Tensor:
        """As ``UnCLIPPipeline.sample``; with a negative prompt, image i's prior runs on the pair (prompt,
        negative) with the negative as both pairs' unconditional branch (diffusers' batch), and the decoder's
        unconditional branch takes the negative's embedding."""
        common = {"callback": callback, "progress": progress}
        if negative is None or image_embed is not None or "prior" not in settings or "negative_prior" not in noise:
            return super().sample(noise, settings, text=text, negative=negative, image_embed=image_embed,
                                  batch_size=batch_size, edit=edit, **common)
        gens = noise["generators"]
        n, stochastic = len(gens), self.stochastic(settings, edit)
        pairs = [[i, n + i] for i in range(n)]
        batched = [[row for pair in pairs[k:k + batch_size] for row in pair] for k in range(0, n, batch_size)]
        groups = pairs if stochastic else batched
        sampled = self.prior_pipeline.generate(
            _rows(text, negative), _rows(negative, negative), noise=noise["prior"] + noise["negative_prior"],
            settings=settings["prior"], generators=list(gens) * 2, groups=groups, stochastic=stochastic, **common)
        z = torch.empty_like(sampled)
        z[[row for group in groups for row in group]] = sampled                     # [2N, D]: prompts, negatives
        return self.decoder_pipeline.generate(z[:n], noise=noise, settings=settings, generators=gens, text=text,
                                              negative=negative, batch_size=batch_size, stochastic=stochastic,
                                              edit=edit, negative_image_embed=z[n:], **common)


def load(folder: str | Path, *, prior: str | Path | None = None, device="cpu", defaults: dict | None = None,
         name: str | None = None) -> KandinskyPipeline:
    """A ``KandinskyPipeline`` for a combined folder, or a decoder folder and its ``prior`` folder."""
    require_diffusers()
    from diffusers import PriorTransformer, UNet2DConditionModel, VQModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

    folder = Path(folder)
    prior = Path(prior) if prior is not None else None
    class_name, _ = read_model_index(folder)
    parts = component_dirs(folder, prior)
    mean, std = _pixel_stats(parts["image_processor"])
    encoder = DiffusersClipEncoder(_from_pretrained(CLIPTokenizer, parts["tokenizer"]),
                                   _from_pretrained(CLIPTextModelWithProjection, parts["text_encoder"]),
                                   _from_pretrained(CLIPVisionModelWithProjection, parts["image_encoder"]),
                                   pixel_mean=mean, pixel_std=std).eval()
    schedule = _scheduler(parts["prior_scheduler"].parent, parts["prior_scheduler"].name)
    net = _from_pretrained(PriorTransformer, parts["prior"])
    config = AdaptedPriorConfig(embed_dim=int(net.config.embedding_dim), diffusion=schedule.diffusion,
                                clip_range=schedule.clip_range)
    prior_net = KarloPrior(net, config, encoder.null_text())
    schedule = _scheduler(parts["scheduler"].parent, parts["scheduler"].name, ("DDPMScheduler",))
    if schedule.clip_range is not None:
        raise UnclipError(f"{parts['scheduler']}: clip_sample must be false for a latent decoder (Kandinsky 2.2 "
                          "ships it so); unclip does not clip latents")
    movq = _from_pretrained(VQModel, parts["movq"])
    unet = _from_pretrained(UNet2DConditionModel, parts["unet"])
    factor = 2 ** (len(movq.config.block_out_channels) - 1)   # MovqConfig.downsample_factor
    latent_size = _latent_size(unet, factor)
    size = encoder.image_encoder.config.image_size
    with torch.no_grad():  # diffusers' get_zero_embed: the embedding of all-zero pixel values
        zero = encoder.image_encoder(pixel_values=torch.zeros(1, 3, size, size)).image_embeds
    decoder_net = KandinskyDecoder(unet, zero, latent_size=latent_size,
                                   learn_variance=schedule.diffusion.learn_variance)
    decoder = Component(decoder_net, {"role": "decoder", "diffusion": to_dict(schedule.diffusion)},
                        autoencoder=MovqAutoencoder(movq, latent_size * factor))
    merged = merge_defaults(DEFAULTS, defaults)
    merged["decoder"].setdefault("spacing", schedule.spacing)
    pipe = KandinskyPipeline(encoder, decoder, prior=KarloPriorComponent(prior_net), defaults=merged,
                             name=name or folder.name)
    pipe.source, pipe.source_class, pipe.source_prior = folder, class_name, prior
    return pipe.to(device)
