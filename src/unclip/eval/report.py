"""Evaluation reports: metrics.json, report.md, report.html, sample grids and sweep plots."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from unclip.checkpoint import atomic_write, atomic_write_text

__all__ = ["write_report", "plot_sweep", "sample_grid", "to_html", "fmt", "METRIC_LABELS"]

# (key, label, baseline key or None); only keys present in a result are shown.
METRIC_LABELS = (
    ("fid", "FID ↓", "baseline_fid"),
    ("kid", "KID ↓", "baseline_kid"),
    ("kid_subset_size", "KID subset size (100, or half the sample)", None),
    ("precision", "precision ↑", "baseline_precision"),
    ("recall", "recall ↑", "baseline_recall"),
    ("density", "density ↑", "baseline_density"),
    ("coverage", "coverage ↑", "baseline_coverage"),
    ("diversity", "diversity (mean pairwise feature distance)", None),
    ("real_diversity", "diversity of real images sharing a caption", None),
    ("decoder_diversity", "decoder-only diversity (variations of one real image)", None),
    ("clip_score", "CLIP score (eval CLIP) ↑", "real_clip_score"),
    ("r_precision", "R-precision (eval CLIP; pool below) ↑", "real_r_precision"),
    ("r_precision_pool", "R-precision pool (captions ranked per image: 100, or the split's all)", None),
    ("recognised", "recognised: Lite1 top-1 of the real render in the sample's top-5 ↑ (real: ceiling)",
     "recognised_ceiling"),
    ("recognised_chance", "recognised, chance level (shuffled pairs)", None),
    ("variation_recognised", "variations of the real image: recognised ↑ (real: ceiling)", "recognised_ceiling"),
    ("shapes_exact", "shapes exact match ↑", None),
    ("shapes_color_acc", "shapes colour ↑", None),
    ("shapes_shape_acc", "shapes shape ↑", None),
    ("shapes_position_acc", "shapes position ↑", None),
    ("shapes_size_acc", "shapes size ↑", None),
    ("shapes_seen_exact", "shapes exact, seen pairs ↑", None),
    ("shapes_withheld_exact", "shapes exact, withheld pairs ↑", None),
    ("seconds_per_image", "sampling seconds per image (all stages, wall clock)", None),
    ("cpu_seconds_per_image", "sampling CPU seconds per image (all threads; steadier under load)", None),
)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(label, fmt(result[key]), fmt(result.get(base)) if base else "")
            for key, label, base in METRIC_LABELS if key in result]


def sample_grid(images: torch.Tensor, prompts: Sequence[str], path: Path, limit: int = 32,
                columns: int | None = None) -> None:
    """A captioned PNG grid of the first ``limit`` images."""
    from unclip.data.preview import caption_grid, tensor_to_pil

    pil = [tensor_to_pil(image) for image in images[:limit]]
    grid = caption_grid(pil, list(prompts[:limit]), columns=columns)
    atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))


def plot_sweep(key: str, values: Sequence[Any], results: Sequence[dict[str, Any]], path: Path) -> None:
    """One panel per metric present in the results, metric vs the swept setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(k, label) for k, label, _ in METRIC_LABELS if all(k in r for r in results)][:6]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3), squeeze=False)
    for ax, (metric, label) in zip(axes[0], shown):
        ax.plot(list(values), [r[metric] for r in results], marker="o")
        ax.set_xlabel(key)
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def write_report(out_dir: Path, *, model: str, data: str, command: str, results: Sequence[dict[str, Any]],
                 samples: torch.Tensor, prompts: Sequence[str], sweep: tuple[str, Sequence[Any]] | None = None,
                 label: str | None = None, sweep_samples: tuple[torch.Tensor, Sequence[str]] | None = None) -> Path:
    """Write metrics.json, samples.png, (sweep.png, sweep-samples.png), report.md and report.html into ``out_dir``.

    ``label`` names this run when reports are later combined (``unclip eval --combine``);
    ``sweep_samples``: the same few prompts' images at every sweep value, one row per value.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"model": model, "label": label or model, "data": data, "command": command, "results": list(results)}
    if sweep:
        payload["sweep"] = {"key": sweep[0], "values": list(sweep[1])}
    atomic_write_text(out_dir / "metrics.json", json.dumps(payload, indent=2) + "\n")
    sample_grid(samples, prompts, out_dir / "samples.png")
    lines = [f"# Evaluation of `{model}`", "", f"Data: `{data}`", "", "Reproduce with:", "",
             f"```\n{command}\n```", ""]
    if sweep:
        plot_sweep(sweep[0], sweep[1], results, out_dir / "sweep.png")
        keys = [k for k, _, _ in METRIC_LABELS if all(k in r for r in results)]
        lines += [f"## Sweep over `{sweep[0]}`", "", "| " + " | ".join([sweep[0], *keys]) + " |",
                  "|" + "---|" * (len(keys) + 1)]
        for value, result in zip(sweep[1], results):
            lines.append("| " + " | ".join([fmt(value), *(fmt(result[k]) for k in keys)]) + " |")
        lines += ["", "![sweep](sweep.png)", ""]
        if sweep_samples is not None:
            images, captions = sweep_samples
            sample_grid(images, captions, out_dir / "sweep-samples.png", limit=len(images),
                        columns=len(images) // len(sweep[1]))
            lines += [f"The same prompts and seeds at each `{sweep[0]}`, one row per value:", "",
                      "![sweep samples](sweep-samples.png)", ""]
    else:
        result = results[0]
        lines += [f"{result['n_generated']} generated images from {result['n_prompts']} prompts, "
                  f"against {result['n_real']} real images drawn per prompt (the same captions, "
                  f"{result.get('n_real_distinct', '?')} distinct); the real-vs-real column compares a second "
                  "real sample drawn the same way (the prompts' other images, else a caption that is not a prompt; "
                  "for CLIP score and R-precision: the real images of the same prompts, the most the eval CLIP "
                  "can give).", "",
                  "| metric | generated | real vs real |", "|---|---|---|"]
        lines += [f"| {label} | {value} | {base} |" for label, value, base in _rows(result)]
        lines.append("")
    lines += ["## Samples", "", "![samples](samples.png)", ""]
    markdown = "\n".join(lines)
    atomic_write_text(out_dir / "report.md", markdown)
    atomic_write_text(out_dir / "report.html", to_html(markdown))
    return out_dir / "report.md"


def to_html(markdown: str) -> str:
    """A minimal Markdown → HTML for our own reports (headings, tables, images, code)."""
    body, in_code, in_table = [], False, False
    for line in markdown.splitlines():
        if line.startswith("```"):
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            body.append(("<table>" if not in_table else "") +
                        "<tr>" + "".join(f"<{tag}>{html.escape(c).replace('`', '')}</{tag}>" for c in cells) + "</tr>")
            in_table = True
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1 : line.rindex(")")]
            body.append(f'<img src="{html.escape(src)}" alt="">')
        elif line:
            body.append(f"<p>{html.escape(line).replace('`', '')}</p>")
    if in_table:
        body.append("</table>")
    style = "body{font-family:sans-serif;max-width:960px;margin:2em auto}td,th{padding:2px 8px;border:1px solid #ccc}"
    return f"<!doctype html><meta charset=utf-8><title>unclip eval</title><style>{style}</style>\n" + "\n".join(body)
