"""``unclip eval``: generate from held-out prompts and score the samples.

For one pipeline and one dataset split this computes, side by side with the
real-vs-real baseline at the same sample size:
FID / KID / precision / recall / density / coverage in EfficientNet-Lite0
features (``unclip.eval.metrics``), diversity (mean pairwise feature distance
among one prompt's samples, beside the same among real images sharing one
caption, and optionally the decoder's own share: variations of one real image,
paper §3.1), CLIP score and R-precision by a separate
evaluation encoder (``unclip.eval.clip_metrics``), and, on the shapes dataset,
attribute accuracy by the independent judge (``unclip.eval.shapes_checker``).
A sweep re-runs the generation for each value of one pipeline setting.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from unclip.data import open_dataset
from unclip.data.shapes import parse_caption
from unclip.errors import DataError, UnclipError
from unclip.eval import metrics
from unclip.eval.clip_metrics import clip_score, r_precision, r_precision_pool
from unclip.eval.reference import select_reference

__all__ = ["EvalConfig", "choose_prompts", "evaluate_pipeline", "image_features", "load_split", "real_by_caption",
           "split_captions"]


@dataclass(frozen=True)
class EvalConfig:
    num_prompts: int = 50            # distinct held-out captions to generate from
    images_per_prompt: int = 2       # ≥ 2 gives the diversity metric
    split: str = "test"              # prompts and the real reference come from this split
    baseline_split: str = "val"      # real-vs-real baseline from here when `split` gives < 3 (unclip.eval.reference)
    seed: int = 0
    batch_size: int = 16
    feature_size: int = 128          # images are resized to this side for EfficientNet features
    decoder_diversity: bool = False  # also measure the decoder's own diversity (variations of a real image)
    recognisability: bool = False    # EfficientNet-Lite1 recognisability of samples and of variations
    reference_data: str = ""         # a larger build of the same dataset for its references ("": the data)
    settings: dict[str, Any] = field(default_factory=dict)  # pipeline settings (steps, guidance, sampler)

    def __post_init__(self):
        if self.num_prompts < 1 or self.images_per_prompt < 1:
            raise ValueError("num_prompts and images_per_prompt must be >= 1")


def split_captions(data: str | Path, split: str) -> list[str]:
    """Every caption of ``split`` without decoding an image."""
    dataset = open_dataset(data, split=split)
    if hasattr(dataset, "rows"):  # a built dataset keeps its index rows
        return [row["caption"] for row in dataset.rows]
    if hasattr(dataset, "captions"):  # a folder of images
        return list(dataset.captions)
    return [sample["caption"] for sample in dataset]


def load_split(data: str | Path, split: str, limit: int | None, seed: int) -> tuple[torch.Tensor | None, list[str]]:
    """Up to ``limit`` images ([N,3,H,W] in [-1,1]) and captions of ``split``, in a seeded order."""
    try:
        dataset = open_dataset(data, split=split)
    except DataError:
        return None, []
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    order = order[:limit] if limit else order
    if not order:
        return None, []
    samples = [dataset[i] for i in order]
    return torch.stack([s["image"] for s in samples]), [s["caption"] for s in samples]


def _images(data: str | Path, split: str, indices: list[int]) -> torch.Tensor | None:
    """Images [N,3,H,W] in [-1,1] of ``split`` at dataset ``indices`` (each decoded once)."""
    if not indices:
        return None
    dataset = open_dataset(data, split=split)
    decoded = {i: dataset[i]["image"] for i in set(indices)}
    return torch.stack([decoded[i] for i in indices])


@lru_cache(maxsize=1)
def _cached_extractor():
    from unclip.models.perceptual import load_efficientnet_features

    return load_efficientnet_features("cpu")


@torch.no_grad()
def image_features(images: torch.Tensor, extractor, size: int, batch_size: int = 32) -> np.ndarray:
    """Pooled EfficientNet-Lite0 features [N, 1280] of images [N,3,H,W] in [-1,1]."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].float()
        if batch.shape[-1] != size:
            batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)
        pooled, _ = extractor(batch)
        out.append(pooled.cpu().numpy())
    return np.concatenate(out)


def _distribution_metrics(real: np.ndarray, other: np.ndarray) -> dict[str, float]:
    kid_mean, _ = metrics.kid(real, other, subsets=20)  # subsets of 100, at most half the set (kid_subset_size)
    precision, recall = metrics.precision_recall(real, other, k=min(3, len(real) - 1))
    density, coverage = metrics.density_coverage(real, other, k=min(5, len(real) - 1))
    return {"fid": metrics.fid(real, other), "kid": kid_mean, "precision": precision, "recall": recall,
            "density": density, "coverage": coverage}


def choose_prompts(captions: list[str], count: int, seed: int) -> list[str]:
    unique = sorted(set(c for c in captions if c.strip()))
    if not unique:
        raise UnclipError("the evaluation split has no captions to prompt with; pick a captioned dataset")
    random.Random(seed).shuffle(unique)
    return unique[:count]


def evaluate_pipeline(pipe, data: str | Path, config: EvalConfig, *, eval_encoder=None, extractor=None,
                      log: Callable[[str], None] = print) -> tuple[dict[str, Any], torch.Tensor, list[str]]:
    """Generate from ``config.num_prompts`` held-out captions and score them.

    Returns (metrics, generated images [N,3,H,W] in [-1,1], the prompt of each image).
    """
    if extractor is None:
        extractor = _cached_extractor()
    captions = split_captions(data, config.split)
    prompts = choose_prompts(captions, config.num_prompts, config.seed)
    log(f"generating {len(prompts)} prompts x {config.images_per_prompt} images")
    started, cpu_started = time.perf_counter(), time.process_time()
    output = pipe(prompts, num_images_per_prompt=config.images_per_prompt, seed=config.seed, output_type="pt",
                  progress=False, batch_size=config.batch_size, **config.settings)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    fake = output.images.float().cpu()
    fake_prompts = list(output.prompts)
    count = len(fake)
    # Real reference and real-vs-real baseline, drawn per prompt (unclip.eval.reference): the same
    # captions as the generated set, disjoint images; the baseline comes from baseline_split only
    # when the split cannot give 3 baseline images.
    draw = select_reference(captions, prompts, config.images_per_prompt, config.seed + 1)
    real = _images(data, config.split, draw.real)
    if len(draw.baseline) >= 3:
        baseline, result_baseline = _images(data, config.split, draw.baseline), config.split
    else:
        baseline, _ = load_split(data, config.baseline_split, count, config.seed + 2)
        result_baseline = config.baseline_split
    if real is None or len(set(draw.real)) < 3:
        raise UnclipError(f"split {config.split!r} of {data} has fewer than 3 images of the prompts to compare against")
    size = config.feature_size
    real_feats = image_features(real, extractor, size)
    fake_feats = image_features(fake, extractor, size)
    result: dict[str, Any] = {"n_generated": count, "n_real": len(real), "n_real_distinct": draw.real_distinct,
                              "reference": "per prompt", "n_prompts": len(prompts),
                              "image_size": int(fake.shape[-1]), "seconds_per_image": seconds / count,
                              "cpu_seconds_per_image": cpu_seconds / count,
                              "images_per_prompt": config.images_per_prompt, "seed": config.seed,
                              "split": config.split, "settings": dict(config.settings)}
    result.update(_distribution_metrics(real_feats, fake_feats))
    result["kid_subset_size"] = metrics.kid_subset_size(len(real_feats), len(fake_feats))
    if baseline is not None and len(baseline) >= 3:
        base_feats = image_features(baseline, extractor, size)
        result.update({f"baseline_{k}": v for k, v in _distribution_metrics(real_feats, base_feats).items()})
        result["n_baseline"] = len(baseline)
        result["baseline_split"] = result_baseline
        if result_baseline == config.split:
            result["baseline_same_caption"] = draw.baseline_same_caption
    by_caption = None
    if config.images_per_prompt >= 2 or eval_encoder is not None:
        by_caption = real_by_caption(data, config.split, prompts, max(config.images_per_prompt, 1))
    if config.images_per_prompt >= 2:
        per_prompt = fake_feats.reshape(len(prompts), config.images_per_prompt, -1)
        result["diversity"] = float(np.mean([metrics.mean_pairwise_distance(f) for f in per_prompt]))
        real_groups = [image_features(torch.stack(v), extractor, size) for v in by_caption.values() if len(v) >= 2]
        if real_groups:
            result["real_diversity"] = float(np.mean([metrics.mean_pairwise_distance(f) for f in real_groups]))
        if config.decoder_diversity:
            result["decoder_diversity"] = _decoder_diversity(pipe, by_caption, config, extractor)
    if eval_encoder is not None:
        result.update(_clip_metrics(eval_encoder, fake, fake_prompts, captions, config.seed))
        # the same scores for the real images of these prompts: the ceiling the eval CLIP allows
        real_prompts = [caption for caption, group in by_caption.items() for _ in group]
        if real_prompts:
            real_images = torch.stack([image for group in by_caption.values() for image in group])
            real_scores = _clip_metrics(eval_encoder, real_images, real_prompts, captions, config.seed)
            result.update({f"real_{k}": v for k, v in real_scores.items() if k != "r_precision_pool"})
        if result["r_precision_pool"] < 100:
            log(f"R-precision ranks among {result['r_precision_pool']} captions: the split has fewer than 100")
    shapes = _shapes_accuracy(fake, fake_prompts)
    if shapes:
        result.update(shapes)
    if config.recognisability:
        result.update(_recognisability(pipe, data, config, prompts, fake, fake_prompts))
    return result, fake, fake_prompts


def _recognisability(pipe, data, config: EvalConfig, prompts: list[str], fake: torch.Tensor,
                     fake_prompts: list[str]) -> dict[str, float]:
    """``unclip.eval.recognisability`` rates of the samples and, for an unCLIP decoder, of one variation
    (paper §3.1: decoded from the real image's own CLIP embedding) of each prompt's real image."""
    from unclip.eval.recognisability import load_recogniser, recognition_rates
    from unclip.pipelines.manipulate import variations

    recogniser = load_recogniser()
    references = real_by_caption(config.reference_data or data, config.split, prompts, 1)
    keep = [i for i, p in enumerate(fake_prompts) if p in references]
    if not keep:
        raise UnclipError(f"no reference images for the prompts in {config.reference_data or data}; "
                          "--reference-data must be a build of the same dataset")
    refs = torch.stack([references[fake_prompts[i]][0] for i in keep])
    rates = recognition_rates(recogniser, fake[keep], refs, [fake_prompts[i] for i in keep], seed=config.seed)
    out = {"recognised": rates["recognised"], "recognised_ceiling": rates["ceiling"],
           "recognised_chance": rates["chance"], "recognised_n": rates["n"]}
    if getattr(pipe.decoder.model.config, "image_embed_dim", 0):
        own = real_by_caption(data, config.split, prompts, 1)
        shown = [p for p in prompts if p in own and p in references]
        settings = {k: v for k, v in config.settings.items() if not k.startswith("prior_")}
        images = [variations(pipe, own[p][0], num_images=1, seed=config.seed + i, progress=False,
                             output_type="pt", **settings).images[0] for i, p in enumerate(shown)]
        if images:
            var = recognition_rates(recogniser, torch.stack(images).float().cpu(),
                                    torch.stack([references[p][0] for p in shown]), shown, seed=config.seed)
            out.update(variation_recognised=var["recognised"], variation_recognised_chance=var["chance"])
    return out


@torch.no_grad()
def _clip_metrics(encoder, images: torch.Tensor, prompts: list[str], pool: list[str], seed: int) -> dict[str, float]:
    pool = sorted(set(pool) | set(prompts))
    size = encoder.image_size
    resized = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    image_embeds = torch.cat([encoder.encode_image(resized[i : i + 64]) for i in range(0, len(resized), 64)])
    pool_embeds = torch.cat([encoder.encode_text(pool[i : i + 256]).embed for i in range(0, len(pool), 256)])
    index = {c: i for i, c in enumerate(pool)}
    text_embeds = pool_embeds[[index[p] for p in prompts]]
    return {"clip_score": clip_score(image_embeds, text_embeds),
            "r_precision": r_precision(image_embeds, prompts, pool, pool_embeds, pool=100, seed=seed),
            "r_precision_pool": r_precision_pool(pool, 100)}


def _shapes_accuracy(images: torch.Tensor, prompts: list[str]) -> dict[str, float] | None:
    try:
        for prompt in prompts:
            parse_caption(prompt)
    except DataError:
        return None
    from unclip.eval.shapes_checker import score_images

    return {f"shapes_{k}": v for k, v in score_images(list(images), prompts).items()}


def real_by_caption(data: str | Path, split: str, prompts: list[str], limit: int) -> dict[str, list[torch.Tensor]]:
    """Up to ``limit`` real images [3,H,W] of ``split`` for each prompt that is one of its captions."""
    dataset = open_dataset(data, split=split)
    wanted = set(prompts)
    found: dict[str, list[torch.Tensor]] = {}
    rows = getattr(dataset, "rows", None)
    indices = range(len(dataset)) if rows is None else [i for i, r in enumerate(rows) if r["caption"] in wanted]
    for index in indices:
        sample = dataset[index]
        group = found.setdefault(sample["caption"], []) if sample["caption"] in wanted else None
        if group is not None and len(group) < limit:
            group.append(sample["image"])
    return found


def _decoder_diversity(pipe, by_caption: dict[str, list[torch.Tensor]], config: EvalConfig, extractor) -> float | None:
    """Diversity the decoder adds alone: ``images_per_prompt`` variations (paper §3.1) of one real image
    per prompt, i.e. one fixed CLIP image embedding z_i decoded from different noise."""
    from unclip.pipelines.manipulate import variations

    if not getattr(pipe.decoder.model.config, "image_embed_dim", 0):
        return None  # a text-only (GLIDE-style) decoder has no z_i to hold fixed
    settings = {k: v for k, v in config.settings.items() if not k.startswith("prior_")}
    scores = []
    for offset, images in enumerate(by_caption.values()):
        out = variations(pipe, images[0], num_images=config.images_per_prompt, seed=config.seed + 1000 * offset,
                         progress=False, output_type="pt", **settings)
        feats = image_features(out.images.float().cpu(), extractor, config.feature_size)
        scores.append(metrics.mean_pairwise_distance(feats))
    return float(np.mean(scores)) if scores else None
