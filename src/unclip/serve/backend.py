"""The one place the server meets the pipeline.

``Backend`` turns a validated request into a pipeline call and the pipeline's
output into a ``Result`` (PNG bytes, seeds, the equivalent CLI command). The
pipeline is anything that satisfies ``ServablePipeline``: the real
``unclip.pipelines`` objects, or a test double. The pipeline builds its own
``torch.Generator`` from the seed of each call (never the global RNG), so the
seed returned with a result reproduces it.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

from PIL import Image

from unclip.errors import UnclipError
from unclip.pipelines.settings import FLAT, flat_names, stage_of
from unclip.serve.images import gif_bytes, png_bytes, strip

Report = Callable[[str, int, int], None]  # (stage, step, total)
OPERATIONS = ("generate", "variations", "interpolate", "text-diff", "img2img", "inpaint")


class PipelineOutputLike(Protocol):
    images: list  # list[PIL.Image.Image]
    seeds: list  # list[int], one per image
    prompts: list  # list[str], one per image: its prompt or a label such as "frame 3"
    settings: dict  # every value used, defaults filled in


class ServablePipeline(Protocol):
    """What the server needs from a pipeline (``unclip.pipelines.unclip.UnCLIPPipeline``).

    Optional attributes: ``stages`` (e.g. ("prior", "decoder", "upsampler")), ``kind``,
    ``image_size``, ``defaults`` ({stage: {"steps", "guidance_scale", ...}}). Every call takes
    ``progress=False`` (no terminal progress bars in a server) and ``callback(stage, step, total, ...)``.
    """

    def __call__(self, prompts: Sequence[str], *, negative_prompt: str | None, num_images_per_prompt: int,
                 seed: int, callback: Callable | None, **steps_and_guidance) -> PipelineOutputLike: ...

    def variations(self, image: Image.Image, *, num_images: int, seed: int, callback: Callable | None,
                   **steps_and_guidance) -> PipelineOutputLike: ...

    def interpolate(self, image_a: Image.Image, image_b: Image.Image, *, num_frames: int, seed: int,
                    callback: Callable | None, **steps_and_guidance) -> PipelineOutputLike: ...

    def text_diff(self, image: Image.Image, from_caption: str, to_caption: str, *, num_frames: int,
                  seed: int, callback: Callable | None, **steps_and_guidance) -> PipelineOutputLike: ...

    # optional edits (unclip.pipelines.edits): img2img(image, prompt, *, strength, num_images, seed, callback, ...),
    # inpaint(image, mask, prompt, *, num_images, seed, callback, [resample], ...)


@dataclass(frozen=True)
class Sampling:
    """Seed plus the set sampling settings by flat name (``decoder_steps``, ``sampler``, ...; absent: the
    model's default), as ``unclip.pipelines.settings.FLAT`` names them."""

    seed: int
    values: Mapping[str, Any] = field(default_factory=dict)

    def pipeline_kwargs(self, stages: Sequence[str]) -> dict[str, Any]:
        """Set values for the stages the model has; ``prior_*`` only when there is a prior."""
        return {k: v for k, v in self.values.items() if stage_of(k) is None or stage_of(k) in stages}


@dataclass
class Result:
    images: list[bytes]  # PNG files
    seeds: list[int]
    labels: list[str]
    seed: int
    settings: dict
    command: str
    elapsed_s: float
    gif: bytes | None = None
    strip_png: bytes | None = None


class Backend:
    """Runs requests on ONE loaded pipeline; called from the single worker thread only."""

    def __init__(self, pipeline: ServablePipeline, *, model_ref: str):
        self.pipeline = pipeline
        self.model_ref = model_ref  # what the user passed to --model; goes into the CLI command

    # --- what the model can do ------------------------------------------
    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(getattr(self.pipeline, "stages", ("prior", "decoder", "upsampler")))

    def supports(self, operation: str) -> bool:
        method = {"generate": "__call__", "variations": "variations", "interpolate": "interpolate",
                  "text-diff": "text_diff", "img2img": "img2img", "inpaint": "inpaint"}[operation]
        return callable(getattr(self.pipeline, method, None))

    def defaults(self) -> dict:
        """Flat defaults {"prior_steps": 25, "prior_guidance": 2.0, ...} from the pipeline's per-stage ones."""
        flat = {}
        defaults = dict(getattr(self.pipeline, "defaults", None) or {})
        if "steps" in defaults and len(self.stages) == 1:  # one-stage pipelines (CLIP-VQDiffusion) keep them flat
            defaults = {self.stages[0]: defaults}
        for name in flat_names(self.stages, fields=("steps", "guidance_scale")):
            stage, setting = FLAT[name]
            values = defaults.get(stage)
            if isinstance(values, dict) and setting in values:
                flat[name] = values[setting]
        return flat

    def info(self) -> dict:
        defaults = self.defaults()
        return {
            "model": self.model_ref,
            "kind": getattr(self.pipeline, "kind", type(self.pipeline).__name__),
            "image_size": getattr(self.pipeline, "image_size", None),
            "stages": list(self.stages),
            "defaults": dict(defaults),
            "operations": [op for op in OPERATIONS if self.supports(op)],
        }

    # --- operations --------------------------------------------------------
    # Each builds the equivalent command of unclip.cli.generate (generate | vary | interpolate |
    # textdiff); uploads appear under their file names, which the user has locally.
    def generate(self, prompt: str, negative_prompt: str, num_images: int, sampling: Sampling,
                 report: Report) -> Result:
        start = time.perf_counter()
        kwargs = sampling.pipeline_kwargs(self.stages)
        output = self.pipeline([prompt], negative_prompt=negative_prompt or None,
                               num_images_per_prompt=num_images, seed=sampling.seed,
                               callback=_callback(report), progress=False, **kwargs)
        settings = {"prompt": prompt, "negative_prompt": negative_prompt, "num_images": num_images,
                    "seed": sampling.seed, **kwargs}
        args = ["generate", prompt, "--model", self.model_ref, "--num-images", str(num_images)]
        if negative_prompt:
            args += ["--negative-prompt", negative_prompt]
        return self._result(output, _labels(output, prompt), sampling, settings,
                            args + _sampling_args(sampling, kwargs), start)

    def variations(self, image: Image.Image, num_images: int, sampling: Sampling, report: Report, *,
                   image_name: str = "image.png") -> Result:
        self._require("variations")
        start = time.perf_counter()
        kwargs = _without_prior(sampling.pipeline_kwargs(self.stages))
        output = self.pipeline.variations(image, num_images=num_images, seed=sampling.seed,
                                          callback=_callback(report), progress=False, **kwargs)
        settings = {"num_images": num_images, "seed": sampling.seed, **kwargs}
        args = ["vary", image_name, "--model", self.model_ref, "--num-images", str(num_images)]
        return self._result(output, _labels(output, "variation"), sampling, settings,
                            args + _sampling_args(sampling, kwargs), start)

    def interpolate(self, image_a: Image.Image, image_b: Image.Image, num_frames: int, sampling: Sampling,
                    report: Report, *, image_names: tuple[str, str] = ("a.png", "b.png")) -> Result:
        self._require("interpolate")
        start = time.perf_counter()
        kwargs = _without_prior(sampling.pipeline_kwargs(self.stages))
        output = self.pipeline.interpolate(image_a, image_b, num_frames=num_frames, seed=sampling.seed,
                                           callback=_callback(report), progress=False, **kwargs)
        settings = {"num_frames": num_frames, "seed": sampling.seed, **kwargs}
        args = ["interpolate", *image_names, "--model", self.model_ref, "--frames", str(num_frames)]
        return self._frames(output, sampling, settings, args + _sampling_args(sampling, kwargs), start)

    def text_diff(self, image: Image.Image, from_caption: str, to_caption: str, num_frames: int,
                  sampling: Sampling, report: Report, *, image_name: str = "image.png") -> Result:
        self._require("text-diff")
        start = time.perf_counter()
        kwargs = _without_prior(sampling.pipeline_kwargs(self.stages))
        output = self.pipeline.text_diff(image, from_caption, to_caption, num_frames=num_frames,
                                         seed=sampling.seed, callback=_callback(report), progress=False, **kwargs)
        settings = {"from_caption": from_caption, "to_caption": to_caption, "num_frames": num_frames,
                    "seed": sampling.seed, **kwargs}
        args = ["textdiff", image_name, "--from", from_caption, "--to", to_caption, "--model", self.model_ref,
                "--frames", str(num_frames)]
        return self._frames(output, sampling, settings, args + _sampling_args(sampling, kwargs), start)

    def img2img(self, image: Image.Image, prompt: str | None, strength: float, num_images: int, sampling: Sampling,
                report: Report, *, image_name: str = "image.png") -> Result:
        """SDEdit (``unclip img2img``); without a prompt the image's own CLIP embedding (no prior)."""
        self._require("img2img")
        start = time.perf_counter()
        kwargs = sampling.pipeline_kwargs(self.stages)
        kwargs = kwargs if prompt else _without_prior(kwargs)
        output = self.pipeline.img2img(image, prompt, strength=strength, num_images=num_images, seed=sampling.seed,
                                       callback=_callback(report), progress=False, **kwargs)
        settings = {"prompt": prompt, "strength": strength, "num_images": num_images, "seed": sampling.seed, **kwargs}
        args = ["img2img", image_name, *([prompt] if prompt else []), "--model", self.model_ref,
                "--strength", f"{strength:g}", "--num-images", str(num_images)]
        return self._result(output, _labels(output, "img2img"), sampling, settings,
                            args + _sampling_args(sampling, kwargs), start)

    def inpaint(self, image: Image.Image, mask: Image.Image, prompt: str | None, num_images: int,
                resample: int | None, sampling: Sampling, report: Report, *, image_name: str = "image.png",
                mask_name: str = "mask.png") -> Result:
        """Inpainting (``unclip inpaint --mask``): RePaint for unCLIP, fixed tokens for CLIP-VQDiffusion."""
        self._require("inpaint")
        start = time.perf_counter()
        kwargs = sampling.pipeline_kwargs(self.stages)
        kwargs = kwargs if prompt else _without_prior(kwargs)
        extra = {"resample": resample} if resample is not None else {}
        output = self.pipeline.inpaint(image, mask, prompt, num_images=num_images, seed=sampling.seed,
                                       callback=_callback(report), progress=False, **extra, **kwargs)
        settings = {"prompt": prompt, "num_images": num_images, "seed": sampling.seed, **extra, **kwargs}
        args = ["inpaint", image_name, *([prompt] if prompt else []), "--mask", mask_name, "--model", self.model_ref,
                "--num-images", str(num_images)] + (["--resample", str(resample)] if resample is not None else [])
        return self._result(output, _labels(output, "inpaint"), sampling, settings,
                            args + _sampling_args(sampling, kwargs), start)

    # --- helpers -------------------------------------------------------------
    def _require(self, operation: str) -> None:
        if not self.supports(operation):
            raise UnclipError(f"this model ({self.info()['kind']}) does not support {operation}; "
                              "serve an unCLIP model for it")

    def _result(self, output, labels, sampling, settings, args, start) -> Result:
        images = [png_bytes(image) for image in output.images]
        used = getattr(output, "settings", None)
        settings = {**(dict(used) if isinstance(used, dict) else {}), **settings}  # the pipeline's defaults too
        seeds = [int(seed) for seed in getattr(output, "seeds", [])] or [sampling.seed] * len(images)
        return Result(images=images, seeds=seeds, labels=labels, seed=sampling.seed, settings=settings,
                      command=shlex.join(["unclip", *args]), elapsed_s=round(time.perf_counter() - start, 4))

    def _frames(self, output, sampling, settings, args, start) -> Result:
        frames = list(output.images)
        result = self._result(output, _labels(output, "frame"), sampling, settings, args, start)
        result.gif = gif_bytes(frames)
        result.strip_png = png_bytes(strip(frames))
        return result


def _without_prior(kwargs: dict) -> dict:
    """Image manipulations start from the image's own CLIP embedding: no prior settings."""
    return {name: value for name, value in kwargs.items() if not name.startswith("prior_")}


def _labels(output, fallback: str) -> list[str]:
    """One caption per image: the pipeline's prompt/label for it, else ``fallback``."""
    labels = [str(label) for label in (getattr(output, "prompts", None) or [])]
    n = len(output.images)
    return labels if len(labels) == n else [fallback if n == 1 else f"{fallback} {i + 1}" for i in range(n)]


def _callback(report: Report) -> Callable:
    """Adapt the pipeline's per-step callback to ``report(stage, step, total)``."""

    def callback(stage: str, step: int, total: int, *_: Any, **__: Any) -> None:
        report(str(stage), int(step), int(total))

    return callback


def _sampling_args(sampling: Sampling, kwargs: dict) -> list[str]:
    args = ["--seed", str(sampling.seed)]
    for name, value in kwargs.items():
        args += ["--" + name.replace("_", "-"), f"{value:g}" if isinstance(value, float) else str(value)]
    return args
