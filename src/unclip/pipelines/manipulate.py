"""Image manipulations with the unCLIP decoder (Ramesh et al. 2022, §3).

* **Variations** (§3.1, Fig. 3): encode an image to z_i and decode it with different seeds; or start
  from the image's DDIM-inverted latent x_T and sample with DDIM at eta in [0, 1] (eta = 0 reconstructs
  the image, larger eta trades faithfulness for diversity).
* **Interpolations** (§3.2, Fig. 4): z_θ = slerp(z_a, z_b, θ) decoded with the decoder noise held fixed
  across frames, or with slerp of the two images' DDIM-inverted latents.
* **Text diffs** (§3.3, Fig. 5): z_d = normalise(z_t − z_t0) for a current caption t0 and a target t;
  frames decode slerp(z_i, z_d, θ) for θ from 0 to ``max_theta``, from the image's DDIM-inverted latent.

All functions take a loaded ``UnCLIPPipeline`` and return a ``PipelineOutput``. They compose public
calls: the encoder's ``encode_image`` / ``encode_text`` for z_i, and the decoder half of the pipeline
(``pipe.decoder_pipeline``: its ``noise`` and ``generate``) for the images; the prior is not used.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from PIL import Image

from unclip.diffusion.samplers import ddim_invert
from unclip.errors import UnclipError
from unclip.pipelines.output import PipelineOutput
from unclip.pipelines.images import check_finite, image_to_tensor, load_image
from unclip.pipelines.sampling import decoder_kwargs
from unclip.precision import autocast
from unclip.pipelines.seeds import generators, make_seeds

__all__ = ["slerp", "variations", "interpolate", "text_diff", "text_diff_embeddings", "invert",
           "decode_embeddings"]


def slerp(a: torch.Tensor, b: torch.Tensor, theta: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985) between a [.., D] and b [.., D]; θ=0 → a, θ=1 → b.

    The direction moves along the great circle; the norm is interpolated linearly (so unit vectors stay
    unit). Nearly parallel inputs fall back to linear interpolation.
    """
    theta = torch.as_tensor(theta, dtype=a.dtype, device=a.device)
    a_n, b_n = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    cos = (a_n * b_n).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    omega = torch.acos(cos)  # [.., 1]
    sin = torch.sin(omega)
    near = sin.abs() < 1e-4
    w_a = torch.where(near, 1 - theta, torch.sin((1 - theta) * omega) / sin)
    w_b = torch.where(near, theta, torch.sin(theta * omega) / sin)
    direction = F.normalize(w_a * a_n + w_b * b_n, dim=-1)
    norm = (1 - theta) * a.norm(dim=-1, keepdim=True) + theta * b.norm(dim=-1, keepdim=True)
    return direction * norm


def _as_tensor(pipe, image) -> torch.Tensor:
    """PIL image, path or tensor [3, H, W] in [-1, 1] → [1, 3, S, S] at the decoder's size on the device."""
    size = pipe.decoder_size
    if isinstance(image, torch.Tensor):
        tensor = image if image.ndim == 4 else image[None]
        if tensor.shape[-1] != size or tensor.shape[-2] != size:
            tensor = F.interpolate(tensor.float(), size=(size, size), mode="bicubic", antialias=True,
                                   align_corners=False).clamp(-1, 1)
    elif isinstance(image, Image.Image):
        tensor = image_to_tensor(image, size)[None]
    else:
        tensor = load_image(image, size)[None]
    return tensor.to(pipe.device)


@torch.no_grad()
def invert(pipe, images: torch.Tensor, image_embed: torch.Tensor, steps: int, precision: str = "fp32",
           spacing: str = "trailing", text=None) -> torch.Tensor:
    """DDIM-invert images [B, 3, S, S] under the decoder conditioned on z_i (unguided) → x_T, shaped like the
    decoder's samples (a latent decoder inverts the autoencoder's latents of the images).

    ``steps`` and ``spacing`` must be the decoder's sampling grid, so decoding retraces the inversion; ``text``
    (a TextEncoding of B captions) also conditions a decoder that reads caption tokens (else the null caption)."""
    cond, _ = decoder_kwargs(pipe.decoder.model, images.shape[0], images.device,
                             image_embed=image_embed if pipe.decoder.model.config.image_embed_dim else None,
                             text=text)
    x0 = pipe.decoder.from_pixels(images)
    with autocast(precision, images.device):
        return ddim_invert(pipe.decoder.model, x0, pipe.decoder.diffusion, steps=steps, spacing=spacing,
                           model_kwargs=cond)


def _invert(pipe, images: torch.Tensor, image_embed: torch.Tensor, settings: dict[str, dict]) -> torch.Tensor:
    s = settings["decoder"]
    return invert(pipe, images, image_embed, s["steps"], s["precision"], s["spacing"])


def _check_manipulable(pipe) -> None:
    if not pipe.decoder.model.config.image_embed_dim:
        raise UnclipError("this decoder is text-only (GLIDE baseline); image manipulations need an unCLIP decoder")


def _settings(pipe, kwargs: dict[str, Any]) -> dict[str, dict]:
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("prior_")}  # the prior is not used here
    settings = pipe.resolve_settings(**kwargs)
    settings.pop("prior", None)
    return settings


def _frames_check(num_frames: int) -> None:
    if not 2 <= num_frames <= 64:
        raise UnclipError(f"num_frames must be in [2, 64], got {num_frames}")


def decode_embeddings(pipe, image_embed: torch.Tensor, seeds: list[int], settings: dict[str, dict], callback,
                      progress: bool, decoder_noise: torch.Tensor | None = None, text=None) -> torch.Tensor:
    """Images decoded from z_i [N, D] by the decoder pipeline, image i's noise drawn from seed i; ``text`` (a
    TextEncoding of N captions) for a decoder that reads caption tokens, else the null caption."""

    half = pipe.decoder_pipeline
    gens = generators(seeds, pipe.device)
    return half.generate(image_embed, noise=half.noise(gens, decoder_noise=decoder_noise), settings=settings,
                         generators=gens, callback=callback, progress=progress, text=text)


def _finish(pipe, images, seeds, labels, settings, output_type) -> PipelineOutput:
    images = check_finite(images, pipe.name)
    return PipelineOutput(images=pipe.format(images, output_type), seeds=seeds, prompts=labels, settings=settings)


@torch.no_grad()
def variations(pipe, image, *, num_images: int = 4, seed=None, callback: Callable | None = None,
               from_inversion: bool = False, eta: float = 0.8, progress: bool = True, output_type: str = "pil",
               **stage_settings) -> PipelineOutput:
    """Variations of ``image`` (§3.1). ``from_inversion``: start at its DDIM latent, sample DDIM with ``eta``."""

    _check_manipulable(pipe)
    if not 1 <= num_images <= 64:
        raise UnclipError(f"num_images must be in [1, 64], got {num_images}")
    if from_inversion:
        stage_settings = dict(stage_settings, decoder_sampler="ddim", eta=eta)
    settings = _settings(pipe, stage_settings)
    x = _as_tensor(pipe, image)
    z = pipe.encoder.encode_image(x).float()  # [1, D]
    seeds = make_seeds(seed, num_images)
    fixed = None
    if from_inversion:
        fixed = _invert(pipe, x, z, settings).repeat(num_images, 1, 1, 1)
    images = decode_embeddings(pipe, z.repeat(num_images, 1), seeds, settings, callback, progress, fixed)
    info = {"operation": "variations", "from_inversion": from_inversion, "stages": settings}
    return _finish(pipe, images, seeds, [f"variation {i + 1}" for i in range(num_images)], info, output_type)


@torch.no_grad()
def interpolate(pipe, image_a, image_b, *, num_frames: int = 8, seed=None, callback: Callable | None = None,
                noise: str = "fixed", progress: bool = True, output_type: str = "pil",
                **stage_settings) -> PipelineOutput:
    """Frames decoding slerp(z_a, z_b, θ), θ = 0..1 (§3.2). ``noise``: "fixed" (one seed) or "inversion"."""

    _check_manipulable(pipe)
    _frames_check(num_frames)
    if noise not in ("fixed", "inversion"):
        raise UnclipError(f"noise must be 'fixed' or 'inversion', got {noise!r}")
    settings = _settings(pipe, stage_settings)
    xs = torch.cat([_as_tensor(pipe, image_a), _as_tensor(pipe, image_b)])
    z = pipe.encoder.encode_image(xs).float()  # [2, D]
    thetas = torch.linspace(0, 1, num_frames, device=z.device)[:, None]  # [N, 1]
    z_frames = slerp(z[0:1].expand(num_frames, -1), z[1:2].expand(num_frames, -1), thetas)
    seeds = make_seeds(seed, 1) * num_frames  # the same noise in every frame
    if noise == "inversion":
        latents = _invert(pipe, xs, z, settings)  # [2, 3, S, S]
        flat = latents.flatten(1)
        fixed = slerp(flat[0:1].expand(num_frames, -1), flat[1:2].expand(num_frames, -1), thetas)
        fixed = fixed.reshape(num_frames, *latents.shape[1:])
    else:
        fixed = None
    images = decode_embeddings(pipe, z_frames, seeds, settings, callback, progress, fixed)
    info = {"operation": "interpolate", "noise": noise, "thetas": thetas.flatten().tolist(), "stages": settings}
    labels = [f"frame {i + 1} (theta={t:.2f})" for i, t in enumerate(thetas.flatten().tolist())]
    return _finish(pipe, images, seeds, labels, info, output_type)


def text_diff_embeddings(pipe, image_embed: torch.Tensor, from_caption: str, to_caption: str,
                         thetas: torch.Tensor) -> torch.Tensor:
    """slerp(z_i, normalise(z_t − z_t0), θ) for each θ (§3.3): image_embed [1, D], thetas [N] → [N, D]."""
    text = pipe.encoder.encode_text([from_caption, to_caption]).embed.float()  # [2, D]
    diff = text[1:2] - text[0:1]
    if diff.norm() < 1e-6:
        raise UnclipError("--from and --to captions give the same text embedding; pick captions that differ")
    z_d = F.normalize(diff, dim=-1) * image_embed.norm(dim=-1, keepdim=True)  # unit direction at z_i's scale
    n = thetas.shape[0]
    return slerp(image_embed.expand(n, -1), z_d.expand(n, -1), thetas[:, None])


@torch.no_grad()
def text_diff(pipe, image, from_caption: str, to_caption: str, *, num_frames: int = 6, max_theta: float = 0.5,
              seed=None, callback: Callable | None = None, noise: str = "inversion", progress: bool = True,
              output_type: str = "pil", **stage_settings) -> PipelineOutput:
    """Text-diff edit of ``image`` from ``from_caption`` towards ``to_caption`` (§3.3); θ = 0..max_theta."""
    from unclip.encoders.base import check_captions

    _check_manipulable(pipe)
    _frames_check(num_frames)
    check_captions([from_caption, to_caption])
    if not 0 < max_theta <= 1:
        raise UnclipError(f"max_theta must be in (0, 1], got {max_theta}")
    if noise not in ("fixed", "inversion"):
        raise UnclipError(f"noise must be 'fixed' or 'inversion', got {noise!r}")
    settings = _settings(pipe, stage_settings)
    x = _as_tensor(pipe, image)
    z = pipe.encoder.encode_image(x).float()
    thetas = torch.linspace(0, max_theta, num_frames, device=z.device)
    z_frames = text_diff_embeddings(pipe, z, from_caption, to_caption, thetas)
    seeds = make_seeds(seed, 1) * num_frames
    fixed = _invert(pipe, x, z, settings).repeat(num_frames, 1, 1, 1) if noise == "inversion" else None
    images = decode_embeddings(pipe, z_frames, seeds, settings, callback, progress, fixed)
    info = {"operation": "text_diff", "from": from_caption, "to": to_caption, "noise": noise,
            "thetas": thetas.tolist(), "stages": settings}
    labels = [f"theta={t:.2f}" for t in thetas.tolist()]
    return _finish(pipe, images, seeds, labels, info, output_type)
