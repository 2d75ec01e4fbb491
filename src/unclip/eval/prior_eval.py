"""How good is a prior? Held-out captions scored against their true CLIP image embeddings.

For each held-out (caption, image) pair the prior samples an image embedding from the caption
(Ramesh et al. 2022, §2.1). Reported per method:

* ``cosine``: cosine(sampled image embedding, true image embedding), averaged;
* retrieval of the true image among all evaluated images using the sampled embedding as the
  query: ``mean_rank``, ``median_rank`` (1 = best), ``top1``, ``top5`` (fractions).

Baselines in the same table: ``text_embedding`` (the caption's CLIP text embedding used directly
as the image embedding: the paper's "caption embedding" ablation, §5.1 / Fig. 6) and
``mean_image_embedding`` (the training set's mean image embedding, the same for every caption).
``caption_oracle`` is a ceiling, not a method: the mean held-out image embedding of the images that
share the caption (several images often share one caption, which also caps top-1 retrieval).
``same_caption_image`` is the level of an ideal sampler: another held-out image with the same caption
(scored on the rows whose caption has one).

When captions repeat, image-level retrieval is capped (no caption-conditioned method can tell apart
two images of one caption), so the table adds caption-level retrieval: ``caption_top1`` /
``caption_mean_rank`` rank the *best* image sharing the query's caption, i.e. whether the embedding
retrieves an image of the right caption. ``differences`` holds prior − text embedding per query, with a
paired bootstrap 95% interval of the mean (Efron & Tibshirani 1993, percentile interval), so a "win" on a
metric is one whose interval excludes 0.

    python -m unclip.eval.prior_eval --prior runs/prior-shapes --embeddings data/emb/shapes32 --split test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from unclip.diffusion.registry import sampler_names
from unclip.diffusion.schedule import SPACINGS
from unclip.errors import UnclipError

__all__ = ["embedding_metrics", "per_query_metrics", "paired_bootstrap", "evaluate_prior", "resolve_prior_path", "format_table", "main"]


def per_query_metrics(pred: torch.Tensor, true_image: torch.Tensor, rows: torch.Tensor | None = None,
                      captions: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Per-query scores of predicted embeddings pred [M, D] against the gallery true_image [N, D].

    Query k's true image is gallery row ``rows[k]`` (default: k). Returns float tensors [M]: ``cosine``,
    ``rank`` (1 = best; ties count in our favour) and, with ``captions`` (one per gallery row),
    ``caption_rank``: the rank of the best-scoring gallery image that shares the query's caption, among
    the images of other captions.
    """
    pred, gallery = F.normalize(pred.float().cpu(), dim=-1), F.normalize(true_image.float().cpu(), dim=-1)
    rows = torch.arange(len(gallery)) if rows is None else rows.cpu()
    cosine = (pred * gallery[rows]).sum(-1)
    sims = pred @ gallery.T                                               # (M, N): query k vs image j
    # Rank against the true image's entry of the same matmul: the elementwise cosine above can differ from
    # it in the last bits, which would count the true image as beating itself.
    own = sims.gather(1, rows[:, None])
    out = {"cosine": cosine, "rank": 1 + (sims > own).sum(1).float()}
    if captions is not None:
        ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        labels = torch.tensor([ids[c] for c in captions])
        same = labels[rows][:, None] == labels[None, :]
        best_same = sims.masked_fill(~same, float("-inf")).amax(1)
        out["caption_rank"] = 1 + (sims.masked_fill(same, float("-inf")) > best_same[:, None]).sum(1).float()
    return out


def _summarise(per: dict[str, torch.Tensor]) -> dict[str, float]:
    cosine, rank = per["cosine"], per["rank"]
    out = {"cosine": float(cosine.mean()), "cosine_std": float(cosine.std()) if len(cosine) > 1 else 0.0,
           "mean_rank": float(rank.mean()), "median_rank": float(rank.median()),
           "top1": float((rank <= 1).float().mean()), "top5": float((rank <= 5).float().mean())}
    if "caption_rank" in per:
        out.update(caption_top1=float((per["caption_rank"] <= 1).float().mean()),
                   caption_mean_rank=float(per["caption_rank"].mean()))
    return out


def embedding_metrics(pred: torch.Tensor, true_image: torch.Tensor, rows: torch.Tensor | None = None,
                      captions: Sequence[str] | None = None) -> dict[str, float]:
    """Cosine and retrieval metrics of predicted embeddings pred [N, D] against true_image [N, D] (row i ↔ i).

    ``rows`` (LongTensor [M]) scores only those queries (pred [M, D] then), still against all N images.
    ``captions`` (one per gallery row) adds caption-level retrieval (``caption_top1``, ``caption_mean_rank``).
    """
    return _summarise(per_query_metrics(pred, true_image, rows, captions))


def _per_query_values(per: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The per-query values whose means are the table's metrics."""
    out = {"cosine": per["cosine"], "mean_rank": per["rank"], "top1": (per["rank"] <= 1).float(),
           "top5": (per["rank"] <= 5).float()}
    if "caption_rank" in per:
        out.update(caption_top1=(per["caption_rank"] <= 1).float(), caption_mean_rank=per["caption_rank"])
    return out


def paired_bootstrap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], *, resamples: int = 2000,
                     seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean of a − b per metric over the same queries, with a paired bootstrap 95% percentile interval.

    ``a`` and ``b`` come from ``per_query_metrics`` on the same queries. Returns
    {metric: {"diff", "low", "high"}} for cosine, mean_rank, top1, top5 (and the caption-level ones).
    """
    va, vb = _per_query_values(a), _per_query_values(b)
    n = len(a["cosine"])
    picks = torch.randint(0, n, (resamples, n), generator=torch.Generator().manual_seed(seed))
    out = {}
    for key in va.keys() & vb.keys():
        diff = (va[key] - vb[key]).double()
        means = diff[picks].mean(1)
        low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        out[key] = {"diff": float(diff.mean()), "low": low, "high": high}
    return out


@torch.no_grad()
def evaluate_prior(
    prior: torch.nn.Module,
    rows: Any,
    *,
    max_items: int | None = 500,
    sampler: str = "ddim",
    steps: int = 64,
    guidance_scale: float = 2.0,
    num_candidates: int = 2,
    batch_size: int = 256,
    seed: int = 0,
    spacing: str = "trailing",
) -> dict[str, Any]:
    """Score ``prior`` and the two baselines on ``rows`` (``EmbeddingRows``: .tensors with image_embed,
    text_embed, text_tokens, text_mask). Returns {"items", "prior", "text_embedding",
    "mean_image_embedding", "seconds_per_embedding", "cpu_seconds_per_embedding", "settings"}.

    ``seconds_per_embedding`` is wall time; ``cpu_seconds_per_embedding`` is this process's CPU time,
    which a shared machine inflates far less (with one thread it is the time an idle core would take)."""
    from unclip.encoders.base import TextEncoding
    from unclip.models.prior import sample_prior

    tensors = rows.tensors
    n_all = len(tensors["image_embed"])
    n = n_all if not max_items else min(n_all, max_items)
    index = torch.linspace(0, n_all - 1, n).round().long()               # evenly spaced, deterministic
    device = prior.image_mean.device
    pick = {k: v[index].to(device) for k, v in tensors.items()}
    generator = torch.Generator(device).manual_seed(seed)
    samples = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for lo in range(0, n, batch_size):
        part = slice(lo, lo + batch_size)
        text = TextEncoding(embed=pick["text_embed"][part], tokens=pick["text_tokens"][part], mask=pick["text_mask"][part])
        noise = torch.randn(text.embed.shape, generator=generator, device=device)
        samples.append(sample_prior(prior, text, noise=noise, num_candidates=num_candidates, steps=steps,
                                    sampler=sampler, guidance_scale=guidance_scale, generator=generator,
                                    spacing=spacing))
    seconds = (time.perf_counter() - start) / n
    cpu_seconds = (time.process_time() - cpu_start) / n
    sampled = torch.cat(samples)
    true_image = pick["image_embed"]
    mean_image = prior.image_mean.float()[None].expand_as(true_image)
    captions = getattr(rows, "captions", None)
    chosen = [captions[i] for i in index.tolist()] if captions else []
    repeated = len(set(chosen)) < len(chosen)             # caption-level scores only mean something then
    per_caption = chosen if repeated else None
    per_prior = per_query_metrics(sampled, true_image, captions=per_caption)
    per_text = per_query_metrics(pick["text_embed"], true_image, captions=per_caption)
    result = {
        "items": n,
        "prior": _summarise(per_prior),
        "text_embedding": _summarise(per_text),
        "mean_image_embedding": embedding_metrics(mean_image, true_image, captions=per_caption),
        "differences": {"prior_minus_text_embedding": paired_bootstrap(per_prior, per_text, seed=seed)},
        "seconds_per_embedding": seconds,
        "cpu_seconds_per_embedding": cpu_seconds,
        "settings": {"sampler": sampler, "steps": steps, "spacing": spacing, "guidance_scale": guidance_scale,
                     "num_candidates": num_candidates, "device": str(device)},
    }
    if repeated:  # only meaningful when several images share a caption
        result["caption_oracle"] = embedding_metrics(_caption_means(true_image, chosen), true_image, captions=chosen)
        others, rows_with_others = _other_image_of_caption(true_image, chosen)
        if len(rows_with_others):
            result["same_caption_image"] = embedding_metrics(others, true_image, rows_with_others, captions=chosen)
    return result


def _other_image_of_caption(image_embed: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows whose caption has another held-out image: the next such image (what an ideal sampler of
    P(z_i | caption) would return, in distribution). Returns (embeds [M, D], row indices [M])."""
    groups: dict[str, list[int]] = {}
    for i, caption in enumerate(captions):
        groups.setdefault(caption, []).append(i)
    rows, picks = [], []
    for members in groups.values():
        if len(members) > 1:
            for k, i in enumerate(members):
                rows.append(i)
                picks.append(members[(k + 1) % len(members)])
    order = torch.tensor(rows, dtype=torch.long)
    return image_embed[torch.tensor(picks, dtype=torch.long)], order


def _caption_means(image_embed: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Each row replaced by the mean (normalised) image embedding of the rows sharing its caption.

    A ceiling, not a method: it peeks at the held-out images. No caption-conditioned predictor
    can beat it on cosine, since it is E[z_i | caption] on this set.
    """
    normed = F.normalize(image_embed.float(), dim=-1)
    groups: dict[str, list[int]] = {}
    for i, caption in enumerate(captions):
        groups.setdefault(caption, []).append(i)
    out = torch.empty_like(normed)
    for members in groups.values():
        out[members] = normed[members].mean(0)
    return out


def resolve_prior_path(path: str | Path) -> Path:
    """A prior model file from a file, a prior directory, or a training run directory."""
    path = Path(path)
    for candidate in (path, path / "model.safetensors", path / "prior" / "model.safetensors",
                      path / "final" / "prior" / "model.safetensors"):
        if candidate.is_file():
            return candidate
    raise UnclipError(f"no prior model under {path} (expected RUNDIR/final/prior/model.safetensors; "
                      "train one with 'unclip train prior')")


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of the methods, then prior − text embedding with its bootstrap interval."""
    cpu = result.get("cpu_seconds_per_embedding")
    cpu_text = f" wall, {cpu * 1000:.2f} ms CPU" if cpu is not None else ""
    by_caption = "caption_top1" in result["prior"]
    extra = " caption top-1 | caption mean rank |" if by_caption else ""
    lines = [f"held-out captions: {result['items']}  |  sampling: {result['seconds_per_embedding'] * 1000:.2f} ms"
             f"{cpu_text} per embedding ({result['settings']})", "",
             "| method | cosine to true image embed | mean rank | median rank | top-1 | top-5 |" + extra,
             "|---|---|---|---|---|---|" + "---|" * (2 if by_caption else 0)]
    for key, label in (("prior", "prior"), ("text_embedding", "text embedding as image embedding"),
                       ("mean_image_embedding", "mean image embedding"),
                       ("same_caption_image", "reference: another test image of the same caption"),
                       ("caption_oracle", "ceiling: mean test image embed of the same caption")):
        if key not in result:
            continue
        m = result[key]
        row = (f"| {label} | {m['cosine']:.3f} | {m['mean_rank']:.1f} | {m['median_rank']:.0f} | "
               f"{m['top1']:.3f} | {m['top5']:.3f} |")
        if by_caption:
            row += f" {m['caption_top1']:.3f} | {m['caption_mean_rank']:.1f} |"
        lines.append(row)
    diffs = result.get("differences", {}).get("prior_minus_text_embedding")
    if diffs:
        cells = [f"{key} {d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
                 for key in ("cosine", "mean_rank", "top1", "top5", "caption_top1", "caption_mean_rank")
                 if (d := diffs.get(key))]
        lines += ["", "prior − text embedding, mean over the same captions [paired bootstrap 95% interval]: "
                  + "; ".join(cells)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unclip.eval.prior_eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="examples:\n  python -m unclip.eval.prior_eval --prior runs/prior-shapes "
                                            "--embeddings data/emb/shapes32 --split test --items 500")
    parser.add_argument("--prior", required=True, help="prior model file, prior dir, or training run dir")
    parser.add_argument("--embeddings", required=True, help="embeddings directory from 'unclip embed'")
    parser.add_argument("--split", default="test", help="held-out split to score")
    parser.add_argument("--items", type=int, default=500, help="captions scored (0 = all)")
    parser.add_argument("--sampler", default="ddim", choices=sampler_names("gaussian"))
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--spacing", default="trailing", choices=SPACINGS, help="timestep grid")
    parser.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale")
    parser.add_argument("--candidates", type=int, default=2, help="samples per caption; keep the best (§2.1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="also write the result as JSON here")
    args = parser.parse_args(argv)
    try:
        from unclip.checkpoint import load_model
        from unclip.errors import CheckpointError
        from unclip.models.ar_prior import ARPrior
        from unclip.models.prior import DiffusionPrior
        from unclip.encoders.shards import EmbeddingRows

        path = resolve_prior_path(args.prior)
        prior = load_model(path, device=args.device)
        if not isinstance(prior, (DiffusionPrior, ARPrior)):
            raise CheckpointError(f"{path} holds a {type(prior).__name__}, not a prior")
        rows = EmbeddingRows(args.embeddings, args.split)
        result = evaluate_prior(prior, rows, max_items=args.items or None, sampler=args.sampler, steps=args.steps,
                                guidance_scale=args.guidance, num_candidates=args.candidates, spacing=args.spacing)
    except UnclipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.out:
        from unclip.checkpoint import atomic_write_text

        atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
