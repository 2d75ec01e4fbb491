"""Style control in CLIP space for the four emoji styles (Noto, Twemoji, OpenMoji, Fluent).

Captions follow the dataset's one template (``unclip.data.emoji.emoji_caption``): "a Noto-style emoji of X".

* **Text diff** (Ramesh et al. 2022, §3.3, the default route of ``restyle``): with t0 = "a {source}-style
  emoji of X" and t = "a {target}-style emoji of X", the image's z_i is slerped towards
  z_d = normalise(z_t − z_t0) by ``theta`` (``manipulate.text_diff_embeddings``) and decoded from the image's
  DDIM-inverted latent, so layout and colours are kept while the embedding moves along the style direction.
* **Caption** (``method="caption"``): image-to-image (SDEdit, ``unclip.pipelines.edits.img2img``) under the
  target caption t at ``strength``.
* **Generation** takes ``style=`` (``UnCLIPPipeline.__call__``, ``ClipVQPipeline.__call__``): each prompt is
  rewritten to the style's caption (``styled_prompt``): "red apple" → "a Fluent-style emoji of red apple".

The source style and the subject X of an image come from, in order: ``caption`` (the image's caption, e.g.
the dataset's "a Noto-style emoji of red apple, fruit, food", or just the subject "red apple"), ``from_style``
(overrides the caption's style), or, for a file, its dataset caption (``dataset_caption``: the built
dataset's ``index.jsonl`` row or a same-name ``.txt``). Without a subject the captions are
"a Noto-style emoji" and "a Fluent-style emoji".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Sequence

import torch

from unclip.errors import UnclipError
from unclip.pipelines.output import PipelineOutput
from unclip.pipelines.seeds import make_seeds

__all__ = ["style_titles", "check_style", "style_caption", "parse_style_caption", "styled_prompt",
           "styled_prompts", "dataset_caption", "resolve_source", "restyle", "RESTYLE_METHODS"]

RESTYLE_METHODS = ("textdiff", "caption")
_CAPTION = re.compile(r"^an? ([A-Za-z]+)-style emoji(?: of (.+))?$", re.DOTALL)


def style_titles() -> dict[str, str]:
    """Style key → its name in captions, from the emoji dataset's table: {"noto": "Noto", ...}."""
    from unclip.data.emoji import STYLES

    return {key: title for key, (_, title, _) in STYLES.items()}


def check_style(style: str) -> str:
    """A style key ("fluent") from a key or caption name, any case; else a one-line error naming the choices."""
    titles = style_titles()
    by_name = {k.lower(): k for k in titles} | {t.lower(): k for k, t in titles.items()}
    key = by_name.get(str(style).strip().lower())
    if key is None:
        raise UnclipError(f"unknown style {style!r} (choose from: {', '.join(titles)})")
    return key


def style_caption(style: str, subject: str | None = None) -> str:
    """"a Fluent-style emoji of SUBJECT" (the dataset's template), or "a Fluent-style emoji" without a subject."""
    from unclip.data.emoji import emoji_caption

    title = style_titles()[check_style(style)]
    if subject:
        return emoji_caption(title, subject.strip(), extras=0)
    return emoji_caption(title, "").removesuffix(" of ")


def parse_style_caption(caption: str) -> tuple[str, str | None] | None:
    """(style key, subject or None) of a caption in the template, else None."""
    match = _CAPTION.match(str(caption).strip())
    if match is None:
        return None
    try:
        key = check_style(match.group(1))
    except UnclipError:
        return None
    return key, (match.group(2) or "").strip() or None


def styled_prompt(prompt: str, style: str) -> str:
    """The prompt in ``style``: a caption in the template gets its style replaced, anything else becomes the
    subject of "a {Style}-style emoji of ..."."""
    parsed = parse_style_caption(prompt)
    return style_caption(style, parsed[1] if parsed else prompt)


def styled_prompts(prompts: Sequence[str], style: str | None) -> list[str]:
    return list(prompts) if style is None else [styled_prompt(p, style) for p in prompts]


def dataset_caption(path: str | Path) -> str | None:
    """The caption of an image file that comes from a dataset: its row in a built dataset's ``index.jsonl``
    (``DIR/images/NAME.png``), or a same-name ``.txt`` beside it; else None."""
    path = Path(path)
    index = path.parent.parent / "index.jsonl"
    if path.parent.name == "images" and index.is_file():
        wanted = f"images/{path.name}"
        with open(index, encoding="utf-8") as handle:
            for line in handle:
                if wanted in line:
                    row = json.loads(line)
                    if row.get("image") == wanted:
                        return str(row.get("caption") or "") or None
    text = path.with_suffix(".txt")
    if text.is_file():
        return text.read_text(encoding="utf-8").strip() or None
    return None


def resolve_source(caption: str | None, from_style: str | None) -> tuple[str, str | None]:
    """(source style key, subject or None) from the image's caption and/or an explicit source style."""
    source, subject = None, None
    if caption:
        parsed = parse_style_caption(caption)
        source, subject = parsed if parsed else (None, caption.strip())
    if from_style:
        source = check_style(from_style)
    if source is None:
        raise UnclipError("the image's style is unknown: give from_style (--from-style noto|twemoji|openmoji|fluent) "
                          "or its caption (--caption \"a Noto-style emoji of ...\")")
    return source, subject


@torch.no_grad()
def restyle(pipe, image, style: str, *, from_style: str | None = None, caption=None, method: str = "textdiff",
            theta: float = 0.5, strength: float = 0.6, num_images: int = 1, eta: float = 0.0, seed=None,
            decoder_captions: bool = False, callback: Callable | None = None, progress: bool = True,
            output_type: str = "pil", **stage_settings) -> PipelineOutput:
    """Restyle an emoji image to ``style`` (module docstring). ``method``: "textdiff" (slerp weight ``theta``,
    from the DDIM-inverted latent; ``eta`` > 0 gives ``num_images`` different samples) or "caption" (SDEdit at
    ``strength`` under the target caption). ``decoder_captions`` (text diff, for a decoder that reads caption
    tokens, paper §2.1): invert under the source caption and decode under the target caption, which the
    decoder's guidance then pushes towards, instead of the null caption in both.

    ``image`` may be a list of images, with ``caption`` None or one caption per image: the text-diff route then
    inverts and decodes them as one batch (``num_images`` outputs per input, in input order; image i's outputs
    take seeds ``num_images * i``, ...), the caption route edits them one after another."""
    if method not in RESTYLE_METHODS:
        raise UnclipError(f"method must be one of {', '.join(RESTYLE_METHODS)}, got {method!r}")
    if decoder_captions and method != "textdiff":
        raise UnclipError("decoder_captions (--decoder-captions) applies to the textdiff method; drop it or use "
                          "--method textdiff")
    target = check_style(style)
    many = isinstance(image, (list, tuple))
    images = list(image) if many else [image]
    captions = list(caption) if isinstance(caption, (list, tuple)) else [caption] * len(images)
    if not images or len(captions) != len(images):
        raise UnclipError(f"restyle got {len(images)} images and {len(captions)} captions; pass one caption per "
                          "image (or none)")
    pairs = [_caption_pair(im, c, from_style, target) for im, c in zip(images, captions)]
    seeds = make_seeds(seed, len(images) * num_images)
    if method == "caption":
        from unclip.pipelines.edits import img2img

        inner = output_type if len(images) == 1 else ("latent" if output_type == "latent" else "pt")
        outs = [img2img(pipe, im, to, strength=strength, num_images=num_images,
                        seed=seeds[i * num_images:(i + 1) * num_images], callback=callback, progress=progress,
                        output_type=inner, **stage_settings) for i, (im, (_, _, to)) in enumerate(zip(images, pairs))]
        out = outs[0] if len(outs) == 1 else PipelineOutput(
            images=pipe.format(torch.cat([o.images for o in outs]), output_type), seeds=seeds, prompts=[],
            settings=outs[0].settings)
    else:
        out = _text_diff_restyle(pipe, images, pairs, theta, num_images, eta, seeds, callback, progress, output_type,
                                 stage_settings, decoder_captions)
    sources = sorted({source for source, _, _ in pairs})
    out.settings.update(operation="restyle", method=method, source_style=sources[0] if len(sources) == 1 else sources,
                        style=target, from_caption=pairs[0][1] if not many else [a for _, a, _ in pairs],
                        to_caption=pairs[0][2] if not many else [b for _, _, b in pairs])
    out.prompts = [to for _, _, to in pairs for _ in range(num_images)]
    return out


def _caption_pair(image, caption, from_style, target) -> tuple[str, str, str]:
    """(source style, from caption, to caption) of one image."""
    if caption is None and isinstance(image, (str, Path)):
        caption = dataset_caption(image)
    source, subject = resolve_source(caption, from_style)
    if source == target:
        raise UnclipError(f"the image is already {style_titles()[target]}-style; pick another style")
    return source, style_caption(source, subject), style_caption(target, subject)


def _text_diff_restyle(pipe, images, pairs, theta, num_images, eta, seeds, callback, progress, output_type,
                       stage_settings, decoder_captions=False) -> PipelineOutput:
    """One text-diff frame at ``theta`` (§3.3) per output, each from its image's DDIM-inverted latent, all images
    in one batch."""
    from unclip.pipelines.edits import _image_at, _open
    from unclip.pipelines.images import check_finite
    from unclip.pipelines.manipulate import decode_embeddings, invert, text_diff_embeddings

    if not pipe.decoder.model.config.image_embed_dim:
        raise UnclipError("this decoder is text-only (GLIDE baseline); text-diff restyling needs an unCLIP decoder; "
                          "use method='caption'")
    if not 0 < theta <= 1:
        raise UnclipError(f"theta must be in (0, 1], got {theta}")
    if not 1 <= num_images <= 64:
        raise UnclipError(f"num_images must be in [1, 64], got {num_images}")
    if decoder_captions and not pipe.decoder.model.config.text_token_dim:
        raise UnclipError("this decoder does not read caption tokens; restyle without decoder_captions "
                          "(--decoder-captions)")
    stage_settings = {k: v for k, v in stage_settings.items() if not k.startswith("prior_")}
    settings = pipe.resolve_settings(**dict(stage_settings, decoder_sampler="ddim", eta=eta))
    settings.pop("prior", None)
    x = torch.cat([_image_at(_open(image), pipe.decoder_size, pipe.device) for image in images])   # [N, 3, S, S]
    z = pipe.encoder.encode_image(x).float()                                                       # [N, D]
    thetas = torch.tensor([float(theta)], device=z.device)
    z_new = torch.cat([text_diff_embeddings(pipe, z[i:i + 1], a, b, thetas) for i, (_, a, b) in enumerate(pairs)])
    text_from = text_to = None
    if decoder_captions:
        text_from = pipe.encoder.encode_text([a for _, a, _ in pairs])
        text_to = pipe.encoder.encode_text([b for _, _, b in pairs for _ in range(num_images)])
    s = settings["decoder"]
    latent = invert(pipe, x, z, s["steps"], s["precision"], s["spacing"], text=text_from)
    out = decode_embeddings(pipe, z_new.repeat_interleave(num_images, 0), seeds, settings, callback, progress,
                            latent.repeat_interleave(num_images, 0), text=text_to)
    info = {"theta": float(theta), "eta": float(eta), "decoder_captions": bool(decoder_captions), "stages": settings}
    return PipelineOutput(images=pipe.format(check_finite(out, pipe.name), output_type), seeds=seeds,
                          prompts=[b for _, _, b in pairs for _ in range(num_images)], settings=info)
