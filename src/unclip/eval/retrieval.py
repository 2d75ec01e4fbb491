"""How good is a CLIP encoder? Retrieval, zero-shot attributes, modality gap.

* Retrieval (Radford et al. 2021, sec. 3.1.4): text→image and image→text
  Recall@K among random pools of 100 pairs and among the whole split. A hit is
  any item with the same caption as the query (small grammars repeat captions).
* Zero-shot attribute classification on *shapes*: for each attribute, score the
  image against the captions that vary only that attribute (the other three
  kept at their true values) and take the argmax (Radford et al. 2021, sec. 3.1).
* Modality gap (Liang et al. 2022, "Mind the Gap"): mean cosine of matched
  text–image pairs versus image–image and text–text pairs, and the distance
  between the two centroids. CLIP-VQDiffusion (Kim et al. 2024, sec. 3) swaps
  image for text embeddings plus noise, which only works when this gap is small
  relative to the noise.

Run: ``python -m unclip.eval.retrieval --encoder DIR --data DIR [--split test]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["embed_dataset", "retrieval_metrics", "recall_at_k", "modality_gap", "zero_shot_shapes", "evaluate_encoder"]


@torch.no_grad()
def embed_dataset(encoder, dataset, *, max_items: int | None = None, batch_size: int = 64):
    """Image embeds [N,D], text embeds [N,D] (float32, CPU), captions and metas of the first N items."""
    n = len(dataset) if max_items is None else min(len(dataset), max_items)
    images, texts, captions, metas = [], [], [], []
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        batch_captions = [it["caption"] for it in items]
        images.append(encoder.encode_image(torch.stack([it["image"] for it in items])).float().cpu())
        texts.append(encoder.encode_text(batch_captions).embed.float().cpu())
        captions += batch_captions
        metas += [it.get("meta", {}) for it in items]
    return torch.cat(images), torch.cat(texts), captions, metas


def recall_at_k(query: torch.Tensor, keys: torch.Tensor, same: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of queries whose top-k keys (by cosine) contain a positive; ``same`` [Q,K] bool marks positives."""
    sims = F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).t()       # [Q, K]
    order = sims.argsort(dim=1, descending=True)                            # [Q, K]
    hits = torch.gather(same, 1, order)                                     # [Q, K] positive at rank r
    return {k: float(hits[:, :k].any(dim=1).float().mean()) for k in ks}


def retrieval_metrics(image_embed: torch.Tensor, text_embed: torch.Tensor, captions: Sequence[str], *,
                      pool: int = 100, ks: Sequence[int] = (1, 5), seed: int = 0) -> dict[str, float]:
    """t2i/i2t R@k among random pools of ``pool`` pairs and among all N pairs, plus the modality gap."""
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    caption_ids = torch.tensor([ids[c] for c in captions])
    n = len(caption_ids)
    metrics: dict[str, float] = {"n": float(n), "unique_captions": float(len(ids))}

    def add(prefix: str, idx: torch.Tensor, weight: float, acc: dict) -> None:
        same = caption_ids[idx][:, None] == caption_ids[idx][None, :]
        for direction, (q, k) in {"t2i": (text_embed[idx], image_embed[idx]),
                                  "i2t": (image_embed[idx], text_embed[idx])}.items():
            for kk, value in recall_at_k(q, k, same, ks).items():
                key = f"{direction}_r{kk}_{prefix}"
                acc[key] = acc.get(key, 0.0) + weight * value

    add("all", torch.arange(n), 1.0, metrics)
    if n >= pool:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        chunks = [perm[i:i + pool] for i in range(0, n - pool + 1, pool)]
        for chunk in chunks:
            add(str(pool), chunk, 1.0 / len(chunks), metrics)
    metrics.update(modality_gap(image_embed, text_embed))
    return metrics


def modality_gap(image_embed: torch.Tensor, text_embed: torch.Tensor) -> dict[str, float]:
    """Mean cosine of matched pairs, of distinct image pairs and text pairs, and the centroid gap."""
    image, text = F.normalize(image_embed.float(), dim=-1), F.normalize(text_embed.float(), dim=-1)
    n = len(image)
    off = ~torch.eye(n, dtype=torch.bool)
    return {
        "cos_matched": float((image * text).sum(-1).mean()),
        "cos_image_image": float((image @ image.t())[off].mean()) if n > 1 else float("nan"),
        "cos_text_text": float((text @ text.t())[off].mean()) if n > 1 else float("nan"),
        "cos_unmatched": float((image @ text.t())[off].mean()) if n > 1 else float("nan"),
        "centroid_gap": float((image.mean(0) - text.mean(0)).norm()),
    }


@torch.no_grad()
def zero_shot_shapes(encoder, image_embed: torch.Tensor, metas: Sequence[dict]) -> dict[str, float]:
    """Per-attribute zero-shot accuracy on shapes images (``metas`` hold the true attributes)."""
    from unclip.data.shapes import COLORS, POSITIONS, SHAPES, SIZES, all_combinations

    combos = all_combinations()
    index = {(s.shape, s.color, s.position, s.size): i for i, s in enumerate(combos)}
    text = torch.cat([encoder.encode_text([s.caption for s in combos[i:i + 128]]).embed.float().cpu()
                      for i in range(0, len(combos), 128)])                 # [480, D]
    sims = F.normalize(image_embed.float(), dim=-1) @ F.normalize(text, dim=-1).t()  # [N, 480]
    values = {"shape": SHAPES, "color": tuple(COLORS), "position": tuple(POSITIONS), "size": tuple(SIZES)}
    order = ("shape", "color", "position", "size")
    correct = {a: 0 for a in order}
    correct_all, counted = 0, 0
    for row, meta in enumerate(metas):
        if not all(a in meta for a in order):
            continue
        counted += 1
        truth = tuple(meta[a] for a in order)
        for pos, attribute in enumerate(order):
            candidates = [index[truth[:pos] + (v,) + truth[pos + 1:]] for v in values[attribute]]
            best = values[attribute][int(sims[row, candidates].argmax())]
            correct[attribute] += int(best == meta[attribute])
        correct_all += int(int(sims[row].argmax()) == index[truth])
    if not counted:
        return {}
    result = {f"zeroshot_{a}": correct[a] / counted for a in order}
    result["zeroshot_all480"] = correct_all / counted
    return result


def evaluate_encoder(encoder, dataset, *, max_items: int | None = None, pool: int = 100,
                     batch_size: int = 64) -> dict[str, float]:
    """Retrieval + gap on ``dataset``; zero-shot attributes too when items carry shapes metadata."""
    image_embed, text_embed, captions, metas = embed_dataset(encoder, dataset, max_items=max_items,
                                                             batch_size=batch_size)
    metrics = retrieval_metrics(image_embed, text_embed, captions, pool=pool)
    if metas and all(k in metas[0] for k in ("shape", "color", "position", "size")):
        metrics.update(zero_shot_shapes(encoder, image_embed, metas))
        withheld = torch.tensor([bool(m.get("withheld")) for m in metas])
        if withheld.any() and (~withheld).any():
            kept = [m for m, w in zip(metas, withheld) if w]
            sub = zero_shot_shapes(encoder, image_embed[withheld], kept)
            metrics.update({f"withheld_{k}": v for k, v in sub.items()})
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m unclip.eval.retrieval",
        description="Retrieval R@1/R@5 (among 100 and all), zero-shot shapes attributes and modality gap.",
        epilog="examples:\n  python -m unclip.eval.retrieval --encoder runs/clip-shapes/final/encoder "
               "--data data/shapes32 --split test",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", required=True, help="encoder directory (or hf:DIR)")
    parser.add_argument("--data", required=True, help="dataset directory")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-items", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=None, help="write the metrics as JSON here")
    args = parser.parse_args(argv)
    from unclip.data import open_dataset
    from unclip.encoders import load_encoder
    from unclip.errors import UnclipError

    try:
        encoder = load_encoder(args.encoder)
        dataset = open_dataset(args.data, split=args.split, image_size=encoder.image_size)
        metrics = evaluate_encoder(encoder, dataset, max_items=args.max_items, batch_size=args.batch_size)
    except UnclipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(metrics, indent=2, sort_keys=True)
    print(text)
    if args.out:
        from unclip.checkpoint import atomic_write_text

        atomic_write_text(Path(args.out), text + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
