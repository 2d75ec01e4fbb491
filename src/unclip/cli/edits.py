"""``unclip img2img``, ``unclip inpaint`` and ``unclip restyle``: the edits of ``unclip.pipelines.edits``
and ``unclip.pipelines.style``, with the model and sampling flags of ``unclip generate``.

Inputs are checked before the model loads (images against ``--max-image-pixels``, the output path);
the grid PNG is written atomically once sampling has succeeded.
"""

from __future__ import annotations

from unclip.cli.common import add_command, float_in_range, int_in_range
from unclip.cli.generate import (_add_image_limit, _add_model_args, _kwargs_for, _load, _png_path, _read_image,
                                 _require, _stage_kwargs)
from unclip.encoders.base import check_utf8
from unclip.errors import UnclipError
from unclip.limits import MAX_IMAGES
from unclip.pipelines.edits import DEFAULT_RESAMPLE, DEFAULT_STRENGTH, MAX_RESAMPLE


def register(subparsers) -> None:
    p = add_command(subparsers, "img2img", help="edit an image towards a caption (SDEdit)",
                    description="Image-to-image (SDEdit, Meng et al. 2022): noise the image to --strength of the way "
                                "along the decoder's grid and denoise it under a new caption (z_i from the prior), "
                                "or under its own CLIP embedding when no caption is given. --strength 0 returns the "
                                "input, 1 is plain generation.",
                    examples="""
  unclip img2img apple.png "a Fluent-style emoji of red apple" --strength 0.6 --out x.png
  unclip img2img circle.png "a large blue square in the center" --model shapes --strength 0.4 -n 4 --seed 0
  unclip img2img face.png --strength 0.3 --out closer.png      # no caption: the image's own CLIP embedding""",
                    func=_img2img)
    p.add_argument("image", help="input image file")
    p.add_argument("prompt", nargs="?", default=None, help="the new caption (optional)")
    p.add_argument("--strength", type=float_in_range(0, 1), default=DEFAULT_STRENGTH,
                   help="how far along the decoder's grid to noise the input: 0 keeps it, 1 ignores it")
    _add_edit_args(p, default_out="img2img.png")

    p = add_command(subparsers, "inpaint", help="regenerate the masked part of an image (RePaint)",
                    description="Training-free inpainting: RePaint resampling (Lugmayr et al. 2022) for unCLIP "
                                "decoders and upsamplers, fixed VQ tokens for CLIP-VQDiffusion. The mask is a PNG "
                                "of the image's size (white = regenerate) or a --box.",
                    examples="""
  unclip inpaint photo.png --mask mask.png "a Noto-style emoji of red heart" --out x.png
  unclip inpaint photo.png --box 0,0,32,32 "a red circle" --model shapes -n 4 --seed 0
  unclip inpaint photo.png --box 0.25,0.25,0.75,0.75 --resample 4      # fractions; no caption: its own z_i""",
                    func=_inpaint)
    p.add_argument("image", help="input image file")
    p.add_argument("prompt", nargs="?", default=None, help="caption of the result (optional)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--mask", default=None, help="mask PNG of the image's size: white = regenerate, black = keep")
    where.add_argument("--box", default=None,
                       help="x0,y0,x1,y1 to regenerate, in pixels of the image or in fractions (all values <= 1)")
    p.add_argument("--resample", type=int_in_range(1, MAX_RESAMPLE), default=None,
                   help=f"unCLIP: RePaint passes per step (default {DEFAULT_RESAMPLE}; 1 = no resampling; each "
                        "adds one decoder call per step)")
    p.add_argument("--eta", type=float_in_range(0, 1), default=None,
                   help="unCLIP: DDIM eta of the reverse step (default 1 = RePaint's DDPM step)")
    p.add_argument("--no-paste-back", dest="paste_back", action="store_false",
                   help="keep the sampled pixels outside the mask instead of the original ones")
    _add_edit_args(p, default_out="inpaint.png")

    p = add_command(subparsers, "restyle", help="move an emoji image to another style in CLIP space",
                    description="Restyle an emoji image (Noto, Twemoji, OpenMoji, Fluent). textdiff (default): the "
                                "text diff of unCLIP sec. 3.3 from 'a {source}-style emoji of X' to 'a {target}-style "
                                "emoji of X', decoded from the image's DDIM-inverted latent; caption: img2img under "
                                "the target caption. The source style and X come from --caption, --from-style, or "
                                "the dataset caption of an image file from a built dataset (index.jsonl) or with a "
                                "same-name .txt.",
                    examples="""
  unclip restyle data/emoji64-all/images/000123.png --style fluent --out fluent.png   # caption from the dataset
  unclip restyle apple.png --style twemoji --from-style noto --caption "red apple" --theta 0.6
  unclip restyle apple.png --style fluent --caption "a Noto-style emoji of red apple" --method caption
  unclip restyle data/emoji64-all/images/0001*.png --style openmoji --out many.png   # one batch, one grid""",
                    func=_restyle)
    p.add_argument("image", nargs="+", help="input image file(s); several are restyled as one batch")
    p.add_argument("--style", required=True, help="target style: noto, twemoji, openmoji or fluent")
    p.add_argument("--from-style", default=None, help="the image's style (default: from --caption or the dataset)")
    p.add_argument("--caption", default=None,
                   help="the image's caption ('a Noto-style emoji of red apple') or just its subject ('red apple')")
    p.add_argument("--method", choices=("textdiff", "caption"), default="textdiff")
    p.add_argument("--theta", type=float_in_range(0.01, 1), default=0.5, help="textdiff: slerp weight towards z_d")
    p.add_argument("--eta", type=float_in_range(0, 1), default=0.0,
                   help="textdiff: DDIM eta from the inverted latent (> 0 makes -n images differ)")
    p.add_argument("--strength", type=float_in_range(0, 1), default=0.6, help="caption: SDEdit strength")
    p.add_argument("--decoder-captions", action="store_true",
                   help="textdiff: the decoder also reads the captions (the source one while inverting, the target "
                        "one while decoding), for decoders trained with caption tokens")
    p.add_argument("-n", "--num-images", type=int_in_range(1, MAX_IMAGES), default=1, help="images to make")
    p.add_argument("--out", default="restyle.png", help="grid PNG to write")
    p.add_argument("--zoom", type=int_in_range(1, 16), default=1, help="enlarge each image in the grid N times")
    _add_image_limit(p)
    _add_model_args(p)


def _add_edit_args(parser, *, default_out: str) -> None:
    parser.add_argument("-n", "--num-images", type=int_in_range(1, MAX_IMAGES), default=1, help="images to make")
    parser.add_argument("--negative", "--negative-prompt", dest="negative", default=None,
                        help="negative prompt (the unconditional branch of classifier-free guidance)")
    parser.add_argument("--image-embed-source", choices=("prior", "text", "none", "image"), default=None,
                        help="unCLIP with a caption: the decoder's z_i from the prior (default), the caption's text "
                             "embedding, none, or the input image's own")
    parser.add_argument("--out", default=default_out, help="grid PNG to write")
    parser.add_argument("--zoom", type=int_in_range(1, 16), default=1, help="enlarge each image in the grid N times")
    _add_image_limit(parser)
    _add_model_args(parser)


def _text(value: str | None, flag: str) -> str | None:
    if value is None:
        return None
    value = check_utf8(value, flag)
    if not value.strip():
        raise UnclipError(f"{flag} is empty; give a caption or leave it out")
    return value


def _edit_kwargs(pipe, args) -> dict:
    kwargs = _kwargs_for(pipe, _stage_kwargs(args))
    kwargs.update(num_images=args.num_images, seed=args.seed, progress=not args.quiet)
    if args.negative:
        kwargs["negative_prompt"] = _text(args.negative, "--negative")
    if args.image_embed_source is not None:
        if getattr(pipe, "kind", None) != "unclip":
            raise UnclipError("--image-embed-source applies to unCLIP pipelines only")
        kwargs["image_embed_source"] = args.image_embed_source
    return kwargs


def _write(result, args, what: str) -> int:
    from unclip.pipelines.images import image_grid, save_png

    out = save_png(image_grid(result.images, zoom=args.zoom), args.out)
    print(f"wrote {out} ({len(result.images)} {what}, seeds {result.seeds[0]}..{result.seeds[-1]})")
    return 0


def _img2img(args) -> int:
    prompt = _text(args.prompt, "the caption")
    image = _read_image(args.image, args.max_image_pixels)
    args.out = _png_path(args.out)
    pipe = _load(args)
    _require(pipe, "img2img")
    result = pipe.img2img(image, prompt, strength=args.strength, **_edit_kwargs(pipe, args))
    return _write(result, args, f"image(s) at strength {args.strength:g}")


def _inpaint(args) -> int:
    from unclip.pipelines.edits import parse_box

    prompt = _text(args.prompt, "the caption")
    image = _read_image(args.image, args.max_image_pixels)
    mask = _read_image(args.mask, args.max_image_pixels) if args.mask else parse_box(args.box)
    args.out = _png_path(args.out)
    pipe = _load(args)
    _require(pipe, "inpaint")
    kwargs = _edit_kwargs(pipe, args)
    if getattr(pipe, "kind", None) == "unclip":
        kwargs.update({k: v for k, v in (("resample", args.resample), ("eta", args.eta)) if v is not None})
    elif args.resample is not None or args.eta is not None:
        raise UnclipError("--resample and --eta apply to unCLIP (RePaint); CLIP-VQDiffusion inpaints with fixed "
                          "tokens: drop them")
    result = pipe.inpaint(image, mask, prompt, paste_back=args.paste_back, **kwargs)
    return _write(result, args, "inpainted image(s)")


def _restyle(args) -> int:
    from unclip.pipelines.style import check_style, dataset_caption, resolve_source

    style = check_style(args.style)
    given = _text(args.caption, "--caption")
    captions = [given or dataset_caption(path) for path in args.image]
    for caption in captions:
        resolve_source(caption, args.from_style)  # a one-line error before the model loads
    images = [_read_image(path, args.max_image_pixels) for path in args.image]
    args.out = _png_path(args.out)
    pipe = _load(args)
    _require(pipe, "restyle")
    kwargs = _kwargs_for(pipe, _stage_kwargs(args))
    one = len(images) == 1
    result = pipe.restyle(images[0] if one else images, style, from_style=args.from_style,
                          caption=captions[0] if one else captions, method=args.method, theta=args.theta,
                          strength=args.strength, num_images=args.num_images, eta=args.eta, seed=args.seed,
                          decoder_captions=args.decoder_captions, progress=not args.quiet, **kwargs)
    if not one:
        return _write(result, args, f"image(s) from {len(images)} inputs, to {result.settings['style']}")
    return _write(result, args, f"image(s): {result.settings['from_caption']!r} -> {result.settings['to_caption']!r}")