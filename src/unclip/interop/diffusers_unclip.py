"""Karlo (diffusers ``UnCLIPPipeline`` / ``UnCLIPImageVariationPipeline``) as an unclip ``UnCLIPPipeline``.

Ramesh et al. 2022 as kakaobrain's Karlo ships it in diffusers: a CLIP text encoder, a ``PriorTransformer``
predicting x0 of the CLIP image embedding (§2.1), the decoder's ``UnCLIPTextProjModel`` (z_i → 4 extra
context tokens + a time-embedding term, §2) and ``UNet2DConditionModel``, and two super-resolution
``UNet2DModel``s (``super_res_first`` for every step but the last, ``super_res_last`` for it). The adapters
below put diffusers' modules behind unclip's network call ``net(x_t, t, **cond)`` and the pipeline's
component interfaces; unclip's own samplers, guidance and manipulations do the rest.

Scheduler mapping (``unclip.interop.schedulers``): Karlo's ``UnCLIPScheduler``s are unclip's cosine schedule
on the ``"linspace"`` grid, sampled by unclip's ``ddpm``; ``clip_sample`` is the decoder's and upsampler's x0
clipping to [-1, 1]; the prior's range (5 in Karlo) clips its x0 output. So the imported defaults (``ddpm``,
``linspace``, diffusers' steps and guidance scales) reproduce diffusers' own pipeline at the same noise
(tests/test_interop_diffusers.py).

Conditioning in the unconditional branch of guidance is, as in diffusers, the empty caption's encoding
(held by the adapters as ``null_*`` buffers) and, for the decoder, the learned CFG image embedding.
The decoder's pooled text embedding is the text projection of the last real token's state (CLIP's EOS
pooling), so it is computed from the token states that unclip's decoder interface passes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from unclip.atomic import write_dir
from unclip.checkpoint import atomic_write_text
from unclip.config import to_dict
from unclip.diffusion.gaussian import GaussianDiffusion
from unclip.diffusion.guidance import classifier_free_guidance
from unclip.diffusion.samplers import sample
from unclip.diffusion.schedule import DiffusionConfig
from unclip.encoders.base import Encoder, TextEncoding
from unclip.errors import CheckpointError, UnclipError
from unclip.interop import INDEX_FILE, load_diffusers, read_model_index, require_diffusers
from unclip.interop.schedulers import diffusion_from_scheduler
from unclip.pipelines.unclip import Component, UnCLIPPipeline

__all__ = ["DiffusersClipEncoder", "merge_defaults", "KarloPrior", "KarloPriorComponent", "KarloDecoder", "KarloSuperRes",
           "AdaptedUNetConfig", "AdaptedPriorConfig", "DiffusersUnCLIPPipeline", "load", "KIND", "DEFAULTS"]

KIND = "diffusers-unclip"
PRIOR_DIR = "diffusers_prior"  # an import's copy of a separate prior folder (Kandinsky 2.2's decoder + prior)
# diffusers' UnCLIPPipeline defaults, on the sampler and grid that reproduce its UnCLIPScheduler
DEFAULTS = {
    "prior": {"steps": 25, "sampler": "ddpm", "spacing": "linspace", "guidance_scale": 4.0, "precision": "fp32"},
    "decoder": {"steps": 25, "sampler": "ddpm", "spacing": "linspace", "guidance_scale": 8.0, "precision": "fp32"},
    "upsampler": {"steps": 7, "sampler": "ddpm", "spacing": "linspace", "precision": "fp32"},
}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


# --- schedulers -------------------------------------------------------------------------------
def _scheduler(folder: Path, name: str, schedulers: tuple[str, ...] = ("UnCLIPScheduler",)):
    """The ``SchedulerMapping`` of ``folder/name/scheduler_config.json`` (``unclip.interop.schedulers``)."""
    path = folder / name / "scheduler_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is missing or unreadable ({type(exc).__name__}); re-save the pipeline") from None
    return diffusion_from_scheduler(config, str(path), schedulers)


# --- the text and image encoder ---------------------------------------------------------------
class DiffusersClipEncoder(Encoder):
    """CLIP text (and optional vision) towers with projection, as Karlo uses them: embeddings are the raw
    projections (not normalised), token states the text encoder's ``last_hidden_state`` at the tokenizer's
    max length (77), mask its attention mask."""

    backend = "diffusers"

    def __init__(self, tokenizer, text_encoder: nn.Module, image_encoder: nn.Module | None = None, *,
                 pixel_mean=OPENAI_MEAN, pixel_std=OPENAI_STD):
        super().__init__()
        self.tokenizer, self.text_encoder, self.image_encoder = tokenizer, text_encoder, image_encoder
        self.embed_dim = int(text_encoder.config.projection_dim)
        self.token_dim = int(text_encoder.config.hidden_size)
        self.max_len = int(tokenizer.model_max_length)
        self.image_size = int(image_encoder.config.image_size) if image_encoder is not None else 224
        self.normalized = False
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def _encode_text(self, captions: list[str]) -> TextEncoding:
        inputs = self.tokenizer(captions, padding="max_length", max_length=self.max_len, truncation=True,
                                return_tensors="pt")
        out = self.text_encoder(inputs.input_ids.to(self.device))
        return TextEncoding(embed=out.text_embeds, tokens=out.last_hidden_state,
                            mask=inputs.attention_mask.bool().to(self.device))

    def null_text(self) -> TextEncoding:
        """The empty caption's encoding: the unconditional branch of guidance, as in diffusers."""
        return self._encode_text([""])

    @torch.no_grad()
    def _encode_image(self, images: torch.Tensor) -> torch.Tensor:
        if self.image_encoder is None:
            raise UnclipError("this model has no image encoder, so it cannot encode images (variations, "
                              "interpolation, text diffs); add a CLIPVisionModelWithProjection as image_encoder/ "
                              "(as Karlo's image-variation pipeline has) and import again")
        pixels = ((images + 1) / 2 - self.pixel_mean) / self.pixel_std
        return self.image_encoder(pixel_values=pixels).image_embeds

    def save(self, directory):
        raise UnclipError("a diffusers encoder is saved with its pipeline: use unclip import (or pipe.save)")


def _null_buffers(module: nn.Module, null: TextEncoding) -> None:
    module.register_buffer("null_embed", null.embed[0].detach().float(), persistent=False)       # [D]
    module.register_buffer("null_tokens", null.tokens[0].detach().float(), persistent=False)     # [L, Dt]
    module.register_buffer("null_mask", null.mask[0].detach(), persistent=False)                  # [L]


def _drop(values: torch.Tensor | None, null: torch.Tensor, drop: torch.Tensor | None, batch: int) -> torch.Tensor:
    """``values`` [B, ...] with the rows where ``drop`` [B] is True replaced by ``null`` [...] (all rows if None)."""
    null = null.to(values.dtype if values is not None else null.dtype).expand(batch, *null.shape)
    if values is None:
        return null
    if drop is None:
        return values
    return torch.where(drop.view(-1, *([1] * (values.ndim - 1))).to(values.device), null, values)


# --- the prior ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdaptedPriorConfig:
    embed_dim: int
    diffusion: DiffusionConfig
    clip_range: float | None = None   # the scheduler's clip_sample_range for x0 (None: no clipping)


class KarloPrior(nn.Module):
    """diffusers ``PriorTransformer`` as ``net(x_t, t, text_embed, text_tokens, text_mask, text_drop)`` → x0 [B, D].

    x_t and x0 live in Karlo's normalised space; ``post_process`` maps to CLIP's (x · clip_std + clip_mean)."""

    def __init__(self, prior: nn.Module, config: AdaptedPriorConfig, null: TextEncoding):
        super().__init__()
        self.prior, self.config = prior, config
        _null_buffers(self, null)

    def forward(self, x_t, t, *, text_embed=None, text_tokens=None, text_mask=None, text_drop=None):
        batch = x_t.shape[0]
        embed = _drop(text_embed, self.null_embed, text_drop, batch)
        tokens = _drop(text_tokens, self.null_tokens, text_drop, batch)
        mask = _drop(text_mask, self.null_mask, text_drop, batch)
        return self.prior(x_t, timestep=t, proj_embedding=embed.to(x_t.dtype), encoder_hidden_states=tokens,
                          attention_mask=mask).predicted_image_embedding

    def post_process(self, x: torch.Tensor) -> torch.Tensor:
        return self.prior.post_process_latents(x)


class KarloPriorComponent:
    """The pipeline's prior interface (``unclip.pipelines.prior_adapter.PriorComponent``) over ``KarloPrior``."""

    def __init__(self, model: KarloPrior, info: dict[str, Any] | None = None):
        self.model = model.eval()
        self.info = dict(info or {"role": "prior", "kind": "diffusers"})
        self.diffusion = GaussianDiffusion(model.config.diffusion)

    @property
    def embed_dim(self) -> int:
        return self.model.config.embed_dim

    num_candidates = 1  # diffusers samples one embedding per image

    def noise(self, batch: int, *, generator, device) -> torch.Tensor:
        return torch.randn(batch, self.embed_dim, generator=generator, device=device)

    @torch.no_grad()
    def sample(self, text, negative=None, *, noise: torch.Tensor, steps: int, sampler: str, guidance_scale: float,
               eta: float = 0.0, generator=None, callback: Callable | None = None,
               spacing: str = "trailing") -> torch.Tensor:
        """CLIP image embeddings [B, D]; the unconditional branch is the negative prompt, else the empty caption."""
        device, batch = noise.device, noise.shape[0]
        cond = {"text_embed": text.embed.to(device).float(), "text_tokens": text.tokens.to(device).float(),
                "text_mask": text.mask.to(device), "text_drop": torch.zeros(batch, dtype=torch.bool, device=device)}
        if negative is None:
            uncond = {"text_drop": torch.ones(batch, dtype=torch.bool, device=device)}
        else:
            uncond = {"text_embed": negative.embed.to(device).float(), "text_tokens": negative.tokens.to(device).float(),
                      "text_mask": negative.mask.to(device)}
        guided = classifier_free_guidance(self.model, guidance_scale, uncond)
        clip, prediction = self.model.config.clip_range, self.diffusion.config.prediction
        model_fn, clip_denoised = guided, False
        if clip is not None and prediction == "x0":  # x0 prediction: clipping the output is clipping x0

            def model_fn(x_t, t, **kwargs):
                return guided(x_t, t, **kwargs).clamp(-clip, clip)
        elif clip is not None:
            if clip != 1.0:
                raise UnclipError(f"a prior predicting {prediction} with clip_sample_range {clip} is not supported")
            clip_denoised = True
        x0 = sample(sampler, model_fn, noise.float(), self.diffusion, steps=steps, spacing=spacing, eta=eta,
                    generator=generator, callback=callback, model_kwargs=cond, clip_denoised=clip_denoised)
        return self.model.post_process(x0)


# --- the decoder and the super-resolution UNets ----------------------------------------------
@dataclass(frozen=True)
class AdaptedUNetConfig:
    """The fields of ``unclip.models.unet.UNetConfig`` that the pipeline reads, for an adapted network."""

    image_size: int
    in_channels: int = 3
    out_channels: int = 3
    image_embed_dim: int = 0
    text_token_dim: int = 0
    text_embed_dim: int = 0          # the pooled embedding is derived from the tokens (module docstring)
    low_res_channels: int = 0
    noise_level_cond: bool = False


class KarloDecoder(nn.Module):
    """``UnCLIPTextProjModel`` + ``UNet2DConditionModel`` as ``net(x_t, t, image_embed, drop_image, text_tokens,
    text_mask, drop_text)`` → [eps; variance values] [B, 2C, H, W]."""

    def __init__(self, text_proj: nn.Module, unet: nn.Module, text_projection: nn.Module, null: TextEncoding):
        super().__init__()
        self.text_proj, self.unet, self.text_projection = text_proj, unet, text_projection
        _null_buffers(self, null)
        cfg = unet.config
        self.config = AdaptedUNetConfig(image_size=int(cfg.sample_size), in_channels=int(cfg.in_channels),
                                        out_channels=int(cfg.out_channels),
                                        image_embed_dim=int(text_proj.config.clip_embeddings_dim),
                                        text_token_dim=int(null.tokens.shape[-1]))

    @property
    def null_image_embed(self) -> torch.Tensor:
        return self.text_proj.learned_classifier_free_guidance_embeddings

    def forward(self, x_t, t, *, image_embed=None, drop_image=None, text_tokens=None, text_mask=None, drop_text=None):
        batch = x_t.shape[0]
        tokens = _drop(text_tokens, self.null_tokens, drop_text, batch).to(x_t.dtype)   # [B, L, Dt]
        mask = _drop(text_mask, self.null_mask, drop_text, batch)                      # [B, L]
        eos = mask.long().sum(1) - 1                                                   # CLIP pools the EOS state
        prompt_embed = self.text_projection(tokens[torch.arange(batch, device=tokens.device), eos])
        image_embed = _drop(image_embed, self.null_image_embed.detach(), drop_image, batch).to(x_t.dtype)
        hidden, time_embed = self.text_proj(image_embeddings=image_embed, prompt_embeds=prompt_embed,
                                            text_encoder_hidden_states=tokens, do_classifier_free_guidance=False)
        mask = F.pad(mask, (self.text_proj.clip_extra_context_tokens, 0), value=True)
        return self.unet(x_t, t, encoder_hidden_states=hidden, class_labels=time_embed, attention_mask=mask).sample


class KarloSuperRes(nn.Module):
    """``super_res_first`` / ``super_res_last`` as ``net(x_t, t, low_res)`` → eps [B, 3, H, W].

    The low-res image is upscaled bicubically (antialiased) and concatenated, as in diffusers. ``super_res_last``
    runs at t = 0, the last step of the UnCLIPScheduler grid (unclip's ``"linspace"`` spacing)."""

    def __init__(self, first: nn.Module, last: nn.Module):
        super().__init__()
        self.first, self.last = first, last
        cfg = first.config
        self.config = AdaptedUNetConfig(image_size=int(cfg.sample_size), in_channels=int(cfg.in_channels) // 2,
                                        out_channels=int(cfg.out_channels), low_res_channels=int(cfg.in_channels) // 2)

    def forward(self, x_t, t, *, low_res):
        upscaled = F.interpolate(low_res.to(x_t.dtype), size=x_t.shape[-2:], mode="bicubic", align_corners=False,
                                 antialias=True)
        unet = self.last if int(t.max()) == 0 else self.first
        return unet(torch.cat([x_t, upscaled], dim=1), t).sample


# --- loading and saving ---------------------------------------------------------------------------
def _from_pretrained(cls, path: Path):
    from unclip.encoders.hf import quiet_loading

    if not path.is_dir():
        raise CheckpointError(f"{path} is missing; the diffusers folder is incomplete")
    kwargs = {} if cls.__name__ == "CLIPTokenizer" else {"use_safetensors": True}  # no pickles
    try:
        with quiet_loading():
            return cls.from_pretrained(path, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load {path} ({first[:200]}); weights must be .safetensors") from None


def _pixel_stats(processor: Path):
    """(mean, std) of the CLIP image processor folder ``processor``, else OpenAI CLIP's."""
    try:
        pre = json.loads((processor / "preprocessor_config.json").read_text(encoding="utf-8"))
        return tuple(pre["image_mean"]), tuple(pre["image_std"])
    except (OSError, KeyError, json.JSONDecodeError, UnicodeDecodeError):
        return OPENAI_MEAN, OPENAI_STD


def merge_defaults(base: dict[str, dict], overrides: dict | None) -> dict[str, dict]:
    """Per stage, an adapter's diffusers defaults updated by a saved pipeline's (or a caller's) ``overrides``."""
    return {stage: dict(values, **(overrides or {}).get(stage, {})) for stage, values in base.items()}


def load(folder: str | Path, *, device="cpu", defaults: dict | None = None, name: str | None = None):
    """A ``DiffusersUnCLIPPipeline`` running the Karlo diffusers folder ``folder``."""
    require_diffusers()
    from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

    folder = Path(folder)
    class_name, index = read_model_index(folder)
    image_dir = folder / "image_encoder"
    image_encoder = _from_pretrained(CLIPVisionModelWithProjection, image_dir) if image_dir.is_dir() else None
    mean, std = _pixel_stats(folder / "feature_extractor")
    encoder = DiffusersClipEncoder(_from_pretrained(CLIPTokenizer, folder / "tokenizer"),
                                   _from_pretrained(CLIPTextModelWithProjection, folder / "text_encoder"),
                                   image_encoder, pixel_mean=mean, pixel_std=std).eval()
    null = encoder.null_text()
    prior = None
    if "prior" in index:
        diffusion, clip = _scheduler(folder, "prior_scheduler").astuple()
        net = _from_pretrained(PriorTransformer, folder / "prior")
        config = AdaptedPriorConfig(embed_dim=int(net.config.embedding_dim), diffusion=diffusion, clip_range=clip)
        prior = KarloPriorComponent(KarloPrior(net, config, null))
    diffusion, clip = _scheduler(folder, "decoder_scheduler").astuple()
    if clip != 1.0:
        raise UnclipError(f"{folder}: the decoder's scheduler must clip x0 to [-1, 1] (clip_sample), as unclip's "
                          f"pixel decoders do; got {clip}")
    decoder_net = KarloDecoder(_from_pretrained(UnCLIPTextProjModel, folder / "text_proj"),
                               _from_pretrained(UNet2DConditionModel, folder / "decoder"),
                               encoder.text_encoder.text_projection, null)
    decoder = Component(decoder_net, {"role": "decoder", "diffusion": to_dict(diffusion)})
    diffusion, clip = _scheduler(folder, "super_res_scheduler").astuple()
    if clip != 1.0:
        raise UnclipError(f"{folder}: the super-resolution scheduler must clip x0 to [-1, 1]; got {clip}")
    up_net = KarloSuperRes(_from_pretrained(UNet2DModel, folder / "super_res_first"),
                           _from_pretrained(UNet2DModel, folder / "super_res_last"))
    upsampler = Component(up_net, {"role": "upsampler", "diffusion": to_dict(diffusion),
                                   "low_res_size": decoder.image_size, "noise_level": 0})
    merged = merge_defaults(DEFAULTS, defaults)
    pipe = DiffusersUnCLIPPipeline(encoder, decoder, prior=prior, upsampler=upsampler, defaults=merged,
                                   name=name or folder.name)
    pipe.source, pipe.source_class = folder, class_name
    return pipe.to(device)


class DiffusersUnCLIPPipeline(UnCLIPPipeline):
    """An ``UnCLIPPipeline`` whose components are adapted diffusers modules (``kind`` stays ``"unclip"``, so
    every caller treats it alike); it saves as a ``"diffusers-unclip"`` directory: ``pipeline.json`` +
    ``diffusers/`` (the folder's ``model_index.json`` and component sub-folders, safetensors weights)."""

    source: Path
    source_class: str
    source_prior: Path | None = None   # a separate prior folder (Kandinsky 2.2's decoder + prior layout)

    def describe(self) -> dict[str, Any]:
        info = {"kind": KIND, "version": 1, "name": self.name, "image_size": self.image_size,
                "source": self.source_class, "defaults": self.defaults}
        return dict(info, prior=PRIOR_DIR) if self.source_prior is not None else info

    def save(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        def write(tmp: Path) -> None:
            _copy_diffusers(self.source, tmp / "diffusers")
            if self.source_prior is not None:
                _copy_diffusers(self.source_prior, tmp / PRIOR_DIR, expect="KandinskyV22PriorPipeline")
            atomic_write_text(tmp / "pipeline.json", json.dumps(self.describe(), indent=2, sort_keys=True) + "\n")

        return write_dir(directory, write, overwrite=overwrite)

    @classmethod
    def load(cls, directory: str | Path, *, device="cpu") -> "DiffusersUnCLIPPipeline":
        from unclip.pipelines.manifest import read_pipeline_json

        directory = Path(directory)
        info = read_pipeline_json(directory)
        unknown = sorted(set(info) - {"kind", "version", "name", "image_size", "source", "defaults", "prior"})
        if info["kind"] != KIND or unknown:
            raise CheckpointError(f"{directory / 'pipeline.json'}: not a {KIND} pipeline"
                                  + (f" (unknown keys: {', '.join(unknown)})" if unknown else ""))
        prior = directory / info["prior"] if info.get("prior") else None
        return load_diffusers(directory / "diffusers", prior=prior, device=device, defaults=info.get("defaults"),
                              name=info.get("name") or directory.name)


_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".msgpack", ".h5", ".onnx")


def _copy_diffusers(source: Path, target: Path, expect: str | None = None) -> None:
    """The component folders ``model_index.json`` names (+ image_encoder/, feature_extractor/), without pickles."""
    _, index = read_model_index(source, expect=expect)
    names = [k for k in index if not k.startswith("_")] + ["image_encoder", "feature_extractor"]
    target.mkdir(parents=True)
    shutil.copy2(source / INDEX_FILE, target / INDEX_FILE)
    for name in dict.fromkeys(names):
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name,
                            ignore=lambda _, files: [f for f in files if f.endswith(_WEIGHT_SUFFIXES)])
