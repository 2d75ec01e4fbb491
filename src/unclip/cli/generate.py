"""``unclip generate``, ``unclip vary``, ``unclip interpolate`` and ``unclip textdiff``.

Text → images with a pipeline directory or shipped model (``--model NAME|PATH``), plus the unCLIP
image manipulations (paper §3). Every input is checked before the model loads (text, images against
``unclip.limits.MAX_IMAGE_PIXELS``, the total number of images against ``--max-images``, that the
outputs can be written); images are sampled ``unclip.limits.GENERATE_BATCH`` at a time and streamed to
disk; the files of one command appear together or not at all, and their paths are printed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from contextlib import ExitStack
from pathlib import Path

from unclip.cli.common import add_command, check_writable, float_in_range, int_in_range
from unclip.diffusion.registry import sampler_names
from unclip.encoders.base import check_utf8
from unclip.errors import UnclipError
from unclip.limits import GENERATE_BATCH, MAX_IMAGE_PIXELS, MAX_IMAGES
from unclip.pipelines.settings import FLAT, STAGES, choices_of, flat_names, help_of, limits, stage_of


def _add_model_args(parser: argparse.ArgumentParser, *, prior: bool = True) -> None:
    parser.add_argument("--model", default=None,
                        help="shipped model name or pipeline directory (default: emoji if shipped, else shapes)")
    parser.add_argument("--seed", type=int_in_range(0, 2**31 - 1), default=None,
                        help="seed of the first image (image i uses seed+i); default: random")
    for name in _stage_flags(prior):  # --prior-steps, --decoder-guidance, ...: from unclip.pipelines.settings
        stage, field = FLAT[name]
        low, high = limits(field)
        parse = int_in_range(low, high) if field == "steps" else float_in_range(low, high)
        parser.add_argument("--" + name.replace("_", "-"), type=parse, default=None, help=f"{stage} {help_of(field)}")
    parser.add_argument("--base-only", dest="upsample", action="store_false",
                        help="stop after the decoder: the base-resolution image, without the upsampler "
                             "(e.g. 64 px instead of 256 px for the emoji model)")
    parser.add_argument("--sampler", default=None,
                        help=f"sampler for every stage: {_names('gaussian')} for unCLIP; {_names('discrete')} for "
                             "CLIP-VQDiffusion (default: the model's)")
    parser.add_argument("--spacing", choices=choices_of("spacing"), default=None,
                        help=f"unCLIP only: {help_of('spacing')}, every stage (default: the model's, else trailing)")
    parser.add_argument("--precision", choices=choices_of("precision"), default=None,
                        help=f"{help_of('precision')} (default: auto)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _stage_flags(prior: bool = True) -> list[str]:
    """The flat per-stage settings the sampling commands expose as flags (steps and guidance)."""
    stages = STAGES if prior else tuple(s for s in STAGES if s != "prior")
    return flat_names(stages, fields=("steps", "guidance_scale"))


def _names(kind: str) -> str:
    names = sampler_names(kind)
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else ", ".join(names)


def _add_image_limit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-image-pixels", type=int_in_range(1, 2**31 - 1), default=MAX_IMAGE_PIXELS,
                        help="refuse input images with more pixels (width x height, read from the header before "
                             "decoding, so a decompression bomb costs nothing)")


def register(subparsers) -> None:
    p = add_command(subparsers, "generate", help="generate images from text",
                    description="Generate images from a text prompt with an unCLIP or CLIP-VQDiffusion pipeline.",
                    examples="""
  unclip generate "a red circle" -n 4 --seed 0 --out grid.png
  unclip generate "a red circle" --model runs/pipeline-shapes -n 8 --out-dir samples/
  unclip generate "a smiling cat" --decoder-guidance 5 --prior-steps 50 --sampler ddpm
  unclip generate "a blue square" --negative "a small shape" --out square.png
  unclip generate "a red circle" --model shapes --image-embed-source text   # unCLIP §5.1 ablation""",
                    func=_generate)
    p.add_argument("prompt", nargs="+", help="one or more prompts (quote each)")
    p.add_argument("-n", "--num-images", type=int_in_range(1, MAX_IMAGES), default=4, help="images per prompt")
    p.add_argument("--max-images", type=int_in_range(1, 10**7), default=MAX_IMAGES,
                   help="refuse runs of more images in all (prompts x -n); raise it for a big batch job "
                        f"(images are sampled and written {GENERATE_BATCH} at a time)")
    p.add_argument("--negative", "--negative-prompt", dest="negative", default=None,
                   help="negative prompt (the unconditional branch of classifier-free guidance)")
    p.add_argument("--out", default=None, help="grid PNG to write (default: grid.png unless --out-dir)")
    p.add_argument("--out-dir", default=None, help="write one PNG per image plus generation.json here")
    p.add_argument("--columns", type=int_in_range(1, 64), default=None, help="grid columns")
    p.add_argument("--zoom", type=int_in_range(1, 16), default=1,
                   help="enlarge each image in the grid N times (nearest neighbour; the --out-dir files stay as sampled)")
    p.add_argument("--image-embed-source", choices=("prior", "text", "none"), default=None,
                   help="unCLIP only: the decoder's CLIP image embedding from the prior (default), the caption's "
                        "CLIP text embedding, or none (the learned null embedding; caption tokens only)")
    p.add_argument("--style", default=None,
                   help="emoji style (noto, twemoji, openmoji, fluent): each prompt becomes 'a {Style}-style emoji "
                        "of PROMPT' (a caption in that form gets its style replaced)")
    _add_model_args(p)

    p = add_command(subparsers, "vary", help="variations of an image (unCLIP §3.1)",
                    description="Encode an image with CLIP and decode its embedding with different seeds.",
                    examples="""
  unclip vary photo.png -n 4 --seed 0 --out variations.png --model runs/pipeline-shapes
  unclip vary photo.png --invert --eta 0.5 --out close-variations.png""", func=_vary)
    p.add_argument("image", help="input image file")
    p.add_argument("-n", "--num-images", type=int_in_range(1, MAX_IMAGES), default=4)
    p.add_argument("--invert", action="store_true",
                   help="start from the image's DDIM-inverted latent (faithful; diversity set by --eta)")
    p.add_argument("--eta", type=float_in_range(0, 1), default=0.8, help="DDIM eta with --invert")
    p.add_argument("--out", default="variations.png", help="grid PNG to write")
    _add_image_limit(p)
    _add_model_args(p, prior=False)

    p = add_command(subparsers, "interpolate", help="interpolate between two images (unCLIP §3.2)",
                    description="Slerp between two images' CLIP embeddings; writes a strip PNG and an animated GIF.",
                    examples="""
  unclip interpolate a.png b.png --frames 8 --out interp.png --model runs/pipeline-shapes
  unclip interpolate a.png b.png --noise inversion --out interp.png""", func=_interpolate)
    p.add_argument("image_a")
    p.add_argument("image_b")
    p.add_argument("--frames", type=int_in_range(2, 64), default=8)
    p.add_argument("--noise", choices=("fixed", "inversion"), default="fixed",
                   help="decoder noise: one fixed seed, or slerp of the DDIM-inverted latents")
    p.add_argument("--out", default="interpolation.png", help="strip PNG (the GIF goes beside it)")
    _add_image_limit(p)
    _add_model_args(p, prior=False)

    p = add_command(subparsers, "textdiff", help="edit an image with a text diff (unCLIP §3.3)",
                    description="Move an image's CLIP embedding towards normalise(z_to - z_from); writes a strip.",
                    examples="""
  unclip textdiff cat.png --from "a photo of a cat" --to "an anime drawing of a cat" --out edit.png
  unclip textdiff red.png --from "a red circle" --to "a blue circle" --frames 6 --max-theta 0.5""",
                    func=_textdiff)
    p.add_argument("image")
    p.add_argument("--from", dest="from_caption", required=True, help="caption describing the image now")
    p.add_argument("--to", dest="to_caption", required=True, help="caption of the target")
    p.add_argument("--frames", type=int_in_range(2, 64), default=6)
    p.add_argument("--max-theta", type=float_in_range(0.01, 1.0), default=0.5, help="largest slerp weight")
    p.add_argument("--noise", choices=("fixed", "inversion"), default="inversion")
    p.add_argument("--out", default="textdiff.png", help="strip PNG (the GIF goes beside it)")
    _add_image_limit(p)
    _add_model_args(p, prior=False)


# --- helpers ------------------------------------------------------------------------
def _png_path(text: str, flag: str = "--out") -> Path:
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise UnclipError(f"{flag} {path} must end in .png")
    if path.exists() and path.is_dir():
        raise UnclipError(f"{flag} {path} is a directory; give a file name ending in .png (or use --out-dir)")
    if not path.parent.is_dir():
        raise UnclipError(f"directory {path.parent} does not exist; create it or choose another {flag}")
    check_writable(path.parent, flag)
    return path


def _out_dir(text: str) -> Path:
    """``--out-dir``: a directory, or a path whose nearest existing ancestor is a writable directory."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise UnclipError(f"--out-dir {path} is a file; give a directory")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UnclipError(f"--out-dir {path}: {ancestor} is a file, so no directory can be made there")
    check_writable(ancestor, "--out-dir")
    return path


def _read_image(text: str, max_pixels: int):
    """The input image as RGB on white, or a one-line error (missing, corrupt, over the pixel limit)."""
    from unclip.imagefile import open_image

    return open_image(text, max_pixels=max_pixels)


def _stage_kwargs(args, *, prior: bool = True) -> dict:
    names = _stage_flags(prior) + ["sampler", "spacing", "precision"]
    kwargs = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if getattr(args, "upsample", True) is False:
        kwargs["upsample"] = False
    return kwargs


def _load(args):
    from unclip.devices import check_device
    from unclip.pipelines import load_pipeline
    from unclip.pipelines.registry import default_model

    if args.model is None:  # "" is not 'no model': resolve_model refuses it
        args.model = default_model()  # recorded in generation.json
    check_device(args.device)
    return load_pipeline(args.model, device=args.device)


def _kwargs_for(pipe, kwargs: dict) -> dict:
    """Drop settings for stages the pipeline lacks; reject ones that cannot apply."""
    from unclip.pipelines.unclip import UnCLIPPipeline

    if "spacing" in kwargs and not isinstance(pipe, UnCLIPPipeline):
        raise UnclipError("--spacing applies to unCLIP pipelines (Gaussian diffusion); this model is "
                          "CLIP-VQDiffusion, whose discrete sampler has no timestep grid: drop --spacing")
    stages = getattr(pipe, "stages", ("prior", "decoder", "upsampler"))
    if "upsampler_steps" in kwargs and "upsampler" not in stages:
        raise UnclipError(f"--upsampler-steps: this model ({getattr(pipe, 'name', None) or 'the pipeline'}) has no "
                          f"upsampler (stages: {', '.join(stages)}); drop the flag")
    if kwargs.get("upsample") is False:
        if "upsampler" not in stages:
            raise UnclipError(f"--base-only: this model ({getattr(pipe, 'name', None) or 'the pipeline'}) has no "
                              "upsampler, so it already stops after the decoder; drop the flag")
        if "upsampler_steps" in kwargs:
            raise UnclipError("--base-only skips the upsampler, so --upsampler-steps cannot apply; drop one of them")
    return {k: v for k, v in kwargs.items() if stage_of(k) is None or stage_of(k) in stages}


def _command() -> str:
    return shlex.join(["unclip", *sys.argv[1:]])


# --- commands -------------------------------------------------------------------------
def _generate(args) -> int:
    from unclip.checkpoint import atomic_write_text, staged_dir
    from unclip.pipelines.images import image_grid, save_png
    from unclip.pipelines.seeds import make_seeds

    prompts = [check_utf8(p, f"prompt {i + 1}") for i, p in enumerate(args.prompt)]
    if any(not p.strip() for p in prompts):
        raise UnclipError("empty prompt: give some text, e.g. unclip generate \"a red circle\"")
    if args.negative is not None:
        check_utf8(args.negative, "--negative")
    n = args.num_images
    total = len(prompts) * n
    if total > args.max_images:
        raise UnclipError(f"{len(prompts)} prompt(s) x -n {n} = {total} images is more than the limit of "
                          f"{args.max_images}; pass --max-images {total} if you mean it")
    out = _png_path(args.out) if args.out else None
    out_dir = _out_dir(args.out_dir) if args.out_dir else None
    if out is None and out_dir is None:
        out = _png_path("grid.png")
    style = None
    if args.style is not None:
        from unclip.pipelines.style import check_style

        style = check_style(args.style)
    pipe = _load(args)
    extra = _kwargs_for(pipe, _stage_kwargs(args))
    if args.image_embed_source is not None:
        if getattr(pipe, "kind", None) != "unclip":
            raise UnclipError(f"--image-embed-source applies to unCLIP pipelines only, not {args.model} "
                              f"({getattr(pipe, 'kind', type(pipe).__name__)})")
        extra["image_embed_source"] = args.image_embed_source
    if style is not None:
        extra["style"] = style
    seeds = make_seeds(args.seed, total)  # image i keeps seed+i however the run is batched
    per_call = max(1, GENERATE_BATCH // n)  # prompts per pipeline call: memory stays flat
    shown, files, settings, written = [], [], None, []
    with ExitStack() as stack:
        stage = stack.enter_context(staged_dir(out_dir, last=("generation.json",))) if out_dir else None
        for start in range(0, len(prompts), per_call):
            first = start * n
            chunk = prompts[start:start + per_call]
            result = pipe(chunk, negative_prompt=args.negative, num_images_per_prompt=n,
                          seed=seeds[first:first + len(chunk) * n], progress=not args.quiet, **extra)
            settings = settings or result.settings
            for j, (image, seed) in enumerate(zip(result.images, result.seeds)):
                if stage is not None:
                    name = f"{first + j:03d}-seed{seed}.png"
                    save_png(image, stage / name)
                    files.append({"file": name, "prompt": result.prompts[j], "seed": seed})
                if out is not None:
                    shown.append(image)
        if out is not None:
            written.append(save_png(image_grid(shown, columns=args.columns or n, zoom=args.zoom), out))
        if stage is not None:
            record = {"prompts": prompts, "negative_prompt": args.negative, "model": args.model,
                      "settings": settings, "images": files, "command": _command(),
                      "reproduce": "unclip generate PROMPT --model MODEL -n 1 --seed SEED (same settings)"}
            atomic_write_text(stage / "generation.json", json.dumps(record, indent=2, default=str) + "\n")
            written.append(out_dir / "generation.json")
    print(f"wrote {', '.join(str(p) for p in written)} ({total} images, seeds {seeds[0]}..{seeds[-1]})")
    return 0


def _vary(args) -> int:
    from unclip.pipelines.images import image_grid, save_png

    image = _read_image(args.image, args.max_image_pixels)
    out = _png_path(args.out)
    pipe = _load(args)
    _require(pipe, "variations")
    result = pipe.variations(image, num_images=args.num_images, seed=args.seed, from_inversion=args.invert,
                             eta=args.eta, progress=not args.quiet, **_kwargs_for(pipe, _stage_kwargs(args, prior=False)))
    save_png(image_grid(result.images), out)
    print(f"wrote {out} ({len(result.images)} variations, seeds {result.seeds[0]}..{result.seeds[-1]})")
    return 0


def _write_strip(result, out: Path) -> Path:
    """The strip PNG and its GIF, written as a set (both or neither)."""
    from unclip.checkpoint import atomic_write_files
    from unclip.pipelines.images import gif_writer, image_grid, png_writer

    gif = out.with_suffix(".gif")
    atomic_write_files({out: png_writer(image_grid(result.images, columns=len(result.images))),
                        gif: gif_writer(result.images)})
    print(f"wrote {out} and {gif} ({len(result.images)} frames, seed {result.seeds[0]})")
    return gif


def _interpolate(args) -> int:
    image_a = _read_image(args.image_a, args.max_image_pixels)
    image_b = _read_image(args.image_b, args.max_image_pixels)
    out = _png_path(args.out)
    pipe = _load(args)
    _require(pipe, "interpolate")
    result = pipe.interpolate(image_a, image_b, num_frames=args.frames, seed=args.seed, noise=args.noise,
                              progress=not args.quiet, **_kwargs_for(pipe, _stage_kwargs(args, prior=False)))
    _write_strip(result, out)
    return 0


def _textdiff(args) -> int:
    source = check_utf8(args.from_caption, "--from")
    target = check_utf8(args.to_caption, "--to")
    if not source.strip() or not target.strip():
        raise UnclipError("--from and --to need non-empty captions")
    image = _read_image(args.image, args.max_image_pixels)
    out = _png_path(args.out)
    pipe = _load(args)
    _require(pipe, "text_diff")
    result = pipe.text_diff(image, source, target, num_frames=args.frames,
                            max_theta=args.max_theta, seed=args.seed, noise=args.noise, progress=not args.quiet,
                            **_kwargs_for(pipe, _stage_kwargs(args, prior=False)))
    _write_strip(result, out)
    return 0


def _require(pipe, method: str) -> None:
    if not callable(getattr(pipe, method, None)):
        raise UnclipError(f"this model ({getattr(pipe, 'kind', type(pipe).__name__)}) cannot do {method}; "
                          "use an unCLIP pipeline")
