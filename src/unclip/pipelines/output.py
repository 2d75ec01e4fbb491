"""``PipelineOutput``: what every pipeline call returns (its own module, so that the pipelines import it
without importing the package that loads them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["PipelineOutput"]


@dataclass
class PipelineOutput:
    """What every pipeline call returns.

    ``images``: list of PIL images (or a float array [N, H, W, 3] in [0, 1] for ``output_type="np"``,
    or a tensor [N, 3, H, W] in [-1, 1] for ``"pt"``); ``seeds[i]`` reproduces image i alone
    (same prompt and settings, ``num_images_per_prompt=1``, ``seed=seeds[i]``); ``prompts[i]`` is
    image i's prompt (or a label such as ``"frame 3"``); ``settings`` holds every value used.
    """

    images: Any
    seeds: list[int]
    prompts: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
