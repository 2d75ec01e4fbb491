"""Request and response bodies of the HTTP API (pydantic; they make the OpenAPI docs).

Hard ranges come from the typed sampling settings (``unclip.pipelines.settings``: the steps and guidance
fields per stage, and the sampler names of ``unclip.diffusion.registry``, read when the schema is shown);
the server's own (tighter) limits from ``ServeConfig`` are checked in ``unclip.serve.app`` so one schema
serves every configuration.
Numbers are strict: ``"2"``, ``true`` or ``2.0`` for an integer is a 422, not a silent conversion.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, create_model, field_validator

from unclip.diffusion.registry import sampler_names
from unclip.limits import MAX_IMAGES
from unclip.pipelines.settings import FLAT, flat_names, help_of, limits


SeedField = StrictInt | Literal["random"] | None


SERVED_STAGE_SETTINGS = flat_names(fields=("steps", "guidance_scale"))  # prior_steps, ..., decoder_guidance


def _list_samplers(schema: dict, model=None) -> None:
    """The sampler names in the JSON schema, read from the registry each time the schema is built."""
    for option in schema.get("properties", {}).get("sampler", {}).get("anyOf", []):
        if option.get("type") == "string":
            option["enum"] = list(sampler_names())


class _SamplingBase(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_list_samplers)

    seed: SeedField = Field(None, description='integer in [0, 2^31-1], or "random"/null for a random seed '
                            "(the seed used is returned so the result can be reproduced)")
    sampler: str | None = Field(None, description="sampler of every stage (unCLIP: Gaussian samplers; "
                                "CLIP-VQDiffusion: discrete ones); null: the model's")

    @field_validator("sampler")
    @classmethod
    def _registered(cls, value: str | None) -> str | None:
        if value is not None and value not in sampler_names():
            raise ValueError(f"unknown sampler {value!r} (choose from: {', '.join(sampler_names())})")
        return value


def stage_field(name: str) -> tuple[type, Any]:
    """(annotation, Field) of a flat per-stage setting: its type and hard range from ``StageSampling``."""
    stage, field = FLAT[name]
    low, high = limits(field)
    kind = int if field == "steps" else float
    return kind | None, Field(None, ge=low, le=high, strict=True, description=f"{stage} {help_of(field)}")


SamplingIn = create_model("SamplingIn", __base__=_SamplingBase,
                          __doc__="Sampler, steps and guidance per stage; ``None`` uses the model's default.",
                          **{name: stage_field(name) for name in SERVED_STAGE_SETTINGS})


class GenerateIn(SamplingIn):
    """Text to image (unCLIP sec. 2: prior p(z_i|y) then decoder p(x|z_i, y))."""

    prompt: str = Field(..., min_length=1, max_length=2000, examples=["a large red circle in the center"])
    negative_prompt: str = Field("", max_length=2000, description="caption to steer away from (replaces the "
                                 "empty caption in classifier-free guidance)")
    num_images: int = Field(1, ge=1, le=MAX_IMAGES, strict=True)


class ProgressOut(BaseModel):
    stage: str = Field(description="the stage being sampled: prior, decoder, upsampler, ...")
    step: int
    total: int


class ImageOut(BaseModel):
    index: int
    seed: int = Field(description="the seed of this image's own generator")
    label: str = Field(description="prompt, or frame position for interpolations and text diffs")
    url: str = Field(description="the PNG, for as long as the job is kept")
    png_base64: str


class ResultOut(BaseModel):
    images: list[ImageOut]
    seed: int = Field(description="the request's seed; pass it back to repeat the result exactly")
    seeds: list[int]
    settings: dict = Field(description="every setting used, defaults filled in")
    command: str = Field(description="the equivalent 'unclip generate' command line")
    elapsed_s: float
    animation_url: str | None = None
    gif_base64: str | None = Field(None, description="ping-pong GIF of the frames (interpolate, text-diff)")
    strip_png_base64: str | None = Field(None, description="all frames side by side (interpolate, text-diff)")


class JobOut(BaseModel):
    job_id: str
    kind: Literal["generate", "variations", "interpolate", "text-diff", "img2img", "inpaint"]
    status: Literal["queued", "running", "done", "failed", "cancelled", "timeout"]
    position: int = Field(description="jobs ahead of this one (0 when running or next)")
    progress: ProgressOut
    status_url: str
    error: str | None = None
    result: ResultOut | None = None


class ErrorOut(BaseModel):
    error: str = Field(description="one line: what is wrong and how to fix it")
    status: int
