"""The decoder half of unCLIP: CLIP image embedding z_i [+ caption] → image (Ramesh et al. 2022, §2.1).

The pipeline is cut at the image embedding (the seam Kandinsky 2.2 uses): ``DecoderPipeline`` runs the
decoder P(x | z_i, y) and then each upsampler of ``upsamplers`` in order, a list of any length (the
paper's 64 → 256 → 1024 cascade is two), so adding a stage is ``pipe.upsamplers.append(component)``.
Every upsampler is sampled with the pipeline's one ``"upsampler"`` settings; its noise level and
low-frequency anchoring come from its own component settings.

Starting noise (``noise``): image i's decoder noise and then each upsampler's, drawn in cascade order
from the caller's ``generators[i]``, so the prior pipeline can draw first from the same generator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from unclip.components import load_component, save_component
from unclip.config import from_dict
from unclip.diffusion.gaussian import GaussianDiffusion
from unclip.diffusion.schedule import DiffusionConfig
from unclip.errors import CheckpointError
from unclip.models.unet import UNet
from unclip.pipelines.sampling import fast_layout, is_stochastic, sample_decoder, sample_upsampler, stage_callback
from unclip.precision import autocast

__all__ = ["Component", "DecoderPipeline", "upsampler_stage", "settings_stage", "batches", "select_rows"]


class Component:
    """A UNet (decoder or upsampler) with its diffusion process and component settings (``info``).

    A latent decoder (``info["autoencoder"]``) also holds the frozen autoencoder whose latents its UNet
    denoises; ``to_pixels`` / ``from_pixels`` cross between its samples and images (identity otherwise).
    """

    def __init__(self, model: UNet, info: dict[str, Any], autoencoder: torch.nn.Module | None = None):
        self.model = model.eval()
        self.info = dict(info)
        self.diffusion = GaussianDiffusion(from_dict(DiffusionConfig, info.get("diffusion", {})))
        self.autoencoder = autoencoder.eval() if autoencoder is not None else None

    @property
    def image_size(self) -> int:
        """Side of the images this component produces (the autoencoder's for a latent decoder)."""
        return (self.autoencoder or self.model).config.image_size

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one sample the UNet denoises: pixels, or latents for a latent decoder."""
        cfg = self.model.config
        return (cfg.in_channels, cfg.image_size, cfg.image_size)

    @property
    def latent(self) -> bool:
        return self.autoencoder is not None

    @property
    def low_res_size(self) -> int | None:
        """An upsampler's input size (None for a decoder)."""
        size = self.info.get("low_res_size")
        return int(size) if size is not None else None

    def to_pixels(self, samples: torch.Tensor) -> torch.Tensor:
        return samples if self.autoencoder is None else self.autoencoder.decode(samples.float()).float()

    def from_pixels(self, images: torch.Tensor) -> torch.Tensor:
        return images if self.autoencoder is None else self.autoencoder.encode(images.float())

    def modules(self) -> list[torch.nn.Module]:
        return [self.model] + ([self.autoencoder] if self.autoencoder is not None else [])

    @classmethod
    def load(cls, directory: Path, device) -> "Component":
        stored = load_component(directory, device=device, roles=("decoder", "upsampler"), expected=UNet)
        return cls(stored.model, stored.info, stored.autoencoder)

    def save(self, directory: Path) -> None:
        extra = {k: v for k, v in self.info.items() if k not in ("role", "diffusion", "sample", "autoencoder")}
        save_component(directory, self.model, role=self.info.get("role", "decoder"),
                       diffusion=self.info.get("diffusion", {}), sample_defaults=self.info.get("sample"),
                       extra=extra, autoencoder=self.autoencoder)


def upsampler_stage(index: int) -> str:
    """The name of the cascade's ``index``-th upsampler (0-based): its noise key, edit key and folder."""
    return "upsampler" if index == 0 else f"upsampler_{index + 1}"


def settings_stage(stage: str) -> str:
    """The settings group a cascade stage samples with: every upsampler uses ``"upsampler"``."""
    return "upsampler" if stage.startswith("upsampler") else stage


def batches(n: int, batch_size: int, stochastic: bool) -> list[list[int]]:
    """Image indices per batch: one image each when a sampler is stochastic (it draws from that image's
    generator at every step), else runs of ``batch_size``."""
    if stochastic:
        return [[i] for i in range(n)]
    return [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]


def select_rows(encoding, index: list[int]):
    """Rows ``index`` of a TextEncoding-like object (None stays None)."""
    if encoding is None:
        return None
    return type(encoding)(**{k: getattr(encoding, k)[index] if getattr(encoding, k) is not None else None
                             for k in ("embed", "tokens", "mask")})


class DecoderPipeline:
    """z_i [N, D] (+ captions) → images [N, 3, S, S]: the decoder, then each of ``upsamplers`` in order."""

    def __init__(self, encoder, decoder: Component, upsamplers: Sequence[Component] = ()):
        self.encoder, self.decoder = encoder, decoder
        self.upsamplers: list[Component] = list(upsamplers)
        self.check()

    @property
    def device(self) -> torch.device:
        return next(self.decoder.model.parameters()).device

    @property
    def decoder_size(self) -> int:
        return self.decoder.image_size

    @property
    def image_size(self) -> int:
        return (self.upsamplers[-1] if self.upsamplers else self.decoder).image_size

    def cascade(self) -> list[tuple[str, Component]]:
        """(stage name, component) in sampling order: ``decoder``, ``upsampler``, ``upsampler_2``, ..."""
        return [("decoder", self.decoder)] + [(upsampler_stage(i), up) for i, up in enumerate(self.upsamplers)]

    def check(self) -> None:
        """Each upsampler must take the size the stage before it makes."""
        size = self.decoder.image_size
        for i, up in enumerate(self.upsamplers):
            expects = up.low_res_size if up.low_res_size is not None else size
            if expects != size:
                raise CheckpointError(f"upsampler {i + 1} expects {expects} px inputs but the stage before it makes "
                                      f"{size} px images; assemble matching components")
            size = up.image_size

    def noise(self, generators: Sequence[torch.Generator], *,
              decoder_noise: torch.Tensor | None = None) -> dict[str, list[torch.Tensor]]:
        """Per image, its decoder noise then each upsampler's, drawn from ``generators[i]`` in that order.

        ``decoder_noise`` [N, C, H, W] (fixed or DDIM-inverted latents) replaces the decoder's draws."""
        device = self.device
        out: dict[str, list[torch.Tensor]] = {stage: [] for stage, _ in self.cascade()}
        for g in generators:
            out["decoder"].append(torch.randn(1, *self.decoder.sample_shape, generator=g, device=device))
            for i, up in enumerate(self.upsamplers):
                size = up.model.config.image_size
                out[upsampler_stage(i)].append(torch.randn(1, 3, size, size, generator=g, device=device))
        if decoder_noise is not None:
            out["decoder"] = list(decoder_noise.to(device).split(1))
        return out

    def stages_to_run(self, settings: dict[str, dict]) -> list[tuple[str, Component]]:
        """The cascade stages ``settings`` asks for (no ``"upsampler"`` settings: stop after the decoder)."""
        return [(stage, c) for stage, c in self.cascade() if settings_stage(stage) in settings]

    @torch.no_grad()
    def generate(self, image_embed: torch.Tensor | None, *, noise: dict[str, list], settings: dict[str, dict],
                 generators: Sequence[torch.Generator], text=None, negative=None, callback: Callable | None = None,
                 progress: bool = True, batch_size: int = 16, stochastic: bool | None = None,
                 edit=None, negative_image_embed: torch.Tensor | None = None) -> torch.Tensor:
        """Sample every image → [N, 3, S, S] in [-1, 1] (or the decoder's latents when it keeps them).

        ``image_embed`` [N, D] (None for a text-only decoder); ``noise`` from ``noise``; ``settings`` per
        stage ({"decoder": {...}, "upsampler": {...}}); ``stochastic`` (default: from ``settings``) samples
        each image alone with its own generator; ``edit`` (``unclip.pipelines.edits.StageEdit``) adds
        sampler arguments per cascade stage and batch; ``negative_image_embed`` [N, D] replaces the
        learned null embedding in guidance's unconditional branch (Kandinsky 2.2's negative image embeds)."""
        n = len(generators)
        self.check()
        if stochastic is None:
            stochastic = any(is_stochastic(v["sampler"], v["eta"]) for v in settings.values())
        stochastic = stochastic or (edit is not None and edit.stochastic)
        stages = self.stages_to_run(settings)
        groups = batches(n, batch_size, stochastic)
        bars = {settings_stage(stage): None for stage, _ in stages}
        for key in bars:
            count = sum(settings_stage(stage) == key for stage, _ in stages)
            bars[key] = tqdm(total=settings[key]["steps"] * len(groups) * count, desc=key, disable=not progress,
                             leave=False)
        try:
            out = [self._decode_group(group, image_embed, noise, settings, stages, bars, callback, text=text,
                                      negative=negative, generator=generators[group[0]] if stochastic else None,
                                      edit=edit, negative_image_embed=negative_image_embed) for group in groups]
        finally:
            for bar in bars.values():
                bar.close()
        return torch.cat(out)

    def _decode_group(self, group, image_embed, noise, settings, stages, bars, callback, *, text, negative,
                      generator, edit, negative_image_embed=None) -> torch.Tensor:
        def extra(stage: str) -> dict:  # an edit's sampler arguments for this group (unclip.pipelines.edits)
            return edit.stage_kwargs(stage, group) if edit is not None else {}

        z = image_embed[group] if image_embed is not None else None
        negative_z = negative_image_embed[group] if negative_image_embed is not None else None
        s = settings["decoder"]
        with autocast(s["precision"], self.device):
            x = sample_decoder(
                self.decoder.model, self.decoder.diffusion, torch.cat([noise["decoder"][i] for i in group]),
                image_embed=z, text=select_rows(text, group), negative_text=select_rows(negative, group),
                negative_image_embed=negative_z,
                guidance_scale=s["guidance_scale"], sampler=s["sampler"], steps=s["steps"], eta=s["eta"],
                generator=generator, spacing=s["spacing"],
                callback=stage_callback("decoder", bars.get("decoder"), callback),
                channels_last=fast_layout("decoder", s["precision"], self.device),
                clip_denoised=not self.decoder.latent, **extra("decoder"))
            if s.get("to_pixels", True):
                x = self.decoder.to_pixels(x)
        for stage, up in stages[1:]:
            s = settings["upsampler"]
            with autocast(s["precision"], self.device):
                x = sample_upsampler(up.model, up.diffusion, x, torch.cat([noise[stage][i] for i in group]),
                                     noise_level=int(up.info.get("noise_level", 0)), sampler=s["sampler"],
                                     steps=s["steps"], eta=s["eta"], generator=generator, spacing=s["spacing"],
                                     callback=stage_callback("upsampler", bars.get("upsampler"), callback),
                                     channels_last=fast_layout("upsampler", s["precision"], self.device),
                                     anchor_low_res=bool(up.info.get("anchor_low_res", False)), **extra(stage))
        return x
