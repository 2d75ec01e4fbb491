"""Tiny random-weight diffusers pipelines, built locally and saved with ``save_pretrained`` (no downloads).

``tiny_karlo(directory)`` writes a Karlo-layout ``UnCLIPPipeline`` folder (text encoder, tokenizer, prior,
text projection, decoder, two super-resolution UNets, three ``UnCLIPScheduler``s) plus an ``image_encoder/``
and ``feature_extractor/`` as Karlo's image-variation pipeline has them, and returns the diffusers
pipeline. Decoder 16 px, super-resolution 32 px, CLIP width 16; seconds to build and to run on one CPU.
The tokenizer is a byte-level CLIP BPE with no merges (every character a token), written here.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

WIDTH = 16         # CLIP embedding width = text hidden size (Karlo's text projection needs them equal)
DECODER_SIZE = 16
SUPER_RES_SIZE = 32


def tiny_tokenizer(directory: Path):
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    directory.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77)


def _clip_kwargs(vocab_size: int | None = None) -> dict:
    kwargs = dict(hidden_size=WIDTH, projection_dim=WIDTH, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2)
    if vocab_size is not None:
        kwargs.update(vocab_size=vocab_size, max_position_embeddings=77, bos_token_id=vocab_size - 2,
                      eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    return kwargs


def _super_res_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=SUPER_RES_SIZE, in_channels=6, out_channels=3, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
                       up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
                       resnet_time_scale_shift="scale_shift")


def tiny_karlo(directory: Path, seed: int = 0):
    """A random-weight Karlo ``UnCLIPPipeline`` saved to ``directory`` (with an image encoder beside it)."""
    from diffusers import PriorTransformer, UNet2DConditionModel, UnCLIPPipeline, UnCLIPScheduler
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    directory = Path(directory)
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(Path(tempfile.mkdtemp(prefix="tiny-clip-bpe-")))
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**_clip_kwargs(len(tokenizer))))
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=8, num_layers=1, embedding_dim=WIDTH,
                             num_embeddings=77, additional_embeddings=4)
    with torch.no_grad():  # Karlo's CLIP statistics (zeros / ones when freshly built)
        prior.clip_mean.normal_(0, 0.1)
        prior.clip_std.uniform_(0.5, 1.5)
    time_embed_dim = 8 * 4
    text_proj = UnCLIPTextProjModel(clip_extra_context_tokens=2, clip_embeddings_dim=WIDTH,
                                    time_embed_dim=time_embed_dim, cross_attention_dim=WIDTH)
    decoder = UNet2DConditionModel(
        sample_size=DECODER_SIZE, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, cross_attention_dim=WIDTH, attention_head_dim=4, resnet_time_scale_shift="scale_shift",
        class_embed_type="identity", mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"))
    pipe = UnCLIPPipeline(
        prior=prior, decoder=decoder, text_encoder=text_encoder, tokenizer=tokenizer, text_proj=text_proj,
        super_res_first=_super_res_unet(), super_res_last=_super_res_unet(),
        prior_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                        clip_sample=True, clip_sample_range=5.0),
        decoder_scheduler=UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon"),
        super_res_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon"))
    pipe.save_pretrained(directory)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**_clip_kwargs(), image_size=32, patch_size=8))
    vision.save_pretrained(directory / "image_encoder")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        directory / "feature_extractor")
    return pipe.set_progress_bar_config(disable=True) or pipe


def tiny_karlo_variation(directory: Path, karlo):
    """Karlo's ``UnCLIPImageVariationPipeline`` (no prior) from ``karlo``'s modules and a CLIP vision tower."""
    from diffusers import UnCLIPImageVariationPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(1)
    parts = {k: v for k, v in karlo.components.items() if not k.startswith("prior")}
    pipe = UnCLIPImageVariationPipeline(
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**_clip_kwargs(), image_size=32, patch_size=8)),
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        **parts)
    pipe.save_pretrained(directory)
    return pipe.set_progress_bar_config(disable=True) or pipe


def check_manipulations(pipe, image, other, shape, **fast) -> None:
    """The unCLIP manipulations run on an imported pipeline: variations from a DDIM-inverted latent (§3.1),
    interpolation (§3.2) and a text diff (§3.3), each giving images of ``shape`` [3, S, S]."""
    import torch

    variations = pipe.variations(image, num_images=2, seed=0, from_inversion=True, eta=0.5, **fast)
    assert variations.images.shape == (2, *shape)
    frames = pipe.interpolate(image, other, num_frames=3, seed=0, noise="inversion", **fast)
    assert frames.images.shape == (3, *shape)
    edit = pipe.text_diff(image, "a red circle", "a blue square", num_frames=2, seed=0, **fast)
    assert edit.images.shape == (2, *shape) and torch.isfinite(edit.images).all()
