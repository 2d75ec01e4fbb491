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

The pipeline is cut at the image embedding (issue #19, the Kandinsky 2.2 seam): ``prior_pipeline``
(``unclip.pipelines.prior_adapter.PriorPipeline``: text → z_i) and ``decoder_pipeline``
(``unclip.pipelines.decoder.DecoderPipeline``: z_i [+ text] → image through a list of upsamplers).
``UnCLIPPipeline`` composes them; ``decode`` takes your own embedding, ``embed`` returns the prior's;
the manipulations call the decoder pipeline alone. A cascade stage is added with
``pipe.upsamplers.append(component)``.

Directory layout (``save`` / ``load``): ``pipeline.json`` + ``encoder/``, ``prior/``, ``decoder/`` and one
folder per upsampler (``upsampler/``, ``upsampler_2/``, ...; ``pipeline.json``'s ``"upsamplers"`` lists
them in order); each model folder holds one self-describing ``model.safetensors`` (``unclip.components``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from unclip.atomic import write_dir
from unclip.checkpoint import atomic_write_text
from unclip.components import COMPONENT_FILE
from unclip.encoders.base import check_captions
from unclip.errors import CheckpointError, UnclipError
from unclip.pipelines.manifest import read_pipeline_json
from unclip.pipelines.seeds import SEED_MAX, generators, make_seeds  # noqa: F401  (public here too)
from unclip.pipelines.output import PipelineOutput
from unclip.pipelines.decoder import Component, DecoderPipeline, batches, upsampler_stage
from unclip.pipelines.diffusers_compat import diffusers_call
from unclip.pipelines.images import check_finite, format_images
from unclip.pipelines.prior_adapter import PriorComponent, PriorPipeline, load_prior_component
from unclip.pipelines.sampling import is_stochastic
from unclip.pipelines.settings import GUIDED, default_settings, resolve_stages

__all__ = ["UnCLIPPipeline", "Component", "assemble_unclip", "make_seeds", "generators", "DEFAULTS",
           "IMAGE_EMBED_SOURCES"]

DEFAULTS = default_settings()  # per stage, from unclip.pipelines.settings.STAGE_DEFAULTS
IMAGE_EMBED_SOURCES = ("prior", "text", "none")


class UnCLIPPipeline:
    """Text-to-image with unCLIP; also variations, interpolations and text diffs (``manipulate``)."""

    kind = "unclip"

    def __init__(self, encoder, decoder: Component, *, prior: PriorComponent | None = None,
                 upsampler: Component | None = None, upsamplers: Sequence[Component] = (),
                 defaults: dict[str, dict] | None = None, name: str | None = None):
        """``upsamplers``: the cascade after the decoder, in order; ``upsampler`` is one (older callers)."""
        self.encoder = encoder.eval()
        if upsampler is not None and upsamplers:
            raise UnclipError("pass upsampler= (one) or upsamplers= (a list), not both")
        self.prior_pipeline = PriorPipeline(self.encoder, prior) if prior is not None else None
        self.decoder_pipeline = DecoderPipeline(self.encoder, decoder, [upsampler] if upsampler else upsamplers)
        self.name = name
        self.defaults = {k: dict(v, **(defaults or {}).get(k, {})) for k, v in DEFAULTS.items()}
        cfg = decoder.model.config
        if cfg.image_embed_dim and cfg.image_embed_dim != encoder.embed_dim:
            raise CheckpointError(f"decoder expects {cfg.image_embed_dim}-dim CLIP embeddings but the encoder "
                                  f"gives {encoder.embed_dim}; assemble matching components")

    # --- the two halves and their components --------------------------------------------
    @property
    def prior(self) -> PriorComponent | None:
        return self.prior_pipeline.prior if self.prior_pipeline is not None else None

    @property
    def decoder(self) -> Component:
        return self.decoder_pipeline.decoder

    @property
    def upsamplers(self) -> list[Component]:
        """The cascade after the decoder (the decoder pipeline's own list: append to add a stage)."""
        return self.decoder_pipeline.upsamplers

    @property
    def upsampler(self) -> Component | None:
        """The first upsampler (the one of a two-stage pipeline), or None."""
        return self.upsamplers[0] if self.upsamplers else None

    @property
    def _text_to_image(self) -> bool:
        # An unCLIP decoder needs z_i: from the prior for text, or from an image for the manipulations.
        return self.prior is not None or not self.decoder.model.config.image_embed_dim

    # --- properties the server and CLI read ------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.decoder_pipeline.device

    @property
    def stages(self) -> tuple[str, ...]:
        """Settings groups: every upsampler of the cascade samples with the ``"upsampler"`` one."""
        names = ("prior",) if self.prior is not None else ()
        return names + ("decoder",) + (("upsampler",) if self.upsamplers else ())

    @property
    def image_size(self) -> int:
        return self.decoder_pipeline.image_size

    @property
    def decoder_size(self) -> int:
        return self.decoder.image_size

    def to(self, device) -> "UnCLIPPipeline":
        parts = [self.encoder, *self.decoder.modules(), *(c.model for c in (self.prior, *self.upsamplers) if c)]
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
        self.check_image_embed_source(image_embed_source)
        settings = self.resolve_settings(**stage_settings)
        if image_embed_source != "prior":
            settings.pop("prior", None)  # the prior is not sampled
        image_prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        seeds = make_seeds(seed, len(image_prompts))
        with torch.no_grad():
            text = self.encoder.encode_text(image_prompts)
            negative = self.encoder.encode_text([negative_prompt] * len(image_prompts)) if negative_prompt else None
            noise = self.noise(seeds, with_prior=self.prior is not None)
            image_embed = self.fixed_image_embed(image_embed_source, text)
            images = self.sample(noise, settings, text=text, negative=negative, image_embed=image_embed,
                                 callback=callback, progress=progress, batch_size=batch_size)
        info = {"negative_prompt": negative_prompt, "num_images_per_prompt": num_images_per_prompt,
                "stages": settings, "model": self.name, "image_embed_source": image_embed_source, "style": style}
        return PipelineOutput(images=self.format(check_finite(images, self.name), output_type), seeds=seeds,
                              prompts=image_prompts, settings=info)

    def check_image_embed_source(self, source) -> None:
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

    def fixed_image_embed(self, source: str, text) -> torch.Tensor | None:
        """z_i [N, D] for the prior-free modes (paper §5.1), or None when the prior (or no z_i) is used."""
        if source == "text":  # the caption's CLIP text embedding stands in for the image embedding
            return text.embed
        if source == "none":  # the learned null embedding the decoder substitutes when z_i is dropped
            null = self.decoder.model.null_image_embed.detach()
            return null[None].expand(text.embed.shape[0], -1)
        return None

    # --- the composed halves (also used by unclip.pipelines.edits) ---------------------
    def noise(self, seeds: Sequence[int], *, with_prior: bool, decoder_noise: torch.Tensor | None = None):
        """Per-image starting noise from generator(seed_i): prior (if ``with_prior``), decoder, each upsampler.

        ``{"generators": [...], "prior": [...], "decoder": [...], "upsampler": [...], "upsampler_2": ...}``;
        ``decoder_noise`` [N, C, H, W] (fixed or DDIM-inverted latents) replaces the decoder's draws."""
        gens = generators(seeds, self.device)
        # Each generator is drawn from in cascade order; the generators are independent, so the prior's
        # draws for every image can come before the decoder's.
        out: dict[str, Any] = {"generators": gens, "prior": [], "upsampler": []}
        if with_prior:
            out["prior"] = self.prior_pipeline.noise(gens)
        out.update(self.decoder_pipeline.noise(gens, decoder_noise=decoder_noise))
        return out

    def sample(self, noise: dict[str, Any], settings: dict[str, dict], *, text=None, negative=None,
               image_embed: torch.Tensor | None = None, callback: Callable | None = None, progress: bool = True,
               batch_size: int = 16, edit=None) -> torch.Tensor:
        """Images [N, 3, S, S] in [-1, 1]: z_i from the prior pipeline unless ``image_embed`` [N, D] is given,
        then the decoder pipeline; batched unless a sampler is stochastic (both halves batch alike).

        ``edit`` (``unclip.pipelines.edits``): extra sampler arguments per cascade stage and batch."""
        gens = noise["generators"]
        stochastic = self.stochastic(settings, edit)
        if image_embed is None and self.prior is not None:
            image_embed = self.prior_pipeline.generate(
                text, negative, noise=noise["prior"], settings=settings["prior"], generators=gens,
                groups=batches(len(gens), batch_size, stochastic), stochastic=stochastic, callback=callback,
                progress=progress)
        return self.decoder_pipeline.generate(image_embed, noise=noise, settings=settings, generators=gens,
                                              text=text, negative=negative, callback=callback, progress=progress,
                                              batch_size=batch_size, stochastic=stochastic, edit=edit)

    @staticmethod
    def stochastic(settings: dict[str, dict], edit=None) -> bool:
        """Whether a run samples image by image: a stage's sampler (or the edit) draws noise at every step."""
        return any(is_stochastic(v["sampler"], v["eta"]) for v in settings.values()) or (
            edit is not None and edit.stochastic)

    @torch.no_grad()
    def embed(self, prompts: str | Sequence[str], *, negative_prompt: str | None = None,
              num_images_per_prompt: int = 1, seed: int | Sequence[int] | torch.Generator | None = None,
              callback: Callable | None = None, progress: bool = True, batch_size: int = 16,
              **stage_settings: Any) -> PipelineOutput:
        """The prior half alone: ``images`` holds the CLIP image embeddings z_i [N, D] (for ``decode``)."""
        if self.prior is None:
            raise UnclipError("this pipeline has no prior, so it cannot turn text into a CLIP image embedding")
        prompts = [p for p in check_captions(prompts) for _ in range(num_images_per_prompt)]
        settings = {"prior": self.resolve_settings(**stage_settings)["prior"]}
        seeds = make_seeds(seed, len(prompts))
        text = self.encoder.encode_text(prompts)
        negative = self.encoder.encode_text([negative_prompt] * len(prompts)) if negative_prompt else None
        stochastic = is_stochastic(settings["prior"]["sampler"], settings["prior"]["eta"])
        gens = generators(seeds, self.device)
        z = self.prior_pipeline.generate(text, negative, noise=self.prior_pipeline.noise(gens),
                                         settings=settings["prior"], generators=gens,
                                         groups=batches(len(seeds), batch_size, stochastic), stochastic=stochastic,
                                         callback=callback, progress=progress)
        return PipelineOutput(images=z, seeds=seeds, prompts=prompts, settings={"stages": settings})

    @torch.no_grad()
    def decode(self, image_embed: torch.Tensor, prompts: str | Sequence[str] | None = None, *,
               negative_prompt: str | None = None, seed: int | Sequence[int] | torch.Generator | None = None,
               callback: Callable | None = None, progress: bool = True, output_type: str = "pil",
               batch_size: int = 16, **stage_settings: Any) -> PipelineOutput:
        """The decoder half alone, from your own CLIP image embeddings ``image_embed`` [N, D] (and captions).

        Image i's noise is drawn as in text→image (the prior's first), so with deterministic samplers
        ``decode(embed(p, seed=s).images, p, seed=s)`` is ``pipe(p, seed=s)``."""
        if not self.decoder.model.config.image_embed_dim:
            raise UnclipError("this decoder is text-only (GLIDE-style); it takes no image embedding")
        image_embed = torch.as_tensor(image_embed, dtype=torch.float32).to(self.device)
        image_embed = image_embed[None] if image_embed.ndim == 1 else image_embed
        n = image_embed.shape[0]
        settings = self.resolve_settings(**{k: v for k, v in stage_settings.items() if not k.startswith("prior_")})
        settings.pop("prior", None)
        text = negative = None
        labels = [f"embedding {i + 1}" for i in range(n)]
        if prompts is not None:
            labels = check_captions(prompts)
            if len(labels) != n:
                raise UnclipError(f"got {len(labels)} prompts for {n} image embeddings; give one per embedding")
            text = self.encoder.encode_text(labels)
            negative = self.encoder.encode_text([negative_prompt] * n) if negative_prompt else None
        seeds = make_seeds(seed, n)
        images = self.sample(self.noise(seeds, with_prior=self.prior is not None), settings, text=text,
                             negative=negative, image_embed=image_embed, callback=callback, progress=progress,
                             batch_size=batch_size)
        info = {"operation": "decode", "negative_prompt": negative_prompt, "stages": settings, "model": self.name}
        return PipelineOutput(images=self.format(check_finite(images, self.name), output_type), seeds=seeds,
                              prompts=labels, settings=info)

    format = staticmethod(format_images)

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
        def write(tmp: Path) -> None:
            self.encoder.save(tmp / "encoder")
            self.decoder.save(tmp / "decoder")
            if self.prior is not None:
                self.prior.save(tmp / "prior")
            self.decoder_pipeline.check()
            for i, upsampler in enumerate(self.upsamplers):
                upsampler.save(tmp / upsampler_stage(i))
            atomic_write_text(tmp / "pipeline.json", json.dumps(self.describe(), indent=2, sort_keys=True) + "\n")

        return write_dir(directory, write, overwrite=overwrite)

    def describe(self) -> dict[str, Any]:
        """``pipeline.json``: version 2 lists the cascade's upsampler folders in ``"upsamplers"``."""
        parts = ("encoder",) + (("prior",) if self.prior is not None else ()) + ("decoder",)
        return {"kind": self.kind, "version": 2, "name": self.name, "image_size": self.image_size,
                "components": {s: s for s in parts},
                "upsamplers": [upsampler_stage(i) for i in range(len(self.upsamplers))],
                "defaults": self.defaults}

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
        folders = info.get("upsamplers", [parts["upsampler"]] if parts.get("upsampler") else [])  # version 1: one
        upsamplers = [Component.load(directory / folder, device) for folder in folders]
        return cls(encoder, decoder, prior=prior, upsamplers=upsamplers, defaults=info.get("defaults"),
                   name=info.get("name") or directory.name)


def _component_dir(path: str | Path, stage: str) -> Path:
    """RUNDIR, RUNDIR/final or the component folder → the folder holding model.safetensors."""
    path = Path(path)
    for candidate in (path, path / stage, path / "final" / stage):
        if (candidate / COMPONENT_FILE).is_file():
            return candidate
    raise UnclipError(f"no trained {stage} found at {path} (looked for model.safetensors in it, "
                      f"{stage}/ and final/{stage}/); train it with 'unclip train {stage}'")


def assemble_unclip(out_dir, *, encoder, decoder, prior=None, upsampler=None, defaults=None, name=None):
    """See ``unclip.pipelines.assemble``; ``upsampler`` is one path or a list (the cascade, in order)."""
    from unclip.encoders import load_encoder

    encoder_dir = Path(encoder)
    if (encoder_dir / "final" / "encoder").is_dir():
        encoder_dir = encoder_dir / "final" / "encoder"
    device = "cpu"
    ups = [] if not upsampler else list(upsampler) if isinstance(upsampler, (list, tuple)) else [upsampler]
    upsamplers = [Component.load(_component_dir(path, "upsampler"), device) for path in ups]
    parts = {"decoder": Component.load(_component_dir(decoder, "decoder"), device),
             "prior": load_prior_component(_component_dir(prior, "prior"), device) if prior else None,
             "upsampler": upsamplers[0] if upsamplers else None}
    merged = {}  # sampling defaults: each stage's own training-time settings (the first upsampler's), then the caller's
    for stage, part in parts.items():
        sample = part.info.get("sample", {}) if part is not None else {}
        keys = ("steps", "sampler", "spacing") + (("guidance_scale",) if stage != "upsampler" else ())
        merged[stage] = {k: sample[k] for k in keys if k in sample}
        merged[stage].update((defaults or {}).get(stage, {}))
    pipe = UnCLIPPipeline(load_encoder(encoder_dir, device=device), parts["decoder"], prior=parts["prior"],
                          upsamplers=upsamplers, defaults=merged, name=name or Path(out_dir).name)
    pipe.save(out_dir, overwrite=True)
    # Keep the encoder directory's extra files (e.g. embed_stats.safetensors) alongside the re-saved encoder.
    for extra in encoder_dir.iterdir():
        target = Path(out_dir) / "encoder" / extra.name
        if extra.is_file() and not target.exists():
            shutil.copy2(extra, target)
    return UnCLIPPipeline.load(out_dir)
