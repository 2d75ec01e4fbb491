"""Limits of the web app and HTTP API (one frozen dataclass, house rule 3).

Every number a request can push on (images, steps, guidance, prompt length,
upload size, queue length, time) is bounded here, so a server started with
the defaults stays responsive on a 2-core CPU. The limits are also served at
``GET /api/info`` so the page can set its form ranges from them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from unclip.limits import MAX_IMAGE_PIXELS, MAX_IMAGES
from unclip.pipelines.settings import GUIDANCE_MAX, STEPS_MAX


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """Server limits. All fields are validated in ``__post_init__``."""

    host: str = "127.0.0.1"
    port: int = 7860
    max_queue: int = 8  # jobs waiting (not counting the running one); full -> HTTP 429
    time_limit_s: float = 120.0  # per request, counted from submission (queue wait + sampling)
    keep_results: int = 32  # finished jobs kept for polling; the oldest are dropped first
    max_prompt_chars: int = 300
    max_images: int = 8  # images per request (generate, variations); at most unclip.limits.MAX_IMAGES
    max_frames: int = 12  # frames of an interpolation or text diff
    max_steps: int = 250  # per stage; at most unclip.pipelines.settings.STEPS_MAX
    min_guidance: float = 0.0
    max_guidance: float = 20.0  # at most unclip.pipelines.settings.GUIDANCE_MAX, the pipeline's own limit
    max_upload_bytes: int = 8 * 1024 * 1024  # per uploaded file
    max_image_pixels: int = MAX_IMAGE_PIXELS  # checked from the header before decoding (unclip.imagefile)
    max_image_side: int = 1024  # larger uploads are downscaled once decoded, so queued jobs stay small

    def __post_init__(self):
        positive = ("max_queue", "keep_results", "max_prompt_chars", "max_images", "max_steps",
                    "max_upload_bytes", "max_image_pixels", "max_image_side")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_images > MAX_IMAGES:
            raise ValueError(f"max_images must be at most {MAX_IMAGES}, got {self.max_images}")
        if self.max_frames < 2:
            raise ValueError(f"max_frames must be at least 2, got {self.max_frames}")
        if not 0 < self.time_limit_s <= 3600:
            raise ValueError(f"time_limit_s must be in (0, 3600], got {self.time_limit_s}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if not 0 <= self.min_guidance <= self.max_guidance <= GUIDANCE_MAX:
            raise ValueError(f"guidance range must satisfy 0 <= min_guidance <= max_guidance <= {GUIDANCE_MAX:g}")
        if self.max_steps > STEPS_MAX:
            raise ValueError(f"max_steps must be at most {STEPS_MAX}, got {self.max_steps}")

    @property
    def is_loopback(self) -> bool:
        """True when ``host`` only accepts connections from this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def public(self) -> dict:
        """The limits a client may need to build a valid request."""
        return {
            "max_queue": self.max_queue,
            "time_limit_s": self.time_limit_s,
            "max_prompt_chars": self.max_prompt_chars,
            "max_images": self.max_images,
            "max_frames": self.max_frames,
            "max_steps": self.max_steps,
            "min_guidance": self.min_guidance,
            "max_guidance": self.max_guidance,
            "max_upload_bytes": self.max_upload_bytes,
            "max_image_pixels": self.max_image_pixels,
            "max_image_side": self.max_image_side,
        }
