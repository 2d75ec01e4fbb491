"""Sampling the unCLIP decoder and upsampler: conditioning glue around ``unclip.diffusion.samplers``.

unCLIP §2.2: the decoder P(x | z_i, y) is sampled with classifier-free guidance (Ho & Salimans 2022,
eq. 6) whose unconditional branch uses the learned null CLIP embedding and null caption (or, with a
negative prompt, the negative caption's text tokens); the upsamplers are unguided and take the low-res
image. These functions build the keyword arguments the ``UNet`` expects and call a pure sampler.

Edits (``unclip.pipelines.edits``) pass ``start_step`` (SDEdit: run only the end of the grid) or
``known`` + ``mask`` (+ ``resample``) for RePaint inpainting; see ``unclip.diffusion.samplers``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from unclip.diffusion.gaussian import GaussianDiffusion
from unclip.diffusion.guidance import classifier_free_guidance
from unclip.diffusion.registry import StepCallback, get_sampler
from unclip.diffusion.samplers import inpaint, sample
from unclip.errors import UnclipError
from unclip.models.unet import UNet

__all__ = ["decoder_kwargs", "sample_decoder", "sample_upsampler", "anchor_to_low_res", "is_stochastic",
           "check_sampler", "fast_layout", "stage_callback", "PipelineCallback"]

PipelineCallback = Callable[[str, int, int, torch.Tensor], None]
"""A pipeline's user callback: ``callback(stage, step, total, x)``, step counted from 1."""


def stage_callback(stage: str, bar, user: PipelineCallback | None) -> StepCallback:
    """The sampler's ``StepCallback`` of one stage: ticks the progress ``bar`` and calls ``user``."""

    def callback(step: int, total: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        if bar is not None:
            bar.update(1)
        if user is not None:
            user(stage, step + 1, total, x)

    return callback


def check_sampler(name: str, eta: float = 0.0) -> None:
    """A one-line error unless ``name`` is a registered Gaussian sampler that accepts ``eta``."""
    get_sampler(name, "gaussian", eta=eta)


def is_stochastic(sampler: str, eta: float = 0.0) -> bool:
    """True when the sampler draws fresh noise at each step (so batching changes results)."""
    return get_sampler(sampler, "gaussian").is_stochastic(eta)


def _pad_tokens(tokens: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    extra = length - tokens.shape[1]
    if extra <= 0:
        return tokens, mask
    return F.pad(tokens, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


def decoder_kwargs(decoder: UNet, batch: int, device, *, image_embed=None, text=None,
                   negative_text=None, negative_image_embed=None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(conditional, unconditional) UNet keyword arguments for a batch of ``batch`` images.

    ``image_embed`` [B, D]; ``text`` / ``negative_text``: TextEncoding-like objects with ``embed``
    [B, D], ``tokens`` [B, L, Dt] and ``mask`` [B, L]. The unconditional branch drops the CLIP
    embedding (or, if given, uses ``negative_image_embed`` [B, D]: Kandinsky 2.2's negative image
    embedding, the prior's sample for the negative prompt) and either drops the caption or, if given,
    uses the negative caption.
    """
    cfg = decoder.config
    zeros = torch.zeros(batch, dtype=torch.bool, device=device)
    ones = torch.ones(batch, dtype=torch.bool, device=device)
    cond: dict[str, Any] = {}
    uncond: dict[str, Any] = {}
    if cfg.image_embed_dim:
        if image_embed is None:
            raise UnclipError("this decoder needs a CLIP image embedding (from the prior or an image)")
        cond.update(image_embed=image_embed.to(device), drop_image=zeros)
        if negative_image_embed is None:
            uncond.update(drop_image=ones)
        else:
            uncond.update(image_embed=negative_image_embed.to(device), drop_image=zeros)
    uses_text = bool(cfg.text_token_dim or cfg.text_embed_dim)
    if uses_text:
        if text is None:
            if cfg.text_embed_dim:
                raise UnclipError("this decoder is conditioned on text only: pass a prompt")
            cond.update(drop_text=ones)  # no caption: the null caption in both branches
            uncond.update(drop_text=ones)
            return cond, uncond
        tokens, mask = text.tokens.to(device), text.mask.to(device)
        if negative_text is not None:
            length = max(tokens.shape[1], negative_text.tokens.shape[1])
            tokens, mask = _pad_tokens(tokens, mask, length)
            neg_tokens, neg_mask = _pad_tokens(negative_text.tokens.to(device), negative_text.mask.to(device), length)
        cond.update(drop_text=zeros)
        if cfg.text_token_dim:
            cond.update(text_tokens=tokens, text_mask=mask)
        if cfg.text_embed_dim:
            cond.update(text_embed=text.embed.to(device))
        if negative_text is None:
            uncond.update(drop_text=ones)
        else:
            uncond.update(drop_text=zeros)
            if cfg.text_token_dim:
                uncond.update(text_tokens=neg_tokens, text_mask=neg_mask)
            if cfg.text_embed_dim:
                uncond.update(text_embed=negative_text.embed.to(device))
    return cond, uncond


def sample_decoder(decoder: UNet, diffusion: GaussianDiffusion, x_T: torch.Tensor, *, image_embed=None,
                   text=None, negative_text=None, negative_image_embed=None, guidance_scale: float = 3.0,
                   sampler: str = "ddim", steps: int = 25, eta: float = 0.0, generator: torch.Generator | None = None,
                   callback: StepCallback | None = None, channels_last: bool = False,
                   spacing: str = "trailing", clip_denoised: bool = True, start_step: int = 0,
                   known: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                   resample: int = 1) -> torch.Tensor:
    """x_T [B, C, H, W] → samples [B, C, H, W], guided by ``guidance_scale`` (1 = unguided).

    ``spacing`` picks the timestep grid (``unclip.diffusion.schedule.sampling_timesteps``).
    ``negative_image_embed`` [B, D]: the unconditional branch's image embedding (``decoder_kwargs``).
    ``clip_denoised``: pixel decoders clip x0 (and the result) to [-1, 1]; a latent decoder passes False.

    ``channels_last`` runs the UNet on NHWC activations (same result, another speed; see ``fast_layout``).
    Edits: ``start_step`` (SDEdit), or ``known`` [B, C, H, W] + ``mask`` [B, 1, H, W] (1 = regenerate) +
    ``resample`` for RePaint (module docstring).
    """
    check_sampler(sampler, eta)
    x_T = _layout(x_T, channels_last)
    cond, uncond = decoder_kwargs(decoder, x_T.shape[0], x_T.device, image_embed=image_embed, text=text,
                                  negative_text=negative_text, negative_image_embed=negative_image_embed)
    model_fn = classifier_free_guidance(decoder, guidance_scale, uncond,
                                        learn_variance=diffusion.config.learn_variance) if uncond else decoder
    out = _sample(sampler, model_fn, x_T, diffusion, (start_step, known, mask, resample), channels_last,
                  steps=steps, spacing=spacing, eta=eta, generator=generator, callback=callback, model_kwargs=cond,
                  clip_denoised=clip_denoised)
    return (out.clamp(-1, 1) if clip_denoised else out).contiguous()


def sample_upsampler(upsampler: UNet, diffusion: GaussianDiffusion, low_res: torch.Tensor, x_T: torch.Tensor, *,
                     noise_level: int = 0, sampler: str = "ddim", steps: int = 25, eta: float = 0.0,
                     generator: torch.Generator | None = None, callback: StepCallback | None = None,
                     channels_last: bool = False, spacing: str = "trailing", start_step: int = 0,
                     known: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                     resample: int = 1, anchor_low_res: bool = False) -> torch.Tensor:
    """Upsample ``low_res`` [B, 3, h, w] given noise x_T [B, 3, H, W] → [B, 3, H, W] in [-1, 1] (unguided).

    Edits as ``sample_decoder``'s, at the high resolution. ``anchor_low_res`` replaces the output's low
    frequencies by the input's (``anchor_to_low_res``).
    """
    check_sampler(sampler, eta)
    x_T = _layout(x_T, channels_last)
    kwargs: dict[str, Any] = {"low_res": _layout(low_res.to(x_T.device, x_T.dtype), channels_last)}
    if upsampler.config.noise_level_cond:
        kwargs["noise_level"] = torch.full((x_T.shape[0],), int(noise_level), device=x_T.device)
    out = _sample(sampler, upsampler, x_T, diffusion, (start_step, known, mask, resample), channels_last,
                  steps=steps, spacing=spacing, eta=eta, generator=generator, callback=callback,
                  model_kwargs=kwargs, clip_denoised=True)
    if anchor_low_res:
        out = anchor_to_low_res(out.float(), low_res.to(out.device).float())
    return out.clamp(-1, 1).contiguous()


def anchor_to_low_res(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """``high`` [B, 3, H, W] with its low frequencies replaced by those of ``low`` [B, 3, h, w].

    StableSR's colour correction (Wang et al. 2023, §3.4, wavelet variant) with one area/bicubic pyramid
    level: high + up(low − down(high)), so that down(result) ≈ low. A few-step upsampler drifts in colour
    and brightness (a tinted white background); the low-res image already has them right, and the
    upsampler's job is the detail it lacks. On the emoji 64 → 256 upsampler (800 steps, 7 DDIM steps) this
    lifts PSNR to the 256 px renders from 22.9 to 26.8 dB (bicubic: 25.6) on 16 test images
    (scripts/upsampler_psnr.py).
    """
    size = low.shape[-2:]
    down = F.interpolate(high, size=size, mode="area")
    return high + F.interpolate(low - down, size=high.shape[-2:], mode="bicubic", align_corners=False)


def _sample(sampler: str, model_fn, x_T: torch.Tensor, diffusion: GaussianDiffusion, edit: tuple,
            channels_last: bool, **kwargs: Any) -> torch.Tensor:
    """A plain sampler run (from ``start_step``), or RePaint when the edit holds a ``mask``."""
    start_step, known, mask, resample = edit
    if mask is None:
        return sample(sampler, model_fn, x_T, diffusion, start_step=start_step, **kwargs)
    if start_step or known is None:
        raise UnclipError("inpainting needs the known sample beside its mask, and runs the whole grid (no start_step)")
    known = _layout(known.to(x_T.device, x_T.dtype), channels_last)
    return inpaint(sampler, model_fn, x_T, diffusion, known=known, mask=mask.to(x_T.device, x_T.dtype),
                   resample=resample, **kwargs)


def fast_layout(stage: str, precision: str, device) -> bool:
    """Whether ``stage`` samples faster on channels-last (NHWC) activations, by measurement.

    On the 2-core AVX512-BF16 CPU of docs/performance.md (bench/ 5M UNets, one forward): the upsampler is
    18% (fp32) and 23% (bf16) faster in NHWC; the decoder 17% faster in fp32 but 33% slower in bf16,
    where autocast's fp32 GroupNorm next to its attention blocks is slow on NHWC input. CUDA: NCHW.
    """
    if torch.device(device).type != "cpu":
        return False
    return stage == "upsampler" or precision == "fp32"


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x
