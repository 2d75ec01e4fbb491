"""``UnCLIPPipeline``: text → CLIP text embedding → prior → decoder → upsampler (Ramesh et al. 2022, Fig. 2).

Inference-only glue (house rule 8): it composes an encoder (``unclip.encoders``), an optional prior
(``unclip.models.prior``), the decoder and an optional upsampler (``unclip.models.unet.UNet``) with the
pure samplers of ``unclip.diffusion``. Without a prior the decoder must be the GLIDE-style text-only
baseline (conditioned on the caption alone).

``image_embed_source`` (paper §5.1, "Importance of the prior"): the decoder's z_i is sampled by the
prior (``"prior"``, default), is the caption's CLIP text embedding (``"text"``), or is the decoder's
learned null embedding, leaving only the caption tokens (``"none"``). Guidance keeps its unconditional
branch in every mode, and the prior's noise is drawn in every mode, so one seed gives one decoder noise.

Reproducibility: image i gets its own seed ``seeds[i]`` and its own ``torch.Generator``, from which its
prior, decoder and upsampler starting noise are drawn in that order. With deterministic samplers (DDIM
eta=0, DPM-Solver++) images are batched; with stochastic ones (DDPM, DDIM eta>0) each image is sampled
alone with its own generator, so ``seed=seeds[i], num_images_per_prompt=1`` gives image i the same starting
noise either way; the image itself matches up to float rounding (batch size, threads and CPU change the
last bits; see the README).

Directory layout (``save`` / ``load``): ``pipeline.json`` + ``encoder/``, ``prior/``, ``decoder/``,
``upsampler/``; each model folder holds ``model.safetensors`` (config inside) and ``component.json``.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from unclip.checkpoint import atomic_write_text, load_model, replace_dir, save_model
from unclip.config import from_dict
from unclip.diffusion.gaussian import GaussianDiffusion
from unclip.diffusion.schedule import DiffusionConfig
from unclip.encoders.base import check_captions
from unclip.errors import CheckpointError, UnclipError
from unclip.models.unet import UNet
from unclip.pipelines import PipelineOutput, read_pipeline_json
from unclip.pipelines.diffusers_compat import diffusers_call
from unclip.pipelines.images import check_finite, to_numpy, to_pil
from unclip.pipelines.manifest import check_component_info, read_json_object
from unclip.pipelines.prior_adapter import PriorComponent, load_prior_component
from unclip.pipelines.sampling import fast_layout, is_stochastic, sample_decoder, sample_upsampler
from unclip.pipelines.sampling import stage_callback as _stage_callback
from unclip.pipelines.settings import GUIDED, default_settings, resolve_stages
from unclip.precision import autocast
from unclip.train.stages.decoder import write_component

__all__ = ["UnCLIPPipeline", "Component", "assemble_unclip", "make_seeds", "DEFAULTS", "IMAGE_EMBED_SOURCES"]

DEFAULTS = default_settings()  # per stage, from unclip.pipelines.settings.STAGE_DEFAULTS
SEED_MAX = 2**31 - 1
IMAGE_EMBED_SOURCES = ("prior", "text", "none")


class Component:
    """A UNet (decoder or upsampler) with its diffusion process and ``component.json`` settings.

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

    def to_pixels(self, samples: torch.Tensor) -> torch.Tensor:
        return samples if self.autoencoder is None else self.autoencoder.decode(samples.float()).float()

    def from_pixels(self, images: torch.Tensor) -> torch.Tensor:
        return images if self.autoencoder is None else self.autoencoder.encode(images.float())

    def modules(self) -> list[torch.nn.Module]:
        return [self.model] + ([self.autoencoder] if self.autoencoder is not None else [])

    @classmethod
    def load(cls, directory: Path, device) -> "Component":
        directory = Path(directory)
        path = directory / "model.safetensors"
        info = read_json_object(directory / "component.json", "re-export the model")
        check_component_info(info, directory / "component.json", ("decoder", "upsampler"))
        autoencoder = None
        if info.get("autoencoder"):
            from unclip.models.autoencoder import Autoencoder

            name = info["autoencoder"]
            if Path(name).name != name or name.startswith("."):
                raise CheckpointError(f"{directory / 'component.json'}: 'autoencoder' must be a file name in "
                                      f"{directory}, got {name!r}")
            autoencoder = load_model(directory / name, device=device, expected=Autoencoder)
        return cls(load_model(path, device=device, expected=UNet), info, autoencoder)

    def save(self, directory: Path) -> None:
        write_component(Path(directory), self.model, self.info)
        if self.autoencoder is not None:
            save_model(self.autoencoder, Path(directory) / self.info["autoencoder"])


def make_seeds(seed: int | Sequence[int] | torch.Generator | None, count: int) -> list[int]:
    """Per-image seeds: int s → s, s+1, ...; a list is used as-is; a Generator or None draws them."""
    if isinstance(seed, torch.Generator):
        return [int(v) for v in torch.randint(0, SEED_MAX, (count,), generator=seed, device=seed.device)]
    if seed is None:
        return [secrets.randbelow(SEED_MAX) for _ in range(count)]
    if isinstance(seed, (list, tuple)):
        if len(seed) != count:
            raise UnclipError(f"got {len(seed)} seeds for {count} images; pass one seed per image or a single int")
        seeds = [int(s) for s in seed]
    else:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UnclipError(f"seed must be an integer, got {seed!r}")
        seeds = [seed + i for i in range(count)]
    if any(not 0 <= s <= SEED_MAX for s in seeds):
        raise UnclipError(f"seeds must lie in [0, {SEED_MAX}]")
    return seeds


class UnCLIPPipeline:
    """Text-to-image with unCLIP; also variations, interpolations and text diffs (``manipulate``)."""

    kind = "unclip"

    def __init__(self, encoder, decoder: Component, *, prior: PriorComponent | None = None,
                 upsampler: Component | None = None, defaults: dict[str, dict] | None = None,
                 name: str | None = None):
        self.encoder = encoder.eval()
        self.prior, self.decoder, self.upsampler = prior, decoder, upsampler
        self.name = name
        self.defaults = {k: dict(v, **(defaults or {}).get(k, {})) for k, v in DEFAULTS.items()}
        cfg = decoder.model.config
        # An unCLIP decoder needs z_i: from the prior for text, or from an image for the manipulations.
        self._text_to_image = prior is not None or not cfg.image_embed_dim
        if upsampler is not None and int(upsampler.info.get("low_res_size", decoder.image_size)) != decoder.image_size:
            raise CheckpointError(f"the upsampler expects {upsampler.info['low_res_size']} px inputs but the decoder "
                                  f"makes {decoder.image_size} px images; assemble matching components")
        if cfg.image_embed_dim and cfg.image_embed_dim != encoder.embed_dim:
            raise CheckpointError(f"decoder expects {cfg.image_embed_dim}-dim CLIP embeddings but the encoder "
                                  f"gives {encoder.embed_dim}; assemble matching components")

    # --- properties the server and CLI read ------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.decoder.model.parameters()).device

    @property
    def stages(self) -> tuple[str, ...]:
        names = ("prior",) if self.prior is not None else ()
        return names + ("decoder",) + (("upsampler",) if self.upsampler is not None else ())

    @property
    def image_size(self) -> int:
        return (self.upsampler or self.decoder).image_size

    @property
    def decoder_size(self) -> int:
        return self.decoder.image_size

    def to(self, device) -> "UnCLIPPipeline":
        parts = [self.encoder, *self.decoder.modules(), *(c.model for c in (self.prior, self.upsampler) if c)]
        for part in parts:
            part.to(device)
        return self

    # --- settings -------------------------------------------------------------------
    def resolve_settings(self, *, prior_steps=None, decoder_steps=None, upsampler_steps=None, prior_guidance=None,
                         decoder_guidance=None, sampler=None, prior_sampler=None, decoder_sampler=None,
                         upsampler_sampler=None, eta=0.0, precision=None, spacing=None, prior_spacing=None,
                         decoder_spacing=None, upsampler_spacing=None, upsample: bool = True,
                         to_pixels: bool = True) -> dict[str, dict]:
        """Per-stage {steps, sampler, spacing, guidance_scale, eta, precision} from the arguments over the defaults.

        ``upsample=False`` stops after the decoder (the base-resolution image): the upsampler is not run.
        ``to_pixels=False`` (``output_type="latent"``) also keeps a latent decoder's samples as latents.

        ``spacing`` (every stage) or ``prior_spacing``/``decoder_spacing``/``upsampler_spacing`` is the timestep
        grid, one of ``unclip.diffusion.schedule.SPACINGS`` (default: each stage's own, else "trailing").

        ``precision`` ("auto", "fp32" or "bf16") applies to every stage and is resolved for this
        pipeline's device, so the settings record what actually ran.
        """
        values = {k: v for k, v in locals().items() if k not in ("self", "upsample", "to_pixels")}  # flat, None = unset
        if not upsample and upsampler_steps is not None:
            raise UnclipError("upsample=False skips the upsampler, so upsampler_steps cannot apply; drop one of them")
        stages = [s for s in self.stages if upsample or s != "upsampler"]
        resolved = resolve_stages(stages, self.defaults, values=values, device=self.device)
        settings = {stage: {k: v for k, v in s.as_dict().items() if k != "guidance_scale" or stage in GUIDED}
                    for stage, s in resolved.items()}
        if not to_pixels:
            settings["decoder"]["to_pixels"] = False
        return settings

    # --- text → image -------------------------------------------------------------------
    @diffusers_call
    def __call__(self, prompts: str | Sequence[str], *, negative_prompt: str | None = None,
                 num_images_per_prompt: int = 1, seed: int | Sequence[int] | torch.Generator | None = None,
                 callback: Callable | None = None, progress: bool = True, output_type: str = "pil",
                 batch_size: int = 16, image_embed_source: str = "prior", style: str | None = None,
                 **stage_settings: Any) -> PipelineOutput:
        """Generate ``num_images_per_prompt`` images per prompt.

        ``stage_settings``: ``prior_steps``, ``decoder_steps``, ``upsampler_steps``, ``prior_guidance``,
        ``decoder_guidance``, ``sampler`` (all stages) or ``prior_sampler``/``decoder_sampler``/
        ``upsampler_sampler``, ``spacing`` (the timestep grid of every stage: "trailing", "linspace",
        "leading" or "quadratic") or ``prior_spacing``/``decoder_spacing``/``upsampler_spacing``, ``eta`` (DDIM),
        ``precision`` ("auto", "fp32", "bf16"; see
        ``unclip.precision``). ``callback(stage, step, total, x)`` after every step.
        ``image_embed_source``: ``"prior"``, ``"text"`` or ``"none"`` (see the module docstring).
        diffusers' names (``generator``, ``num_inference_steps``, ``callback_on_step_end``, ``return_dict``,
        ``output_type="latent"``, ...) are accepted too: ``unclip.pipelines.diffusers_compat``.
        ``style`` (e.g. "fluent"): each prompt becomes that style's caption (``unclip.pipelines.style``).
        """
        prompts = check_captions(prompts)
        if style is not None:
            from unclip.pipelines.style import styled_prompts

            prompts = styled_prompts(prompts, style)
        if negative_prompt is not None and not str(negative_prompt).strip():
            negative_prompt = None
        if not 1 <= num_images_per_prompt <= 256:
            raise UnclipError(f"num_images_per_prompt must be in [1, 256], got {num_images_per_prompt}")
        self._check_image_embed_source(image_embed_source)
        settings = self.resolve_settings(**stage_settings)
        if image_embed_source != "prior":
            settings.pop("prior", None)  # the prior is not sampled
        image_prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        seeds = make_seeds(seed, len(image_prompts))
        with torch.no_grad():
            text = self.encoder.encode_text(image_prompts)
            negative = self.encoder.encode_text([negative_prompt] * len(image_prompts)) if negative_prompt else None
            noise = self._noise(seeds, with_prior=self.prior is not None)
            image_embed = self._fixed_image_embed(image_embed_source, text)
            images = self._run(seeds, noise, settings, callback, progress, batch_size, text=text, negative=negative,
                               image_embed=image_embed)
        info = {"negative_prompt": negative_prompt, "num_images_per_prompt": num_images_per_prompt,
                "stages": settings, "model": self.name, "image_embed_source": image_embed_source, "style": style}
        return PipelineOutput(images=self.format(check_finite(images, self.name), output_type), seeds=seeds,
                              prompts=image_prompts, settings=info)

    def _check_image_embed_source(self, source) -> None:
        if source not in IMAGE_EMBED_SOURCES:
            hint = " (YAML reads null as None: write image_embed_source=none)" if source is None else ""
            raise UnclipError(f"image_embed_source must be 'prior', 'text' or 'none', got {source!r}{hint}")
        if source != "prior" and not self.decoder.model.config.image_embed_dim:
            raise UnclipError(f"image_embed_source={source!r} needs an unCLIP decoder, but this pipeline's decoder "
                              "is text-only (GLIDE-style); use the default 'prior'")
        if source == "prior" and not self._text_to_image:
            raise UnclipError("this pipeline has no prior, so it cannot turn text into a CLIP image embedding; "
                              "use image_embed_source='text' or 'none', variations/interpolate, or assemble it "
                              "with a prior")

    def _fixed_image_embed(self, source: str, text) -> torch.Tensor | None:
        """z_i [N, D] for the prior-free modes (paper §5.1), or None when the prior (or no z_i) is used."""
        if source == "text":  # the caption's CLIP text embedding stands in for the image embedding
            return text.embed
        if source == "none":  # the learned null embedding the decoder substitutes when z_i is dropped
            null = self.decoder.model.null_image_embed.detach()
            return null[None].expand(text.embed.shape[0], -1)
        return None

    # --- shared machinery (also used by unclip.pipelines.manipulate) ------------------
    def _noise(self, seeds: list[int], *, with_prior: bool, decoder_noise: torch.Tensor | None = None):
        """Per-image starting noise drawn from generator(seed_i) in the order prior, decoder, upsampler."""
        device = self.device
        out = {"generators": [], "prior": [], "decoder": [], "upsampler": []}
        shape = self.decoder.sample_shape
        for s in seeds:
            g = torch.Generator(device).manual_seed(int(s))
            out["generators"].append(g)
            if with_prior:
                out["prior"].append(self.prior.noise(1, generator=g, device=device))
            out["decoder"].append(torch.randn(1, *shape, generator=g, device=device))
            if self.upsampler is not None:
                up = self.upsampler.model.config.image_size
                out["upsampler"].append(torch.randn(1, 3, up, up, generator=g, device=device))
        if decoder_noise is not None:  # fixed or DDIM-inverted latents replace the decoder noise
            out["decoder"] = list(decoder_noise.to(device).split(1))
        return out

    def _run(self, seeds, noise, settings, callback, progress, batch_size, *, text=None, negative=None,
             image_embed: torch.Tensor | None = None, edit=None) -> torch.Tensor:
        """Sample all images → [N, 3, S, S] in [-1, 1], batched unless a sampler is stochastic.

        ``edit`` (``unclip.pipelines.edits``): extra sampler arguments per stage and group of images."""
        n = len(seeds)
        stochastic = any(is_stochastic(v["sampler"], v["eta"]) for v in settings.values()) or (
            edit is not None and edit.stochastic)
        groups = [[i] for i in range(n)] if stochastic else [list(range(i, min(n, i + batch_size)))
                                                            for i in range(0, n, batch_size)]
        bars = {stage: tqdm(total=v["steps"] * len(groups), desc=stage, disable=not progress, leave=False)
                for stage, v in settings.items() if not (stage == "prior" and image_embed is not None)}
        outputs = []
        try:
            for group in groups:
                outputs.append(self._run_group(group, noise, settings, bars, callback, text=text, negative=negative,
                                               image_embed=image_embed, stochastic=stochastic, edit=edit))
        finally:
            for bar in bars.values():
                bar.close()
        return torch.cat(outputs)

    def _run_group(self, group, noise, settings, bars, callback, *, text, negative, image_embed, stochastic,
                   edit=None):
        def extra(stage: str) -> dict:  # an edit's sampler arguments for this group (unclip.pipelines.edits)
            return edit.stage_kwargs(stage, group) if edit is not None else {}

        generator = noise["generators"][group[0]] if stochastic else None
        pick = lambda enc: None if enc is None else _select(enc, group)  # noqa: E731
        text_g, negative_g = pick(text), pick(negative)
        if image_embed is None and self.prior is None:  # GLIDE-style text-only decoder
            z = None
        elif image_embed is None:
            s = settings["prior"]
            with autocast(s["precision"], self.device):
                z = self.prior.sample(
                    text_g, negative_g, noise=torch.cat([noise["prior"][i] for i in group]), steps=s["steps"],
                    sampler=s["sampler"], guidance_scale=s["guidance_scale"], eta=s["eta"], generator=generator,
                    spacing=s["spacing"],
                    callback=_stage_callback("prior", bars.get("prior"), callback)).float()
        else:
            z = image_embed[group]
        s = settings["decoder"]
        with autocast(s["precision"], self.device):
            x = sample_decoder(
                self.decoder.model, self.decoder.diffusion, torch.cat([noise["decoder"][i] for i in group]),
                image_embed=z, text=text_g, negative_text=negative_g, guidance_scale=s["guidance_scale"],
                sampler=s["sampler"], steps=s["steps"], eta=s["eta"], generator=generator, spacing=s["spacing"],
                callback=_stage_callback("decoder", bars.get("decoder"), callback),
                channels_last=fast_layout("decoder", s["precision"], self.device),
                clip_denoised=not self.decoder.latent, **extra("decoder"))
            if s.get("to_pixels", True):
                x = self.decoder.to_pixels(x)
        if self.upsampler is not None and "upsampler" in settings:
            s = settings["upsampler"]
            with autocast(s["precision"], self.device):
                x = sample_upsampler(self.upsampler.model, self.upsampler.diffusion, x,
                                     torch.cat([noise["upsampler"][i] for i in group]),
                                     noise_level=int(self.upsampler.info.get("noise_level", 0)),
                                     sampler=s["sampler"], steps=s["steps"], eta=s["eta"], generator=generator,
                                     spacing=s["spacing"],
                                     callback=_stage_callback("upsampler", bars.get("upsampler"), callback),
                                     channels_last=fast_layout("upsampler", s["precision"], self.device),
                                     anchor_low_res=bool(self.upsampler.info.get("anchor_low_res", False)),
                                     **extra("upsampler"))
        return x

    @staticmethod
    def format(images: torch.Tensor, output_type: str):
        if output_type == "pil":
            return to_pil(images)
        if output_type == "np":
            return to_numpy(images)
        if output_type in ("pt", "latent"):  # "latent": the decoder's samples (diffusers_compat)
            return images.detach().cpu()
        raise UnclipError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")

    # --- manipulations (paper §3); implemented in unclip.pipelines.manipulate ----------
    @diffusers_call
    def variations(self, image, *, num_images: int = 4, seed=None, callback=None, **kwargs) -> PipelineOutput:
        from unclip.pipelines.manipulate import variations

        return variations(self, image, num_images=num_images, seed=seed, callback=callback, **kwargs)

    @diffusers_call
    def interpolate(self, image_a, image_b, *, num_frames: int = 8, seed=None, callback=None, **kwargs):
        from unclip.pipelines.manipulate import interpolate

        return interpolate(self, image_a, image_b, num_frames=num_frames, seed=seed, callback=callback, **kwargs)

    @diffusers_call
    def text_diff(self, image, from_caption: str, to_caption: str, *, num_frames: int = 6, seed=None,
                  callback=None, **kwargs) -> PipelineOutput:
        from unclip.pipelines.manipulate import text_diff

        return text_diff(self, image, from_caption, to_caption, num_frames=num_frames, seed=seed,
                         callback=callback, **kwargs)

    # --- edits (image-to-image, inpainting, style); implemented in unclip.pipelines.edits / .style ----
    def img2img(self, image, prompt: str | None = None, *, strength: float = 0.6, **kwargs) -> PipelineOutput:
        from unclip.pipelines.edits import img2img

        return img2img(self, image, prompt, strength=strength, **kwargs)

    def inpaint(self, image, mask, prompt: str | None = None, **kwargs) -> PipelineOutput:
        from unclip.pipelines.edits import inpaint

        return inpaint(self, image, mask, prompt, **kwargs)

    def restyle(self, image, style: str, **kwargs) -> PipelineOutput:
        from unclip.pipelines.style import restyle

        return restyle(self, image, style, **kwargs)

    # --- save / load ---------------------------------------------------------------
    def save(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write the pipeline directory atomically (a temp dir renamed into place)."""
        directory = Path(directory)
        if directory.exists() and not overwrite:
            raise UnclipError(f"{directory} already exists; choose a new directory or pass overwrite=True")
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            self.encoder.save(tmp / "encoder")
            self.decoder.save(tmp / "decoder")
            if self.prior is not None:
                self.prior.save(tmp / "prior")
            if self.upsampler is not None:
                self.upsampler.save(tmp / "upsampler")
            atomic_write_text(tmp / "pipeline.json", json.dumps(self.describe(), indent=2, sort_keys=True) + "\n")
            replace_dir(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": 1, "name": self.name, "image_size": self.image_size,
                "components": {s: s for s in ("encoder",) + self.stages}, "defaults": self.defaults}

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> "UnCLIPPipeline":
        from unclip.encoders import load_encoder

        directory = Path(directory)
        info = read_pipeline_json(directory)
        if info["kind"] != cls.kind:
            raise CheckpointError(f"{directory} holds a {info['kind']!r} pipeline, not an unCLIP one")
        parts = info.get("components", {})
        for required in ("encoder", "decoder"):
            if not (directory / parts.get(required, required)).is_dir():
                raise CheckpointError(f"{directory} lacks its {required}/ folder; rebuild the pipeline directory")
        encoder = load_encoder(directory / parts.get("encoder", "encoder"), device=device)
        decoder = Component.load(directory / parts.get("decoder", "decoder"), device)
        prior = load_prior_component(directory / parts["prior"], device) if parts.get("prior") else None
        upsampler = Component.load(directory / parts["upsampler"], device) if parts.get("upsampler") else None
        return cls(encoder, decoder, prior=prior, upsampler=upsampler, defaults=info.get("defaults"),
                   name=info.get("name") or directory.name)


def _select(encoding, index: list[int]):
    """Rows ``index`` of a TextEncoding-like object."""
    return type(encoding)(**{k: getattr(encoding, k)[index] if getattr(encoding, k) is not None else None
                             for k in ("embed", "tokens", "mask")})


def _component_dir(path: str | Path, stage: str) -> Path:
    """RUNDIR, RUNDIR/final or the component folder → the folder holding model.safetensors."""
    path = Path(path)
    for candidate in (path, path / stage, path / "final" / stage):
        if (candidate / "model.safetensors").is_file():
            return candidate
    raise UnclipError(f"no trained {stage} found at {path} (looked for model.safetensors in it, "
                      f"{stage}/ and final/{stage}/); train it with 'unclip train {stage}'")


def assemble_unclip(out_dir, *, encoder, decoder, prior=None, upsampler=None, defaults=None, name=None):
    """See ``unclip.pipelines.assemble``."""
    from unclip.encoders import load_encoder

    encoder_dir = Path(encoder)
    if (encoder_dir / "final" / "encoder").is_dir():
        encoder_dir = encoder_dir / "final" / "encoder"
    device = "cpu"
    parts = {"decoder": Component.load(_component_dir(decoder, "decoder"), device),
             "prior": load_prior_component(_component_dir(prior, "prior"), device) if prior else None,
             "upsampler": Component.load(_component_dir(upsampler, "upsampler"), device) if upsampler else None}
    merged = {}  # sampling defaults: each stage's own training-time settings, then the caller's
    for stage, part in parts.items():
        sample = part.info.get("sample", {}) if part is not None else {}
        keys = ("steps", "sampler", "spacing") + (("guidance_scale",) if stage != "upsampler" else ())
        merged[stage] = {k: sample[k] for k in keys if k in sample}
        merged[stage].update((defaults or {}).get(stage, {}))
    pipe = UnCLIPPipeline(load_encoder(encoder_dir, device=device), parts["decoder"], prior=parts["prior"],
                          upsampler=parts["upsampler"], defaults=merged, name=name or Path(out_dir).name)
    pipe.save(out_dir, overwrite=True)
    # Keep the encoder directory's extra files (e.g. embed_stats.safetensors) alongside the re-saved encoder.
    for extra in encoder_dir.iterdir():
        target = Path(out_dir) / "encoder" / extra.name
        if extra.is_file() and not target.exists():
            shutil.copy2(extra, target)
    return UnCLIPPipeline.load(out_dir)
