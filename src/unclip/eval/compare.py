"""Several pipelines over one sweep in one report: the unCLIP vs GLIDE diversity–fidelity comparison.

Ramesh et al. 2022 (arXiv 2204.06125) §5.2, "Improved Diversity-Fidelity Trade-off with Guidance":
Figure 9 shows unCLIP and GLIDE samples as the classifier-free guidance scale grows, Figure 10 the
human preferences of unCLIP against GLIDE at several guidance scales (photorealism, caption
similarity, diversity), and Figure 11 FID against guidance scale for both. The claim: guidance makes
GLIDE's samples for one caption collapse towards each other, while unCLIP keeps their diversity
(the semantics are drawn by the prior, the decoder only renders them) for comparable fidelity.

Human raters are replaced here by measurable proxies from ``unclip.eval.evaluate``: fidelity is
FID (↓), CLIP score by a separate evaluation encoder (↑) and, on shapes, the exact-match attribute
accuracy (↑); diversity is the mean pairwise EfficientNet feature distance among one prompt's
samples. ``plot_curves`` draws each metric against the swept setting (Figure 11's axes, one curve
per model) and ``plot_tradeoff`` diversity against fidelity with points labelled by the setting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from unclip.checkpoint import atomic_write, atomic_write_text
from unclip.errors import UnclipError
from unclip.eval.report import fmt, sample_grid, to_html

__all__ = ["CURVE_METRICS", "plot_curves", "plot_tradeoff", "comparison_table", "combine_reports",
           "write_comparison"]

# (key, label): panels of the curves plot and columns of the table, when present in every row.
CURVE_METRICS = (
    ("fid", "FID ↓"),
    ("clip_score", "CLIP score (eval CLIP) ↑"),
    ("shapes_exact", "shapes exact match ↑"),
    ("diversity", "diversity ↑"),
    ("seconds_per_image", "seconds per image"),
)
# Shown instead of wall-clock seconds when present: CPU time does not grow with other jobs' load.
CPU_TIME = ("cpu_seconds_per_image", "CPU seconds per image")
TABLE_EXTRA = (("real_diversity", "real diversity"), ("decoder_diversity", "decoder-only diversity"), ("kid", "KID ↓"), ("precision", "precision ↑"), ("recall", "recall ↑"),
               ("r_precision", "R-precision ↑"), ("shapes_withheld_exact", "exact, withheld ↑"))
# The run must match on these for a comparison to use the same prompts, seeds and reference images.
MUST_MATCH = ("seed", "n_prompts", "images_per_prompt", "split", "n_real")


def _by_model(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row["model"]), []).append(row)
    return groups


def _present(rows: Sequence[dict[str, Any]], metrics, every: bool = True) -> list[tuple[str, str]]:
    test = all if every else any
    return [(key, label) for key, label in metrics if test(row.get(key) is not None for row in rows)]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    _pyplot().close(fig)


def plot_curves(key: str, rows: Sequence[dict[str, Any]], path: Path) -> None:
    """One panel per metric of ``CURVE_METRICS`` against the swept ``key``, one curve per model."""
    plt = _pyplot()
    shown = _present(rows, CURVE_METRICS)
    if _present(rows, [CPU_TIME]):
        shown = [CPU_TIME if key == "seconds_per_image" else (key, label) for key, label in shown]
    if not shown:
        raise UnclipError("the results have none of FID, CLIP score, shapes accuracy or diversity to plot")
    fig, axes = plt.subplots(1, len(shown), figsize=(3.1 * len(shown), 2.9), squeeze=False)
    for ax, (metric, label) in zip(axes[0], shown):
        for model, group in _by_model(rows).items():
            line, = ax.plot([r[key] for r in group], [r[metric] for r in group], marker="o", label=model)
            if metric == "diversity":
                _diversity_extras(ax, key, model, group, line.get_color())
        ax.set_xlabel(key)
        ax.set_title(label, fontsize=9)
    axes[0][0].legend(fontsize=8)
    for ax, (metric, _) in zip(axes[0], shown):
        if metric == "diversity" and ax is not axes[0][0]:
            ax.legend(fontsize=7)
    _save(fig, path)


def _diversity_extras(ax, key: str, model: str, group: Sequence[dict[str, Any]], color) -> None:
    """Dashed: the decoder-only diversity (fixed z_i); dotted grey: real images sharing a caption."""
    decoder = [(r[key], r["decoder_diversity"]) for r in group if r.get("decoder_diversity") is not None]
    if decoder:
        ax.plot(*zip(*decoder), linestyle="--", marker="x", color=color, label=f"{model}, decoder only")
    real = [r["real_diversity"] for r in group if r.get("real_diversity") is not None]
    if real and not any(line.get_label() == "real images" for line in ax.get_lines()):
        ax.axhline(sum(real) / len(real), color="grey", linestyle=":", linewidth=1, label="real images")


def plot_tradeoff(key: str, rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Diversity (x) against each fidelity measure (y), one curve per model, points labelled by ``key``."""
    plt = _pyplot()
    if not all(row.get("diversity") is not None for row in rows):
        raise UnclipError("the diversity metric needs --images-per-prompt 2 or more")
    shown = _present(rows, [m for m in CURVE_METRICS if m[0] in ("fid", "clip_score", "shapes_exact")])
    if not shown:
        raise UnclipError("no fidelity measure (FID, CLIP score, shapes exact match) in every result to plot")
    fig, axes = plt.subplots(1, len(shown), figsize=(3.8 * len(shown), 3.4), squeeze=False)
    for ax, (metric, label) in zip(axes[0], shown):
        for model, group in _by_model(rows).items():
            xs, ys = [r["diversity"] for r in group], [r[metric] for r in group]
            ax.plot(xs, ys, marker="o", label=model)
            for x, y, r in zip(xs, ys, group):
                ax.annotate(fmt(r[key]), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xlabel("diversity (mean pairwise feature distance) →")
        ax.set_ylabel(label)
        ax.set_title(f"point labels: {key}", fontsize=8)
    axes[0][0].legend(fontsize=8)
    _save(fig, path)


def comparison_table(key: str | None, rows: Sequence[dict[str, Any]]) -> list[str]:
    """A Markdown table, one row per (model, setting)."""
    columns = _present(rows, CURVE_METRICS + (CPU_TIME,) + TABLE_EXTRA, every=False)
    head = ["model"] + ([key] if key else []) + [label for _, label in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["model"])] + ([fmt(row[key])] if key else []) + [fmt(row.get(k)) for k, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _load(report: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(report) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise UnclipError(f"{report} holds no readable metrics.json; pass report directories written by "
                          "'unclip eval'") from None


def combine_reports(reports: Sequence[str | Path], labels: Sequence[str] = ()) -> dict[str, Any]:
    """Merge the metrics.json of several ``unclip eval`` reports into one comparison payload.

    Each report becomes one curve, named by ``labels`` (or its label/model); the reports must share
    the data, sweep key and ``MUST_MATCH`` fields, so prompts, seeds and the real reference agree.
    """
    if labels and len(labels) != len(reports):
        raise UnclipError(f"got {len(labels)} --label for {len(reports)} reports; give one per report or none")
    payloads = [_load(r) for r in reports]
    keys = {(p.get("sweep") or {}).get("key") for p in payloads}
    datas = {str(p.get("data")) for p in payloads}
    if len(keys) > 1 or len(datas) > 1:
        raise UnclipError(f"the reports differ in sweep key {sorted(map(str, keys))} or data {sorted(datas)}; "
                          "compare runs of the same sweep on the same data")
    if labels and any("models" in p for p in payloads):
        raise UnclipError("--label names single-model reports; a comparison report keeps its own model names")
    rows, names = [], []
    for index, payload in enumerate(payloads):
        if "models" in payload:  # an earlier comparison: its rows are already labelled
            rows += payload["results"]
            names += payload["models"]
            continue
        label = labels[index] if labels else payload.get("label") or payload.get("model")
        rows += [{**result, "model": label} for result in payload["results"]]
        names.append(label)
    if len(set(names)) != len(names):
        raise UnclipError(f"two reports have the same model name ({', '.join(map(str, names))}); "
                          "name them apart with --label")
    for field in MUST_MATCH:
        values = {json.dumps(r.get(field)) for r in rows}
        if len(values) > 1:
            raise UnclipError(f"the reports differ in {field} ({', '.join(sorted(values))}); re-run them with the "
                              "same --seed, --num-prompts, --images-per-prompt and --split")
    return {"data": payloads[0].get("data"), "key": keys.pop(), "rows": rows,
            "commands": [p.get("command", "") for p in payloads]}


def write_comparison(out_dir: Path, *, data: str, commands: Sequence[str], key: str | None,
                     rows: Sequence[dict[str, Any]],
                     samples: dict[str, tuple[torch.Tensor, list[str]]] | None = None) -> Path:
    """metrics.json, curves.png and tradeoff.png (with a sweep), samples-N.png, report.md and report.html."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = list(_by_model(rows))
    payload = {"models": models, "data": data, "command": "\n".join(commands), "results": list(rows)}
    if key:
        payload["sweep"] = {"key": key, "values": sorted({r[key] for r in rows})}
    atomic_write_text(out_dir / "metrics.json", json.dumps(payload, indent=2) + "\n")
    lines = [f"# Comparison of {', '.join(f'`{m}`' for m in models)}", "", f"Data: `{data}`", "",
             "Reproduce with:", "", "```", *commands, "```", ""]
    first = rows[0]
    lines += [f"Every model drew {first.get('images_per_prompt', '?')} images for each of the same "
              f"{first.get('n_prompts', '?')} prompts with the same seeds; FID against {first.get('n_real', '?')} "
              f"real images (real vs real: {fmt(first.get('baseline_fid'))}). Diversity is the mean pairwise "
              "feature distance among one prompt's images.", ""]
    lines += ["## Table", "", *comparison_table(key, rows), ""]
    if key:
        plot_curves(key, rows, out_dir / "curves.png")
        lines += [f"## Metrics against `{key}`", "", "![curves](curves.png)", ""]
        if all(r.get("diversity") is not None for r in rows):
            plot_tradeoff(key, rows, out_dir / "tradeoff.png")
            lines += ["## Diversity against fidelity", "", "![tradeoff](tradeoff.png)", ""]
    for index, (model, (images, captions)) in enumerate((samples or {}).items()):
        name = f"samples-{index}.png"
        sample_grid(images, captions, out_dir / name, limit=len(images), columns=_columns(captions))
        lines += [f"## Samples: `{model}`", "", f"![samples {model}]({name})", ""]
    markdown = "\n".join(lines)
    atomic_write_text(out_dir / "report.md", markdown)
    atomic_write_text(out_dir / "report.html", to_html(markdown))
    return out_dir / "report.md"


def _columns(captions: Sequence[str]) -> int:
    """Images per sweep value: captions start with 'key=value'."""
    heads = [c.split(":", 1)[0] for c in captions]
    return max(1, heads.count(heads[0]))
