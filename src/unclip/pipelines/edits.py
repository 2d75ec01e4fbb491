"""Edits users expect: image-to-image and inpainting, for unCLIP and CLIP-VQDiffusion pipelines.

* **Image-to-image** (SDEdit, Meng et al. 2022, §3): the input's decoder-space sample x_0 (the image, or
  the autoencoder's latents for a latent decoder, ``Component.from_pixels``) is noised to the timestep
  ``strength`` of the way along the decoder's sampling grid (``unclip.diffusion.samplers.sdedit_start``),
  and the sampler runs the rest of the grid under the new conditioning: a caption (z_i from the prior,
  or ``image_embed_source`` "text"/"none"/"image", plus the caption tokens) or, without a caption, the
  image's own CLIP embedding. An upsampler does the same at its resolution, starting from the noised
  high-res input. ``strength`` = 0 returns the input (for a latent decoder without an upsampler, its
  autoencoder's round trip); ``strength`` = 1 is plain generation with the same seed.
* **Inpainting** (RePaint, Lugmayr et al. 2022): ``unclip.diffusion.samplers.repaint_sample`` holds the
  known region to the forward-noised original at every step, with ``resample`` jumps per step. It runs
  in the decoder's space: pixels, or for a latent decoder the latents, with the mask max-pooled onto
  the latent grid (a latent cell is regenerated when any of its pixels is). An upsampler keeps the
  known high-res pixels the same way. Last, the original pixels outside the mask are pasted back at the
  output size (``paste_back``): a no-op for pixel decoders, whose last RePaint step already returns the
  known pixels, but it undoes a latent decoder's autoencoder round trip and its coarser mask.
* **Fixed-token inpainting** for CLIP-VQDiffusion (VQ-Diffusion's own): the VQ codes of the input
  outside the mask (max-pooled onto the token grid) are fixed at every step of the discrete sampler;
  the original pixels outside the mask are pasted back as above.

A mask is a PNG or PIL image of the input's size (white = regenerate, black = keep; grey above 50% counts
as white; transparency is read as white, like every image the project reads), a tensor [H, W] in [0, 1],
or a box ``(x0, y0, x1, y1)`` in pixels of the input, or in fractions of its width and height when every
value is at most 1. It is centre-cropped and resized like the image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from unclip.diffusion.samplers import sdedit_start
from unclip.errors import UnclipError
from unclip.pipelines.output import PipelineOutput
from unclip.pipelines.decoder import settings_stage
from unclip.pipelines.images import check_finite, format_images, image_to_tensor
from unclip.pipelines.seeds import make_seeds

__all__ = ["img2img", "inpaint", "inpaint_clipvq", "box_mask", "parse_box", "mask_tensor", "StageEdit",
           "DEFAULT_STRENGTH", "DEFAULT_RESAMPLE", "MAX_RESAMPLE"]

DEFAULT_STRENGTH = 0.6   # img2img: the fraction of the grid that is run
DEFAULT_RESAMPLE = 3     # RePaint's U: passes per step (each one more decoder call per step)
MAX_RESAMPLE = 20

ImageLike = Image.Image | str | Path | torch.Tensor
MaskLike = Image.Image | str | Path | torch.Tensor | Sequence[float]


class StageEdit:
    """Extra sampler arguments per stage (``sample_decoder`` / ``sample_upsampler``), sliced to a group.

    ``DecoderPipeline.generate`` calls ``stage_kwargs(stage, group)`` for each cascade stage (``decoder``,
    ``upsampler``, ``upsampler_2``, ...) and group of images; tensors are indexed by the group's image
    positions. ``stochastic`` makes it sample each image alone with its own generator (RePaint draws noise
    at every step whatever the sampler)."""

    def __init__(self, per_stage: dict[str, dict], *, stochastic: bool = False):
        self.per_stage, self.stochastic = per_stage, stochastic

    def stage_kwargs(self, stage: str, group: list[int]) -> dict:
        return {k: v[group] if isinstance(v, torch.Tensor) else v for k, v in self.per_stage.get(stage, {}).items()}


# --- images and masks ------------------------------------------------------------------
def _open(image: ImageLike) -> Image.Image | torch.Tensor:
    if isinstance(image, (Image.Image, torch.Tensor)):
        return image
    from unclip.imagefile import open_image

    return open_image(image)


def _size_of(image: Image.Image | torch.Tensor) -> tuple[int, int]:
    return image.size if isinstance(image, Image.Image) else (int(image.shape[-1]), int(image.shape[-2]))


def _image_at(image: Image.Image | torch.Tensor, size: int, device) -> torch.Tensor:
    """[1, 3, S, S] in [-1, 1]: a PIL image centre-cropped and resized (Lanczos), a tensor resized (bicubic)."""
    if isinstance(image, Image.Image):
        return image_to_tensor(image, size)[None].to(device)
    tensor = (image if image.ndim == 4 else image[None]).float()
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="bicubic", antialias=True,
                               align_corners=False).clamp(-1, 1)
    return tensor.to(device)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` → four numbers (pixels, or fractions when all are at most 1)."""
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise UnclipError(f"a box is x0,y0,x1,y1 (pixels, or fractions of the size such as 0.25,0.25,0.75,0.75), "
                          f"got {text!r}")
    return values  # type: ignore[return-value]


def box_mask(box: Sequence[float], width: int, height: int) -> Image.Image:
    """A white-on-black mask of ``width`` x ``height`` with the box (x0, y0, x1, y1) white; in fractions of the
    size when every value is at most 1, else in pixels (x1, y1 exclusive)."""
    if len(box) != 4:
        raise UnclipError(f"a box has four numbers (x0, y0, x1, y1), got {len(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if all(0 <= v <= 1 for v in (x0, y0, x1, y1)):
        x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise UnclipError(f"box {tuple(box)} is empty or outside the {width}x{height} image; give x0 < x1 <= width "
                          "and y0 < y1 <= height")
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle((round(x0), round(y0), round(x1) - 1, round(y1) - 1), fill=255)
    return mask


def mask_tensor(mask: MaskLike, image: Image.Image | torch.Tensor, size: int, device) -> torch.Tensor:
    """The mask as [1, 1, S, S] floats in {0, 1} (1 = regenerate), cropped and resized like ``image``."""
    width, height = _size_of(image)
    if isinstance(mask, (tuple, list)):
        mask = box_mask(mask, width, height)
    if isinstance(mask, torch.Tensor):
        values = mask.float().reshape(1, 1, *mask.shape[-2:])
        values = F.interpolate(values, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    else:
        mask = _open(mask)
        if mask.size != (width, height):
            raise UnclipError(f"the mask is {mask.size[0]}x{mask.size[1]} pixels but the image is {width}x{height}; "
                              "draw the mask on the image's own canvas")
        values = (image_to_tensor(mask, size).mean(0, keepdim=True)[None] + 1) / 2
    binary = (values > 0.5).float().to(device)
    if not binary.any():
        raise UnclipError("the mask is empty (all black): paint in white the region to regenerate")
    return binary


def _mask_to(mask: torch.Tensor, size: int) -> torch.Tensor:
    """A {0, 1} mask [B, 1, S, S] on another grid: max-pooled down (a cell is regenerated when any of its pixels
    is), nearest up."""
    if mask.shape[-1] == size:
        return mask
    if mask.shape[-1] > size:
        return F.adaptive_max_pool2d(mask, size)
    return F.interpolate(mask, size=(size, size), mode="nearest")


# --- unCLIP ------------------------------------------------------------------------------
def _conditioning(pipe, x: torch.Tensor, prompt: str | None, negative_prompt: str | None,
                  image_embed_source: str | None, n: int):
    """(text, negative, image_embed, source) for ``n`` images edited from x [1, 3, s, s].

    Without a prompt the decoder sees the image's own z_i and the null caption (as for variations)."""
    from unclip.encoders.base import check_captions

    unclip_decoder = bool(pipe.decoder.model.config.image_embed_dim)
    if prompt is None:
        if image_embed_source not in (None, "image"):
            raise UnclipError(f"image_embed_source={image_embed_source!r} needs a prompt; give one, or leave it out "
                              "to decode the image's own CLIP embedding")
        if not unclip_decoder:
            raise UnclipError("this decoder is text-only (GLIDE-style): give a prompt")
        return None, None, pipe.encoder.encode_image(x).float().expand(n, -1), "image"
    prompt = check_captions([prompt])[0]
    text = pipe.encoder.encode_text([prompt] * n)
    negative = pipe.encoder.encode_text([negative_prompt] * n) if negative_prompt and negative_prompt.strip() else None
    source = image_embed_source or "prior"
    if source == "image":
        if not unclip_decoder:
            raise UnclipError("image_embed_source='image' needs an unCLIP decoder; this one is text-only")
        return text, negative, pipe.encoder.encode_image(x).float().expand(n, -1), source
    pipe.check_image_embed_source(source)
    return text, negative, pipe.fixed_image_embed(source, text), source


def _prepare(pipe, image, prompt, negative_prompt, image_embed_source, num_images, seed, stage_settings,
             image_eta: float | None = None):
    """What img2img and inpaint share: settings, seeds, noise, conditioning and the input at each stage's size.

    ``image_eta``: the DDIM eta of the decoder and upsampler only (the prior keeps its own)."""

    if not 1 <= num_images <= 64:
        raise UnclipError(f"num_images must be in [1, 64], got {num_images}")
    settings = pipe.resolve_settings(**stage_settings)
    if image_eta is not None:
        if not 0 <= image_eta <= 1:
            raise UnclipError(f"eta must be in [0, 1], got {image_eta}")
        for stage in ("decoder", "upsampler"):  # "upsampler": every upsampler of the cascade
            if stage in settings and settings[stage]["sampler"] == "ddim":
                settings[stage]["eta"] = float(image_eta)
    picture = _open(image)
    x_dec = _image_at(picture, pipe.decoder_size, pipe.device)
    text, negative, image_embed, source = _conditioning(pipe, x_dec, prompt, negative_prompt, image_embed_source,
                                                        num_images)
    if source != "prior":
        settings.pop("prior", None)
    seeds = make_seeds(seed, num_images)
    noise = pipe.noise(seeds, with_prior=pipe.prior is not None)  # the draws of plain generation
    known = {"decoder": pipe.decoder.from_pixels(x_dec).expand(num_images, -1, -1, -1)}
    x_out = x_dec
    for stage, component in _components(pipe, settings).items():  # each upsampler: the input at its size
        if stage != "decoder":
            x_out = _image_at(picture, component.image_size, pipe.device)
            known[stage] = x_out.expand(num_images, -1, -1, -1)
    return dict(settings=settings, picture=picture, text=text, negative=negative, image_embed=image_embed,
                source=source, seeds=seeds, noise=noise, x_out=x_out, known=known)


def _components(pipe, settings: dict) -> dict:
    """{cascade stage: component} for the stages ``settings`` runs (``decoder``, ``upsampler``, ``upsampler_2``...)."""
    return dict(pipe.decoder_pipeline.stages_to_run(settings))


@torch.no_grad()
def img2img(pipe, image: ImageLike, prompt: str | None = None, *, strength: float = DEFAULT_STRENGTH,
            num_images: int = 1,
            seed=None, negative_prompt: str | None = None, image_embed_source: str | None = None,
            callback: Callable | None = None, progress: bool = True, output_type: str = "pil",
            **stage_settings) -> PipelineOutput:
    """SDEdit ``image`` towards ``prompt`` (or its own CLIP embedding); see the module docstring.

    ``strength`` in [0, 1]: the fraction of each stage's grid that is run (``decoder_steps`` is the whole
    grid, so round(strength · steps) steps run). ``stage_settings`` as for text→image."""
    if isinstance(strength, bool) or not 0.0 <= float(strength) <= 1.0:
        raise UnclipError(f"strength must be in [0, 1], got {strength!r}")
    job = _prepare(pipe, image, prompt, negative_prompt, image_embed_source, num_images, seed, stage_settings)
    settings, noise, per_stage = job["settings"], job["noise"], {}
    for stage, component in _components(pipe, settings).items():
        s = settings[settings_stage(stage)]
        x_start, start_step = sdedit_start(job["known"][stage], torch.cat(noise[stage]), component.diffusion,
                                           steps=s["steps"], spacing=s["spacing"], strength=float(strength))
        noise[stage] = list(x_start.split(1))
        per_stage[stage] = {"start_step": start_step}
    images = pipe.sample(noise, settings, text=job["text"], negative=job["negative"], image_embed=job["image_embed"],
                         callback=callback, progress=progress, edit=StageEdit(per_stage))
    info = {"operation": "img2img", "prompt": prompt, "strength": float(strength), "negative_prompt": negative_prompt,
            "image_embed_source": job["source"], "stages": settings,
            "start_steps": {stage: v["start_step"] for stage, v in per_stage.items()}}
    labels = [f"{prompt or 'img2img'} (strength {float(strength):g})"] * num_images
    return PipelineOutput(images=pipe.format(check_finite(images, pipe.name), output_type), seeds=job["seeds"],
                          prompts=labels, settings=info)


@torch.no_grad()
def inpaint(pipe, image: ImageLike, mask: MaskLike, prompt: str | None = None, *,
            resample: int = DEFAULT_RESAMPLE, eta: float = 1.0, num_images: int = 1, seed=None,
            negative_prompt: str | None = None, image_embed_source: str | None = None, paste_back: bool = True,
            callback: Callable | None = None, progress: bool = True, output_type: str = "pil",
            **stage_settings) -> PipelineOutput:
    """RePaint inpainting of the white part of ``mask`` under ``prompt`` (or the image's own CLIP embedding).

    ``resample``: RePaint's U (passes per step, 1 = plain replacement, no jump; cost grows with it).
    ``eta``: the DDIM eta of the reverse step (1 = RePaint's DDPM step); the ddpm sampler uses 1, dpm++2m is
    refused. ``paste_back``: put the original pixels back outside the mask (module docstring)."""
    if isinstance(resample, bool) or not isinstance(resample, int) or not 1 <= resample <= MAX_RESAMPLE:
        raise UnclipError(f"resample must be an integer in [1, {MAX_RESAMPLE}], got {resample!r}")
    job = _prepare(pipe, image, prompt, negative_prompt, image_embed_source, num_images, seed, stage_settings,
                   image_eta=eta)
    settings, out_size = job["settings"], job["x_out"].shape[-1]
    pixel_mask = mask_tensor(mask, job["picture"], out_size, pipe.device)  # [1, 1, S, S]
    per_stage = {}
    for stage in _components(pipe, settings):
        if stage in job["known"]:
            known = job["known"][stage]
            per_stage[stage] = {"known": known, "resample": resample,
                                "mask": _mask_to(pixel_mask, known.shape[-1]).expand(num_images, -1, -1, -1)}
    images = pipe.sample(job["noise"], settings, text=job["text"], negative=job["negative"],
                         image_embed=job["image_embed"], callback=callback, progress=progress,
                         edit=StageEdit(per_stage, stochastic=True))
    if paste_back:
        images = pixel_mask * images + (1 - pixel_mask) * job["x_out"]
    info = {"operation": "inpaint", "prompt": prompt, "resample": resample, "paste_back": paste_back,
            "negative_prompt": negative_prompt, "image_embed_source": job["source"], "stages": settings,
            "masked_fraction": float(pixel_mask.mean())}
    labels = [prompt or "inpaint"] * num_images
    return PipelineOutput(images=pipe.format(check_finite(images, pipe.name), output_type), seeds=job["seeds"],
                          prompts=labels, settings=info)


# --- CLIP-VQDiffusion ------------------------------------------------------------------------
@torch.no_grad()
def inpaint_clipvq(pipe, image: ImageLike, mask: MaskLike, prompt: str | None = None, *, num_images: int = 1,
                   seed=None, negative_prompt: str | None = None, paste_back: bool = True,
                   callback: Callable | None = None, progress: bool = True, output_type: str = "pil",
                   resample: int | None = None, **settings) -> PipelineOutput:
    """Fixed-token inpainting with a ``ClipVQPipeline``: the condition is the prompt's normalised CLIP text
    embedding or, without a prompt, the image's own CLIP image embedding (what the transformer trained on).
    ``resample`` is RePaint's (unCLIP) and is refused here."""
    if resample is not None:
        raise UnclipError("resample applies to unCLIP inpainting (RePaint); CLIP-VQDiffusion fixes the known tokens "
                          "instead: leave it out")
    from tqdm.auto import tqdm

    from unclip.precision import autocast

    if not 1 <= num_images <= 64:
        raise UnclipError(f"num_images must be in [1, 64], got {num_images}")
    s = pipe.resolve_settings(**settings)
    picture = _open(image)
    x = _image_at(picture, pipe.image_size, pipe.device)
    pixel_mask = mask_tensor(mask, picture, pipe.image_size, pipe.device)
    h, w = pipe.vq.config.grid_size
    codes = pipe.vq.encode(x).reshape(1, h * w).expand(num_images, -1)          # [B, N]
    regenerate = F.adaptive_max_pool2d(pixel_mask, (h, w)).reshape(1, h * w) > 0.5
    keep = (~regenerate).expand(num_images, -1)
    cond, uncond = _clipvq_condition(pipe, x, prompt, negative_prompt, num_images)
    seeds = make_seeds(seed, num_images)
    bar = tqdm(total=s["steps"], desc="clipvq", disable=not progress, leave=False)
    try:
        with autocast(s["precision"], pipe.device):
            images = pipe._sample(seeds, cond, uncond, s, callback, bar, known=codes, keep=keep)
    finally:
        bar.close()
    if paste_back:
        images = pixel_mask * images + (1 - pixel_mask) * x
    info = {"operation": "inpaint", "prompt": prompt, "paste_back": paste_back, "stages": {"decoder": s},
            "masked_fraction": float(pixel_mask.mean()), "fixed_tokens": int(keep[0].sum())}

    return PipelineOutput(images=format_images(check_finite(images, pipe.name), output_type), seeds=seeds,
                          prompts=[prompt or "inpaint"] * num_images, settings=info)


def _clipvq_condition(pipe, x: torch.Tensor, prompt: str | None, negative_prompt: str | None, n: int):
    if prompt is not None:
        from unclip.encoders.base import check_captions

        return pipe._conditions(check_captions([prompt]) * n, negative_prompt or None)
    if pipe.transformer.config.cond_dim == 0:
        return None, None
    cond = F.normalize(pipe.encoder.encode_image(x).float(), dim=-1).to(pipe.device).expand(n, -1)
    uncond = None
    if negative_prompt:
        negative = pipe.encoder.encode_text([negative_prompt]).embed.float()
        uncond = F.normalize(negative, dim=-1).to(pipe.device).expand(n, -1)
    return cond, uncond
