"""The experiment of issue 7: does language-free CLIP-VQDiffusion reach the text-supervised model?

For each trained pipeline (language-free with several α, text-supervised, unconditional) sample
one image per shapes prompt *from text only* (no re-ranking), then score

- attribute accuracy (colour, shape, position, size, exact match; seen vs withheld pairs) with the
  independent pixel judge ``unclip.eval.shapes_checker``;
- CLIP score and R-precision with an evaluation encoder that was not used for conditioning
  (``--eval-encoder``, optional).

Reference rows: the judge on real renders of the same prompts (the judge's ceiling) and on their
VQ reconstructions (the tokenizer's ceiling). The claim of Han et al. 2024 (arXiv 2403.14944)
holds at our scale if the best language-free model reaches ≥ 90% of the text-supervised model's
exact-match accuracy.

    python -m unclip.eval.clipvq_experiment --run a0=runs/clipvq-a0/final --run text=runs/clipvq-text/final \\
        --prompts 240 --out runs/clipvq-experiment.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from unclip.data.shapes import all_combinations, pil_to_tensor, render_shape
from unclip.errors import UnclipError
from unclip.eval.shapes_checker import score_images
from unclip.models.vq import load_vq

__all__ = ["experiment_prompts", "evaluate_pipeline", "main"]


def experiment_prompts(count: int, seed: int = 0) -> list[str]:
    """A seeded subset of the 480 shapes captions (withheld pairs included in proportion)."""
    captions = [spec.caption for spec in all_combinations()]
    random.Random(seed).shuffle(captions)
    return captions[:count]


@torch.no_grad()
def evaluate_pipeline(pipe, prompts: list[str], *, seed: int = 0, eval_encoder=None, **settings) -> tuple[dict, list]:
    """Sample one image per prompt and score it → (metrics, PIL images)."""
    start = time.time()
    out = pipe(prompts, num_images_per_prompt=1, seed=seed, progress=False, **settings)
    metrics = score_images(out.images, prompts)
    metrics["sample_seconds"] = round(time.time() - start, 1)
    if eval_encoder is not None:
        metrics.update(_clip_metrics(eval_encoder, out.images, prompts))
    return metrics, out.images


@torch.no_grad()
def _clip_metrics(encoder, images, prompts: list[str]) -> dict[str, float]:
    from unclip.eval.clip_metrics import clip_score, r_precision, r_precision_pool

    tensors = torch.stack([pil_to_tensor(image) for image in images])
    image_embeds = encoder.encode_image(tensors).float()
    text_embeds = encoder.encode_text(prompts).embed.float()
    pool = [spec.caption for spec in all_combinations()]
    pool_embeds = encoder.encode_text(pool).embed.float()
    return {"clip_score": clip_score(image_embeds, text_embeds),
            "r_precision": r_precision(image_embeds, prompts, pool, pool_embeds, pool=100),
            "r_precision_pool": r_precision_pool(pool, 100)}


def _reference_rows(prompts: list[str], image_size: int, vq=None, eval_encoder=None) -> dict[str, dict]:
    from unclip.data.shapes import parse_caption
    from unclip.pipelines.images import to_pil

    renders = []
    for caption in prompts:
        a = parse_caption(caption)
        renders.append(render_shape(a["shape"], a["color"], a["position"], a["size"], image_size))
    rows = {"real renders": score_images(renders, prompts)}
    if vq is not None:
        recon = vq.decode(vq.encode(torch.stack([pil_to_tensor(r) for r in renders])))
        rows["VQ reconstructions"] = score_images(to_pil(recon), prompts)
    if eval_encoder is not None:  # the eval CLIP's own ceiling on real renders (and on what the tokenizer keeps)
        rows["real renders"].update(_clip_metrics(eval_encoder, renders, prompts))
        if vq is not None:
            rows["VQ reconstructions"].update(_clip_metrics(eval_encoder, to_pil(recon), prompts))
    return rows


def main(argv=None) -> int:
    from unclip.pipelines import load_pipeline
    from unclip.pipelines.images import image_grid, save_png

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", default=[], metavar="LABEL=DIR", help="a clipvq pipeline dir")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="only print the table of earlier result files")
    parser.add_argument("--prompts", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--truncation", type=float, default=0.9)
    parser.add_argument("--sampler", default="ancestral")
    parser.add_argument("--eval-encoder", default=None, help="encoder dir NOT used for conditioning")
    parser.add_argument("--out", help="JSON results; grids go next to it")
    parser.add_argument("--plot", metavar="PNG", help="also draw the per-attribute accuracy bar chart")
    parser.add_argument("--vq", metavar="DIR", help="score a tokenizer's round trip of real renders (the ceiling of "
                                                  "every generator on it); with --run, replaces the runs' own")
    args = parser.parse_args(argv)
    if args.merge:
        merged: dict[str, dict] = {}
        for path in args.merge:
            merged.update(json.loads(Path(path).read_text())["results"])
        print(markdown_table(merged))
        if args.plot:
            plot_accuracy(merged, Path(args.plot))
        return 0
    if not (args.run or args.vq) or not args.out:
        parser.error("give --out and at least one --run LABEL=DIR or --vq DIR (or --merge)")

    prompts = experiment_prompts(args.prompts, args.seed)
    eval_encoder = None
    if args.eval_encoder:
        from unclip.encoders import load_encoder

        eval_encoder = load_encoder(args.eval_encoder)
    out_path = Path(args.out)
    results: dict[str, dict] = {}
    settings = {"steps": args.steps, "guidance_scale": args.guidance, "truncation": args.truncation,
                "sampler": args.sampler}
    pipe = None
    for item in args.run:
        label, _, directory = item.partition("=")
        pipe = load_pipeline(directory)
        kwargs = dict(settings)
        if pipe.transformer.config.cond_dim == 0:
            kwargs["guidance_scale"] = 1.0
        metrics, images = evaluate_pipeline(pipe, prompts, seed=args.seed, eval_encoder=eval_encoder, **kwargs)
        results[label] = {"dir": directory, **metrics}
        save_png(image_grid(images[:32], columns=8), out_path.with_name(f"{out_path.stem}_{label}.png"))
        print(json.dumps({label: results[label]}), flush=True)
    vq = load_vq(args.vq).eval() if args.vq else pipe.vq if pipe is not None else None
    results.update(_reference_rows(prompts, vq.config.image_size, vq, eval_encoder))
    record = {"prompts": len(prompts), "seed": args.seed, "settings": settings,
              "eval_encoder": args.eval_encoder, "results": results}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(record, indent=2) + "\n")
    print(markdown_table(results))
    if args.plot:
        plot_accuracy(results, Path(args.plot))
    return 0


ATTRIBUTES = [("exact", "exact match"), ("color_acc", "colour"), ("shape_acc", "shape"),
              ("position_acc", "position"), ("size_acc", "size")]
CHANCE = {"color_acc": 1 / 8, "shape_acc": 1 / 6, "position_acc": 1 / 5, "size_acc": 1 / 2}


def plot_accuracy(results: dict[str, dict], path: Path) -> None:
    """Grouped bars: one group per attribute, one bar per model; chance levels dashed."""
    from unclip.eval.compare import _pyplot, _save

    plt = _pyplot()
    references = ("real renders", "VQ reconstructions")  # the judge's and the tokenizer's ceilings, drawn last
    models = [label for label in results if "exact" in results[label] and label not in references]
    models += [label for label in references if label in results]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    width = 0.8 / max(len(models), 1)
    for i, label in enumerate(models):
        xs = [a + (i - (len(models) - 1) / 2) * width for a in range(len(ATTRIBUTES))]
        ax.bar(xs, [results[label].get(key, 0.0) for key, _ in ATTRIBUTES], width, label=label)
    for a, (key, _) in enumerate(ATTRIBUTES):
        if key in CHANCE:
            ax.hlines(CHANCE[key], a - 0.45, a + 0.45, colors="black", linestyles="dashed", linewidth=1)
    ax.set_xticks(range(len(ATTRIBUTES)), [name for _, name in ATTRIBUTES])
    ax.set_ylabel("accuracy (shapes checker)")
    ax.set_ylim(0, 1)
    ax.set_title("CLIP-VQDiffusion sampled from text: language-free vs text-supervised (dashed: chance)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(fig, path)


def markdown_table(results: dict[str, dict]) -> str:
    cols = ["exact", "color_acc", "shape_acc", "position_acc", "size_acc", "seen_exact", "withheld_exact",
            "clip_score", "r_precision"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, row in results.items():
        cells = [f"{row[c]:.3f}" if isinstance(row.get(c), float) else "–" for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    try:
        raise SystemExit(main())
    except UnclipError as exc:
        raise SystemExit(f"error: {exc}") from None
