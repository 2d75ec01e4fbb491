"""Text–image agreement judged by an evaluation CLIP that never generated anything.

- CLIP score: 100 × mean cosine between each image's embedding and its prompt's
  (Hessel et al. 2021 use w·max(cos, 0); we report the plain scaled cosine, as
  most text-to-image papers do).
- R-precision: for each image, the prompt is ranked among itself and
  ``pool - 1`` other captions drawn from a caption pool; the score is the
  fraction of images whose prompt ranks first (Xu et al. 2018, AttnGAN §4). A tie with a
  distractor counts as a miss. When the pool holds fewer than ``pool`` distinct captions, each
  image is ranked among all of them: ``r_precision_pool`` gives that size, and reports record it.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["clip_score", "r_precision", "r_precision_pool"]


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def clip_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> float:
    """100 × mean cosine of matched rows of ``[N, D]`` image and text embeddings."""
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(f"shape mismatch: {tuple(image_embeds.shape)} vs {tuple(text_embeds.shape)}")
    return float(100 * (_unit(image_embeds) * _unit(text_embeds)).sum(-1).mean())


def r_precision_pool(caption_pool: list[str], pool: int = 100) -> int:
    """How many captions each image is ranked among: its prompt and up to ``pool - 1`` distractors."""
    return min(pool, len(set(caption_pool)))


def r_precision(
    image_embeds: torch.Tensor,
    prompts: list[str],
    caption_pool: list[str],
    pool_embeds: torch.Tensor,
    *,
    pool: int = 100,
    seed: int = 0,
) -> float:
    """Fraction of images whose prompt beats ``pool - 1`` distractor captions.

    ``caption_pool``/``pool_embeds`` ([M, D]) must contain every prompt; the
    distractors for an image are drawn (without replacement, seeded) from the
    pool's captions that differ from its prompt; with fewer than ``pool - 1`` of
    those, all of them are used (see ``r_precision_pool``). Ties are misses.
    """
    index = {caption: i for i, caption in enumerate(caption_pool)}
    missing = [p for p in prompts if p not in index]
    if missing:
        raise ValueError(f"prompt not in the caption pool: {missing[0]!r}")
    images, texts = _unit(image_embeds), _unit(pool_embeds)
    rng = np.random.default_rng(seed)
    hits = 0
    for row, prompt in enumerate(prompts):
        true = index[prompt]
        others = np.array([i for i, caption in enumerate(caption_pool) if caption != prompt])
        count = min(pool - 1, len(others))
        chosen = rng.choice(others, count, replace=False) if count else np.array([], dtype=int)
        candidates = torch.as_tensor(np.concatenate([[true], chosen]), dtype=torch.long)
        scores = texts[candidates] @ images[row]
        hits += int(scores[0] > scores[1:].max()) if count else 1
    return hits / len(prompts)
