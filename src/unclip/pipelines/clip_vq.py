"""``ClipVQPipeline``: text → CLIP text embedding → token transformer (discrete diffusion) → VQ decoder.

CLIP-VQDiffusion (Han et al. 2024, arXiv 2403.14944, Fig. 1): the transformer was trained on
(perturbed) CLIP *image* embeddings and is conditioned here on the CLIP *text* embedding of
the prompt (L2-normalised, as in training). Inference-only glue (house rule 8) over
``unclip.diffusion.discrete`` samplers, VQ-Diffusion's truncation and Improved VQ-Diffusion's
classifier-free guidance with the learned null condition (or a negative prompt's embedding).

Called like every text→image pipeline (docs/pipeline.md)::

    pipe = ClipVQPipeline.load("runs/clipvq-shapes/final")
    out = pipe(["a large red circle in the center"], num_images_per_prompt=4, seed=0,
               guidance_scale=3.0, truncation=0.9, steps=50, sampler="ancestral")

Image i is sampled with its own generator seeded by ``out.seeds[i]`` (rows of a batch draw
from their own generators), so ``seed=out.seeds[i], num_images_per_prompt=1`` reproduces it up to
float rounding of the batched networks (a token can flip only where two logits nearly tie).

Directory: ``pipeline.json`` (kind "clipvq", condition, info) + ``encoder/``, ``vq/model.safetensors`` and
``transformer/model.safetensors``, each one self-describing component file (``unclip.components``): the
transformer's holds the mask-and-replace process and the sampling defaults. Version 1 directories kept
those two in ``pipeline.json``; they still load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from unclip.atomic import write_dir
from unclip.checkpoint import atomic_write_text, load_model
from unclip.components import COMPONENT_FILE, load_component, save_component
from unclip.config import from_dict
from unclip.diffusion import discrete
from unclip.diffusion.discrete import DiscreteDiffusionConfig
from unclip.diffusion.registry import get_sampler
from unclip.encoders.base import check_captions
from unclip.errors import CheckpointError, UnclipError
from unclip.models.token_transformer import TokenTransformer
from unclip.models.vq import VQModel
from unclip.pipelines.manifest import read_pipeline_json
from unclip.pipelines.seeds import make_seeds
from unclip.pipelines.output import PipelineOutput
from unclip.pipelines.diffusers_compat import diffusers_call
from unclip.pipelines.images import check_finite, format_images
from unclip.pipelines.sampling import stage_callback
from unclip.precision import autocast, resolve_precision

__all__ = ["ClipVQPipeline", "DEFAULTS"]

DEFAULTS = {"steps": 50, "guidance_scale": 3.0, "truncation": 0.9, "sampler": "ancestral", "precision": "auto"}


class ClipVQPipeline:
    kind = "clipvq"
    # the token transformer plays the decoder's role, so `unclip generate --decoder-steps/--decoder-guidance`
    # reach it through the shared CLI
    stages = ("decoder",)

    def __init__(self, encoder, vq: VQModel, transformer: TokenTransformer, *,
                 diffusion: DiscreteDiffusionConfig = DiscreteDiffusionConfig(), condition: str = "image",
                 defaults: dict[str, Any] | None = None, info: dict[str, Any] | None = None, name: str = "clipvq"):
        self.encoder, self.vq, self.transformer = encoder, vq.eval(), transformer.eval()
        self.diffusion, self.condition = diffusion, condition
        self.defaults = {**DEFAULTS, **(defaults or {})}
        self.info, self.name = dict(info or {}), name
        if transformer.config.num_codes != vq.config.codebook_size:
            raise CheckpointError("the transformer and the VQ tokenizer disagree on the codebook size; "
                                  "rebuild the pipeline from one training run")
        self.schedule = discrete.mask_replace_schedule(vq.config.codebook_size, diffusion)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def image_size(self) -> int:
        return self.vq.config.image_size

    def resolve_settings(self, *, steps=None, guidance_scale=None, truncation=None, sampler=None,
                         decoder_steps=None, decoder_guidance=None, precision=None,
                         to_pixels: bool = True) -> dict[str, Any]:
        """Sampling settings over the defaults; ``to_pixels=False`` (``output_type="latent"``) keeps the codes."""
        s = dict(self.defaults)
        s["precision"] = resolve_precision(precision or s["precision"], self.device)
        for key, value in (("steps", steps if steps is not None else decoder_steps),
                           ("guidance_scale", guidance_scale if guidance_scale is not None else decoder_guidance),
                           ("truncation", truncation), ("sampler", sampler)):
            if value is not None:
                s[key] = value
        get_sampler(s["sampler"], "discrete")
        if not 1 <= int(s["steps"]) <= self.diffusion.num_steps:
            raise UnclipError(f"steps must be in [1, {self.diffusion.num_steps}], got {s['steps']}")
        if not 0.0 < float(s["truncation"]) <= 1.0:
            raise UnclipError(f"truncation must be in (0, 1], got {s['truncation']}")
        if float(s["guidance_scale"]) < 0:
            raise UnclipError(f"guidance_scale must be >= 0, got {s['guidance_scale']}")
        s["steps"] = int(s["steps"])
        if not to_pixels:
            s["to_pixels"] = False
        return s

    # --- text → image ----------------------------------------------------------------
    @diffusers_call
    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str], *, negative_prompt: str | None = None,
                 num_images_per_prompt: int = 1, seed: int | Sequence[int] | torch.Generator | None = None,
                 callback: Callable | None = None, progress: bool = True, output_type: str = "pil",
                 batch_size: int = 32, style: str | None = None, **settings: Any) -> PipelineOutput:
        """Generate ``num_images_per_prompt`` images per prompt.

        ``settings``: ``steps`` (alias ``decoder_steps``), ``guidance_scale`` (alias ``decoder_guidance``),
        ``truncation`` (r), ``sampler`` ("ancestral" or "purity"), ``precision`` ("auto", "fp32", "bf16"; see
        ``unclip.precision``). ``callback("decoder", step, total, codes)`` after every step.
        diffusers' names (``generator``, ``num_inference_steps``, ``callback_on_step_end``, ``return_dict``,
        ``output_type="latent"``: the token codes [N, seq_len]) are accepted too (``diffusers_compat``).
        ``style`` (e.g. "fluent"): each prompt becomes that style's caption (``unclip.pipelines.style``).
        """
        from unclip.pipelines.style import styled_prompts

        prompts = styled_prompts(check_captions(prompts), style)
        if not 1 <= num_images_per_prompt <= 256:
            raise UnclipError(f"num_images_per_prompt must be in [1, 256], got {num_images_per_prompt}")
        if negative_prompt is not None and not str(negative_prompt).strip():
            negative_prompt = None
        s = self.resolve_settings(**settings)
        image_prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        seeds = make_seeds(seed, len(image_prompts))
        cond, uncond = self._conditions(image_prompts, negative_prompt)
        chunks = range(0, len(seeds), batch_size)
        bar = tqdm(total=s["steps"] * len(chunks), desc="clipvq", disable=not progress, leave=False)
        images = []
        try:
            for start in chunks:
                rows = slice(start, start + batch_size)
                with autocast(s["precision"], self.device):
                    images.append(self._sample(seeds[rows], cond[rows] if cond is not None else None,
                                               uncond[rows] if uncond is not None else None, s, callback, bar))
        finally:
            bar.close()
        images = torch.cat(images)
        info = {"negative_prompt": negative_prompt, "num_images_per_prompt": num_images_per_prompt,
                "stages": {"decoder": s}, "model": self.name, "condition": self.condition, "style": style}
        return PipelineOutput(images=format_images(check_finite(images, self.name), output_type), seeds=seeds,
                              prompts=image_prompts, settings=info)

    def _conditions(self, prompts: list[str], negative_prompt: str | None):
        """Normalised CLIP text embeddings [B,D] of the prompts (and of the negative prompt, else None)."""
        if self.transformer.config.cond_dim == 0:
            return None, None
        if self.encoder is None:
            raise CheckpointError("this conditional CLIP-VQDiffusion pipeline has no encoder/; rebuild it")
        cond = F.normalize(self.encoder.encode_text(prompts).embed.float(), dim=-1).to(self.device)
        uncond = None
        if negative_prompt is not None:
            neg = self.encoder.encode_text([negative_prompt]).embed.float()
            uncond = F.normalize(neg, dim=-1).to(self.device).expand(len(prompts), -1)
        return cond, uncond

    def _sample(self, seeds, cond, uncond, s, callback, bar, known=None, keep=None) -> torch.Tensor:
        """Images [B,3,H,W] for one batch; ``known`` codes [B,N] are fixed where ``keep`` (inpainting)."""
        device = self.device
        generators = [torch.Generator(device).manual_seed(int(x)) for x in seeds]
        net = self.transformer

        def cond_fn(x_t, t):
            return torch.log_softmax(net(x_t, t, cond_embed=cond).float(), dim=1)

        def uncond_fn(x_t, t):  # the learned null condition, or the negative prompt's embedding
            return torch.log_softmax(net(x_t, t, cond_embed=uncond).float(), dim=1)

        model_fn = cond_fn if cond is None else discrete.guided_log_probs(cond_fn, uncond_fn, s["guidance_scale"])
        shape = (len(seeds), self.transformer.config.seq_len)
        codes = get_sampler(s["sampler"], "discrete").fn(
            model_fn, shape, self.schedule.to(device), steps=s["steps"], truncation=s["truncation"],
            generator=generators, device=device, callback=stage_callback("decoder", bar, callback), known=known,
            keep=keep)
        return self.vq.decode(codes).float() if s.get("to_pixels", True) else codes

    # --- edits (implemented in unclip.pipelines.edits) ---------------------------------
    def inpaint(self, image, mask, prompt: str | None = None, **kwargs) -> PipelineOutput:
        """Fixed-token inpainting: the VQ codes outside ``mask`` stay, the transformer fills the rest."""
        from unclip.pipelines.edits import inpaint_clipvq

        return inpaint_clipvq(self, image, mask, prompt, **kwargs)

    # --- save / load -------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """``pipeline.json`` (version 2: the noise process and defaults are in the transformer's file)."""
        return {"kind": self.kind, "version": 2, "name": self.name, "image_size": self.image_size,
                "components": {"encoder": "encoder" if self.encoder is not None else None,
                               "vq": "vq", "transformer": "transformer"},
                "condition": self.condition, "info": self.info}

    def save(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write the pipeline directory (a temp dir renamed into place)."""
        def write(tmp: Path) -> None:
            if self.encoder is not None:
                self.encoder.save(tmp / "encoder")
            save_component(tmp / "vq", self.vq, role="vq")
            save_component(tmp / "transformer", self.transformer, role="transformer", diffusion=self.diffusion,
                           sample_defaults=self.defaults)
            atomic_write_text(tmp / "pipeline.json", json.dumps(self.describe(), indent=2, sort_keys=True) + "\n")

        return write_dir(directory, write, overwrite=overwrite)

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> "ClipVQPipeline":
        from unclip.encoders import load_encoder

        directory = Path(directory)
        info = read_pipeline_json(directory)
        if info["kind"] != cls.kind:
            raise CheckpointError(f"{directory} holds a {info['kind']!r} pipeline, not a CLIP-VQDiffusion one")
        parts = info.get("components", {})
        for part in ("vq", "transformer"):
            if not (directory / parts.get(part, part) / COMPONENT_FILE).is_file():
                raise CheckpointError(f"{directory} lacks {part}/{COMPONENT_FILE}; rebuild the pipeline directory")
        vq = load_component(directory / parts.get("vq", "vq"), device=device, roles=("vq",), expected=VQModel).model
        folder = directory / parts.get("transformer", "transformer")
        if "diffusion" in info:  # version 1: the noise process and the defaults were kept in pipeline.json
            transformer = load_model(folder / COMPONENT_FILE, device=device, expected=TokenTransformer)
            diffusion, defaults = from_dict(DiscreteDiffusionConfig, info["diffusion"]), info.get("defaults")
        else:
            stored = load_component(folder, device=device, roles=("transformer",), expected=TokenTransformer)
            transformer, diffusion = stored.model, stored.diffusion
            defaults = {**stored.sample_defaults, **info.get("defaults", {})}
        encoder = load_encoder(directory / parts["encoder"], device=device) if parts.get("encoder") else None
        return cls(encoder, vq, transformer, diffusion=diffusion, condition=info.get("condition", "image"),
                   defaults=defaults, info=info.get("info"), name=info.get("name") or directory.name)
