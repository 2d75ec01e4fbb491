"""``unclip data``: build, inspect and preview datasets."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from unclip.cli.common import add_command, int_in_range, plain_warnings
from unclip.errors import DataError

BUILDERS = ("shapes", "emoji", "icons")


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "data",
        help="build, inspect and preview datasets",
        description="Build the shapes, emoji and icons datasets; show their statistics; draw captioned grids.",
        examples="""
  unclip data build shapes --out data/shapes32 --size 32
  unclip data info data/shapes32
  unclip data preview data/shapes32 --out shapes.png --n 16""",
        func=None,
    )
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    sub = parser.add_subparsers(title="data commands", dest="data_command", metavar="DATA_COMMAND")

    build = add_command(
        sub, "build",
        help="build a dataset directory (shapes, emoji or icons)",
        description="Build a dataset into DIR (dataset.json + index.jsonl + images/). Building again with the "
                    "same parameters is a no-op. emoji and icons fetch pinned npm packages with 'npm pack' "
                    "(cached in ~/.cache/unclip/npm) or read them from --packages.",
        examples="""
  unclip data build shapes --out data/shapes32 --size 32 --count 4800 --seed 0
  unclip data build emoji --out data/emoji64 --size 64
  unclip data build emoji --out data/emoji64-all --size 64 --split 95/0/5
  unclip data build icons --out data/icons64 --size 64
  unclip data build emoji --out /tmp/tiny --packages tests/fixtures/emoji --styles twemoji,fluent""",
        func=_build,
    )
    build.add_argument("kind", choices=BUILDERS, help="which dataset to build")
    build.add_argument("--out", required=True, type=Path, help="output directory")
    build.add_argument("--size", type=int_in_range(8, 1024), default=64, help="image side in pixels")
    build.add_argument("--count", type=int_in_range(1, 10_000_000), default=None,
                       help="shapes: number of images (default 4800 = 10 per combination); "
                            "emoji/icons: keep at most N images (default all)")
    build.add_argument("--seed", type=int, default=0, help="seed for shapes order/jitter and for the splits")
    build.add_argument("--split", default=None,
                       help="emoji/icons: TRAIN/VAL/TEST percentages of concepts (default 80/10/10; the shipped "
                            "emoji model uses 95/0/5: every concept but a small held-out set)")
    build.add_argument("--jitter", type=float, default=None,
                       help="shapes only: centre/size jitter as a fraction of the side (0 = canonical, max 0.05)")
    build.add_argument("--styles", default=None,
                       help="emoji: comma list of noto,twemoji,openmoji,fluent; icons: outline,filled (default all)")
    build.add_argument("--cache", type=Path, default=None, help="npm tarball cache (default ~/.cache/unclip/npm)")
    build.add_argument("--packages", type=Path, default=None,
                       help="directory of already-downloaded .tgz files or extracted packages (no network)")

    info = add_command(
        sub, "info",
        help="counts per split and caption statistics",
        description="Print counts per split, caption length statistics and the most common caption words.",
        examples="""
  unclip data info data/shapes32
  unclip data info my_images/""",
        func=_info,
    )
    info.add_argument("dir", type=Path, help="dataset directory (built or plain folder)")

    preview = add_command(
        sub, "preview",
        help="write a captioned image grid",
        description="Draw the first N images of a split with their captions into one PNG.",
        examples="""
  unclip data preview data/shapes32 --out shapes.png
  unclip data preview data/emoji64 --out emoji.png --n 36 --split test""",
        func=_preview,
    )
    preview.add_argument("dir", type=Path, help="dataset directory or shards")
    preview.add_argument("--out", required=True, type=Path, help="output PNG")
    preview.add_argument("--n", type=int_in_range(1, 1024), default=16, help="number of images")
    preview.add_argument("--split", default="train", choices=("train", "val", "test", "all"))
    preview.add_argument("--seed", type=int, default=None, help="pick a random sample instead of the first N")


def _progress(label: str):
    start = time.time()
    state = {"last": 0.0}

    def report(done: int, total: int) -> None:
        now = time.time()
        if now - state["last"] > 2 or done == total:
            state["last"] = now
            print(f"\r{label}: {done}/{total} ({now - start:.0f}s)", end="\n" if done == total else "",
                  file=sys.stderr, flush=True)

    return report


def _build(args) -> int:
    with plain_warnings():
        return _run_build(args)


def _run_build(args) -> int:
    start = time.time()
    if args.kind == "shapes":
        from unclip.data.shapes import DEFAULT_COUNT, DEFAULT_JITTER, build_shapes

        if args.styles or args.packages or args.cache or args.split:
            raise DataError("--styles, --split, --packages and --cache apply to emoji and icons only; drop them")
        jitter = DEFAULT_JITTER if args.jitter is None else args.jitter
        built = build_shapes(args.out, image_size=args.size, count=args.count or DEFAULT_COUNT,
                             seed=args.seed, jitter=jitter, progress=_progress("shapes"))
    else:
        if args.jitter is not None:
            raise DataError("--jitter applies to shapes only; drop it")
        styles = {} if args.styles is None else {"styles": tuple(s.strip() for s in args.styles.split(",") if s.strip())}
        from unclip.data.emoji import parse_split
        from unclip.data.npm import DEFAULT_CACHE

        if args.split is not None:
            styles["split"] = parse_split(args.split)
        cache = args.cache or DEFAULT_CACHE
        if args.kind == "emoji":
            from unclip.data.emoji import build_emoji as builder
        else:
            from unclip.data.icons import build_icons as builder
        built = builder(args.out, image_size=args.size, seed=args.seed, limit=args.count, cache=cache,
                        packages=args.packages, progress=_progress(args.kind), **styles)
    if not built:
        print(f"{args.out}: already built with these parameters; nothing to do")
        return 0
    from unclip.data.built import read_info

    counts = read_info(args.out)["counts"]
    print(f"built {args.kind} in {args.out} in {time.time() - start:.1f}s: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _info(args) -> int:
    from unclip.data.stats import dataset_stats, format_stats

    with plain_warnings():
        print(format_stats(dataset_stats(args.dir)))
    return 0


def _preview(args) -> int:
    from unclip.data.preview import write_preview

    with plain_warnings():
        n = write_preview(args.dir, args.out, n=args.n, split=args.split, seed=args.seed)
    print(f"wrote {args.out} ({n} images)")
    return 0
