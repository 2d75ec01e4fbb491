"""Request and response bodies of the HTTP API (pydantic; they make the OpenAPI docs).

Hard ranges live here; the server's own (tighter) limits from ``ServeConfig``
are checked in ``unclip.serve.app`` so one schema serves every configuration.
Numbers are strict: ``"2"``, ``true`` or ``2.0`` for an integer is a 422, not a silent conversion.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from unclip.limits import MAX_IMAGES

SEED_MAX = 2**31 - 1  # as unclip.pipelines.unclip.SEED_MAX; image i uses seed + i

SeedField = StrictInt | Literal["random"] | None


class SamplingIn(BaseModel):
    """Steps and guidance per stage; ``None`` uses the model's default."""

    model_config = ConfigDict(extra="forbid")

    seed: SeedField = Field(None, description='integer in [0, 2^31-1], or "random"/null for a random seed '
                            "(the seed used is returned so the result can be reproduced)")
    prior_steps: int | None = Field(None, ge=1, le=1000, strict=True, description="diffusion prior sampling steps")
    decoder_steps: int | None = Field(None, ge=1, le=1000, strict=True, description="decoder sampling steps")
    upsampler_steps: int | None = Field(None, ge=1, le=1000, strict=True, description="upsampler sampling steps")
    prior_guidance: float | None = Field(None, ge=0, le=100, strict=True,
                                         description="classifier-free guidance scale of the prior")
    decoder_guidance: float | None = Field(None, ge=0, le=100, strict=True,
                                           description="classifier-free guidance scale of the decoder")


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
