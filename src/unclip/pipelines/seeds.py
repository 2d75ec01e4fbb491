"""Per-image seeds: how ``seed=`` becomes one seed and one generator per image (``seeds[i]`` reproduces image i).

A module of its own below the pipelines and their edits, which all draw their noise this way.
"""

from __future__ import annotations

import secrets
from typing import Sequence

import torch

from unclip.errors import UnclipError

__all__ = ["SEED_MAX", "make_seeds", "generators"]

SEED_MAX = 2**31 - 1


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


def generators(seeds: Sequence[int], device) -> list[torch.Generator]:
    """One generator per image, seeded by its seed: every stage's starting noise is drawn from it in order."""
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]
