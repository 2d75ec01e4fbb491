"""The 4 x 4 style-control table of issue #21: restyle real renders from every source style to every target.

    python scripts/style_table.py --model emoji --data data/emoji64-all --reference-data data/emoji256-all \
        --classifier runs/style-classifier.safetensors --split test --count 64 --out reports/style-table

For each source style s and target style t (s != t) it takes ``--count`` held-out concepts that have renders in
both styles, restyles the s render to t (``unclip.pipelines.style.restyle``, ``--method textdiff`` or
``caption``), and reports

* **target-style accuracy**: the fraction the style classifier (``unclip.eval.style_classifier``: its own
  network, trained on real renders, sharing no weights with the generator) reads as t;
* **recognisability** (``unclip.eval.recognisability``, EfficientNet-Lite1) against the real render of the
  concept in the target style, beside the same rate for **plain generation** of "a {t}-style emoji of X"
  (the caption route from text, seeded alike), its ceiling and its chance level.

The diagonal (s = t) holds the plain-generation row: its style accuracy and recognisability. Without a saved
``--classifier`` file the classifier is trained first on the data's train split (``--classifier-steps``) and
saved there. Writes ``table.md`` and ``table.json`` to ``--out``. CPU: ~16 x count restyles plus 4 x count
generations; run it on a GPU, with ``--base-only`` (64 px, no upsampler) or with a small ``--count``. Also writes
``sheet.png``: per target style, rows of real renders, plain generation and the restyles from each source style.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from unclip.checkpoint import load_model, save_model
from unclip.eval.style_classifier import (STYLES, StyleClassifier, StyleClassifierConfig, StyleTrainConfig,
                                          load_style_data, style_accuracy, train_style_classifier)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="emoji", help="shipped model name or pipeline directory")
    parser.add_argument("--data", required=True, help="a built emoji dataset (meta.style, meta.concept)")
    parser.add_argument("--reference-data", default=None, help="a larger build of the same data for the references")
    parser.add_argument("--split", default="test", help="concepts to restyle (default: held-out ones)")
    parser.add_argument("--count", type=int, default=64, help="concepts per source -> target pair")
    parser.add_argument("--method", choices=("textdiff", "caption"), default="textdiff")
    parser.add_argument("--theta", type=float, default=0.5, help="textdiff slerp weight")
    parser.add_argument("--strength", type=float, default=0.6, help="caption route: SDEdit strength")
    parser.add_argument("--decoder-captions", action="store_true", help="textdiff: the decoder also reads the "
                        "source caption while inverting and the target caption while decoding")
    parser.add_argument("--classifier", default="runs/style-classifier.safetensors")
    parser.add_argument("--classifier-steps", type=int, default=1500)
    parser.add_argument("--classifier-size", type=int, default=64, help="side the classifier reads images at")
    parser.add_argument("--classifier-only", action="store_true", help="train (or load) the classifier, score it "
                        "on the real renders of --split, and stop")
    parser.add_argument("--base-only", action="store_true", help="stop after the decoder (no upsampler): cheaper")
    parser.add_argument("--batch", type=int, default=16, help="restyles per batch (text-diff route)")
    parser.add_argument("--targets", nargs="+", choices=STYLES, default=list(STYLES),
                        help="only these target styles (columns), e.g. for a --theta sweep on the weak ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="reports/style-table")
    return parser.parse_args()


def classifier(args) -> StyleClassifier:
    path = Path(args.classifier)
    if path.is_file() and not args.classifier_only:
        return load_model(path, expected=StyleClassifier).eval()
    if path.is_file():
        model = load_model(path, expected=StyleClassifier).eval()
        test_images, test_labels = load_style_data(args.data, args.split, image_size=model.config.image_size)
        print("classifier on real", args.split, "renders:", json.dumps(style_accuracy(model, test_images, test_labels)))
        return model
    config = StyleClassifierConfig(image_size=args.classifier_size)
    images, labels = load_style_data(args.data, "train", image_size=config.image_size)
    model = train_style_classifier(images, labels, config, StyleTrainConfig(steps=args.classifier_steps),
                                   device=args.device, log=lambda step, loss: print(f"classifier {step}: {loss:.3f}"))
    test_images, test_labels = load_style_data(args.data, args.split, image_size=config.image_size)
    print("classifier on real", args.split, "renders:", json.dumps(style_accuracy(model.cpu(), test_images,
                                                                                    test_labels)))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model.cpu(), path)
    return model.cpu().eval()


def concepts(args, image_size: int):
    """{concept: {style: (image [3,S,S], reference [3,R,R], subject)}} for concepts rendered in every style."""
    from unclip.data import open_dataset
    from unclip.pipelines.style import parse_style_caption

    data = open_dataset(args.data, split=args.split, image_size=image_size)
    refs = open_dataset(args.reference_data or args.data, split=args.split)
    found: dict[str, dict] = {}
    for i in range(len(data)):
        item = data[i]
        meta = item.get("meta") or {}
        parsed = parse_style_caption(item["caption"])
        if parsed is None or parsed[1] is None or meta.get("style") not in STYLES or (meta.get("skin_tone") or None):
            continue
        found.setdefault(meta.get("concept") or parsed[1], {})[meta["style"]] = (i, parsed[1])
    complete = sorted(c for c, by_style in found.items() if len(by_style) == len(STYLES))
    random.Random(args.seed).shuffle(complete)
    chosen = {}
    for concept in complete[:args.count]:
        chosen[concept] = {style: (data[i]["image"], refs[i]["image"], subject)
                           for style, (i, subject) in found[concept].items()}
    return chosen


def main() -> None:
    args = parse_args()
    with torch.no_grad():
        table(args)


def table(args) -> None:
    from unclip.eval.recognisability import load_recogniser
    from unclip.pipelines import load_pipeline

    judge = classifier(args)
    if args.classifier_only:
        return
    pipe = load_pipeline(args.model, device=args.device)
    chosen = concepts(args, pipe.decoder_size)
    keys = list(chosen)
    print(f"{len(keys)} concepts rendered in all four styles ({args.split} split)")
    recogniser = load_recogniser(args.device)
    stages = {"upsample": False} if args.base_only else {}
    size = pipe.decoder_size if args.base_only else pipe.image_size
    rows, sheet, started = {}, {}, time.perf_counter()
    for target in args.targets:
        references = torch.stack([chosen[k][target][1] for k in keys])
        prompts = [chosen[k][target][2] for k in keys]
        plain = pipe(prompts, style=target, seed=args.seed, progress=False, output_type="pt", **stages).images
        rows[(target, target)] = _score(judge, recogniser, plain, references, keys, target, size)
        sheet[(target, target)] = plain
        for source in STYLES:
            if source == target:
                continue
            images = _restyled(pipe, args, chosen, keys, source, target, stages)
            rows[(source, target)] = _score(judge, recogniser, images, references, keys, target, size)
            rows[(source, target)]["plain_recognised"] = rows[(target, target)]["recognised"]
            sheet[(source, target)] = images
            print(source, "->", target, json.dumps(rows[(source, target)]), f"{time.perf_counter() - started:.0f} s")
    _sheet(args, chosen, keys, sheet)
    _write(args, rows, len(keys))


def _restyled(pipe, args, chosen, keys, source, target, stages) -> torch.Tensor:
    """The ``source`` renders of ``keys`` restyled to ``target``: text diffs in batches of ``--batch`` (image i
    seeded ``seed + i``), the caption route one image at a time."""
    out = []
    step = args.batch if args.method == "textdiff" else 1
    for start in range(0, len(keys), step):
        group = keys[start:start + step]
        out.append(pipe.restyle([chosen[k][source][0] for k in group], target, from_style=source,
                                caption=[chosen[k][source][2] for k in group], method=args.method, theta=args.theta,
                                strength=args.strength, decoder_captions=args.decoder_captions,
                                seed=list(range(args.seed + start, args.seed + start + len(group))), progress=False, output_type="pt", **stages).images)
    return torch.cat(out)


def _sheet(args, chosen, keys, sheet, shown: int = 8) -> None:
    """``sheet.png``: per target style, the real target renders, then plain generation and each source's restyles
    (rows), for the first ``shown`` concepts (columns)."""
    from unclip.pipelines.images import image_grid, to_pil

    keys = keys[:shown]
    size = next(iter(sheet.values())).shape[-1]
    tiles = []
    for target in args.targets:
        real = torch.stack([chosen[k][target][1] for k in keys])
        real = torch.nn.functional.interpolate(real, size=(size, size), mode="bilinear", antialias=True)
        tiles += to_pil(real) + to_pil(sheet[(target, target)][:len(keys)])
        tiles += [im for source in STYLES if source != target for im in to_pil(sheet[(source, target)][:len(keys)])]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image_grid(tiles, columns=len(keys)).save(out / "sheet.png")


def _score(judge, recogniser, images, references, keys, target, size) -> dict:
    from unclip.eval.recognisability import recognition_rates

    predicted = judge.predict(images)
    rates = recognition_rates(recogniser, images, references, keys, output_size=size)
    return {"style_accuracy": float((predicted == STYLES.index(target)).float().mean()),
            "recognised": rates["recognised"], "ceiling": rates["ceiling"], "chance": rates["chance"]}


def _write(args, rows, n) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    head = "| source \\ target | " + " | ".join(args.targets) + " |\n|---|" + "---|" * len(args.targets) + "\n"
    lines = []
    for source in STYLES:
        cells = []
        for target in args.targets:
            r = rows[(source, target)]
            plain = "" if source == target else f" (plain {100 * r['plain_recognised']:.0f})"
            cells.append(f"{100 * r['style_accuracy']:.0f}% / {100 * r['recognised']:.0f}{plain}")
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    text = (f"Target-style accuracy / recognisability (%), {n} {args.split} concepts per pair, method "
            f"{args.method}{', theta ' + str(args.theta) if args.method == 'textdiff' else ''}; diagonal: plain generation of the target caption.\n\n" + head + "\n".join(lines) + "\n")
    (out / "table.md").write_text(text)
    (out / "table.json").write_text(json.dumps({f"{s}->{t}": v for (s, t), v in rows.items()} | {"args": vars(args)},
                                               indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
