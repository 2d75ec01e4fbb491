"""Tiny random unCLIP components for the pipeline and CLI tests (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

from unclip.diffusion.schedule import DiffusionConfig
from unclip.config import to_dict
from unclip.models.unet import UNet, UNetConfig

CAPTIONS = ["a red circle", "a blue square", "a small green triangle", "a big purple star", "a shape"]


def tiny_encoder(seed: int = 0):
    from unclip.encoders.clip import ClipConfig, ClipEncoder
    from unclip.encoders.tokenizer import train_bpe
    from unclip.encoders.towers import TextConfig, VisionConfig

    torch.manual_seed(seed)
    config = ClipConfig(embed_dim=16, vision=VisionConfig(image_size=16, patch_size=4, width=32, layers=1, heads=2),
                        text=TextConfig(vocab_size=300, max_len=12, width=32, layers=1, heads=2))
    return ClipEncoder(config, train_bpe(CAPTIONS * 4, vocab_size=300)).eval()


def _wake(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fresh UNets have zero-initialised output layers (they ignore their input); randomise them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def tiny_component(role: str, encoder, seed: int = 1):
    from unclip.pipelines.unclip import Component

    torch.manual_seed(seed)
    common = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, head_channels=16, context_dim=16)
    if role == "decoder":
        cfg = UNetConfig(image_size=16, attention_resolutions=(8,), image_embed_dim=encoder.embed_dim,
                         text_token_dim=encoder.token_dim, **common)
    elif role == "glide":
        cfg = UNetConfig(image_size=16, attention_resolutions=(8,), text_embed_dim=encoder.embed_dim,
                         text_token_dim=encoder.token_dim, **common)
    else:
        cfg = UNetConfig(image_size=32, attention_resolutions=(), low_res_channels=3, **common)
    diffusion = to_dict(DiffusionConfig(timesteps=100))
    info = {"role": "upsampler" if role == "upsampler" else "decoder", "diffusion": diffusion}
    if role == "upsampler":
        info.update(low_res_size=16, noise_level=0)
    return Component(_wake(UNet(cfg), seed), info)


def tiny_prior(encoder, seed: int = 3):
    from unclip.models.prior import DiffusionPrior, PriorConfig
    from unclip.pipelines.prior_adapter import PriorComponent

    torch.manual_seed(seed)
    config = PriorConfig(embed_dim=encoder.embed_dim, token_dim=encoder.token_dim, max_text_len=encoder.max_len,
                         width=32, layers=1, heads=2, diffusion=DiffusionConfig(timesteps=100, prediction="x0"))
    return PriorComponent(DiffusionPrior(config).eval())


def tiny_pipeline(kind: str = "unclip", upsampler: bool = True):
    """kind 'full': prior + unCLIP decoder; 'unclip': the decoder without a prior (manipulations only);
    'glide': text-only decoder."""
    from unclip.pipelines.unclip import UnCLIPPipeline

    encoder = tiny_encoder()
    decoder = tiny_component("glide" if kind == "glide" else "decoder", encoder)
    prior = tiny_prior(encoder) if kind == "full" else None
    up = tiny_component("upsampler", encoder, seed=2) if upsampler else None
    defaults = {s: {"steps": 4} for s in ("prior", "decoder", "upsampler")}
    return UnCLIPPipeline(encoder, decoder, prior=prior, upsampler=up, defaults=defaults, name=f"tiny-{kind}")


CIRCLE_COLORS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 160, 60), "purple": (140, 40, 170)}


def circle_data(root: Path, encoder_dir: Path) -> tuple[Path, Path]:
    """An image folder with train/ (8) and val/ (4) splits of coloured circles and same-name .txt captions,
    plus a tiny encoder saved at ``encoder_dir``; the data the stage tests train on."""
    for split, count in (("train", 8), ("val", 4)):
        (root / split).mkdir(parents=True)
        for i in range(count):
            name = list(CIRCLE_COLORS)[i % 4]
            image = Image.new("RGB", (32, 32), "white")
            ImageDraw.Draw(image).ellipse((4 + i, 4, 20 + i, 20), fill=CIRCLE_COLORS[name])
            image.save(root / split / f"{i:03d}.png")
            (root / split / f"{i:03d}.txt").write_text(f"a {name} circle")
    tiny_encoder().save(encoder_dir)
    return root, encoder_dir


def edit_component(directory: Path, change) -> None:
    """Rewrite the component settings in ``directory/model.safetensors``'s metadata (as a user editing a
    damaged file would): ``change(info)`` gives the new JSON value, or ``...`` to drop them; a string is
    written as it is."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = Path(directory) / "model.safetensors"
    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata())
    value = change(json.loads(metadata["component"]))
    if value is ...:
        metadata.pop("component")
    else:
        metadata["component"] = value if isinstance(value, str) else json.dumps(value)
    save_file(load_file(str(path)), str(path), metadata=metadata)


def tiny_clipvq(num_steps: int = 10, steps: int = 4):
    """A tiny random CLIP-VQDiffusion pipeline: 16 px images, 16 codes, a one-block token transformer."""
    from unclip.diffusion.discrete import DiscreteDiffusionConfig
    from unclip.models.token_transformer import TokenTransformer, TokenTransformerConfig
    from unclip.models.vq import VQConfig, VQModel
    from unclip.pipelines.clip_vq import ClipVQPipeline

    torch.manual_seed(0)
    vq = VQModel(VQConfig(image_size=16, base_channels=8, embed_dim=8, codebook_size=16, kmeans_init=False))
    transformer = TokenTransformer(TokenTransformerConfig(num_codes=16, grid_size=vq.config.grid_size, width=32,
                                                          depth=1, heads=2, cond_dim=16))
    return ClipVQPipeline(tiny_encoder(), vq, transformer, diffusion=DiscreteDiffusionConfig(num_steps=num_steps),
                          defaults={"steps": steps})
