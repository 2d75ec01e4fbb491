"""Which real images FID/KID/precision/recall compare against: drawn per chosen prompt.

``unclip eval`` draws its prompts uniformly over a split's distinct captions and generates
``per_prompt`` images for each. The real reference must follow the same caption distribution, or
the metrics compare the model with a different population: on the shapes test split, 28% of the
distinct captions are withheld (shape, colour) pairs but 76% of the images are (each withheld
caption has 10 images, most others one), so a reference drawn uniformly over images was mostly
withheld pairs.

``select_reference`` therefore deals, for every prompt, ``per_prompt`` real images of that caption
to the reference (distinct while the caption has enough, then repeated, so the reference matches
the generated set prompt for prompt). The real-vs-real baseline is drawn the same way, per prompt,
from that caption's images the reference did not take; where none are left, from a substitute
caption of the split that is not a prompt (drawn in a seeded order, so it follows the same
distribution over captions). Reference and baseline never share an image.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["ReferenceDraw", "select_reference"]


@dataclass(frozen=True)
class ReferenceDraw:
    real: list[int]                 # dataset indices of the reference, per_prompt per prompt, in prompt order
    baseline: list[int]             # dataset indices of the real-vs-real baseline (may be shorter)
    real_distinct: int              # distinct images in ``real``
    baseline_same_caption: float    # share of baseline images whose caption is the prompt's own


def _deal(indices: list[int], count: int) -> list[int]:
    """``count`` items of ``indices``: each once while they last, then cycled."""
    return [indices[i % len(indices)] for i in range(count)]


def select_reference(captions: list[str], prompts: list[str], per_prompt: int, seed: int) -> ReferenceDraw:
    """Reference and baseline dataset indices for ``prompts`` (each a caption of ``captions``, the
    split's caption per dataset index), ``per_prompt`` images per prompt; seeded."""
    rng = random.Random(seed)
    by_caption: dict[str, list[int]] = {}
    for index, caption in enumerate(captions):
        by_caption.setdefault(caption, []).append(index)
    missing = [p for p in prompts if p not in by_caption]
    if missing:
        raise ValueError(f"prompt is not a caption of the split: {missing[0]!r}")
    for group in by_caption.values():
        rng.shuffle(group)
    substitutes = sorted(set(by_caption) - set(prompts))
    rng.shuffle(substitutes)
    real, baseline, same = [], [], 0
    for prompt in prompts:
        group = by_caption[prompt]
        taken = min(len(group), per_prompt)
        real += _deal(group, per_prompt)
        rest = group[taken:]
        if rest:
            baseline += _deal(rest, per_prompt)
            same += per_prompt
        elif substitutes:
            baseline += _deal(by_caption[substitutes.pop()], per_prompt)
    return ReferenceDraw(real=real, baseline=baseline, real_distinct=len(set(real)),
                         baseline_same_caption=same / len(baseline) if baseline else 0.0)
