"""Tiny random-weight Kandinsky 2.2 pipelines, built locally and saved with ``save_pretrained`` (no downloads).

``tiny_kandinsky(directory)`` writes a ``KandinskyV22PriorPipeline`` folder (``directory/prior``: prior,
CLIP text encoder + tokenizer, CLIP vision tower, ``UnCLIPScheduler``, image processor), a
``KandinskyV22Pipeline`` folder (``directory/decoder``: ``UNet2DConditionModel`` with
``addition_embed_type="image"``, ``DDPMScheduler``, MoVQ ``VQModel``) and their
``KandinskyV22CombinedPipeline`` (``directory/combined``), and returns the three diffusers pipelines.
CLIP width 16, MoVQ factor 2, latents 16 px, images 32 px; seconds to build and to run on one CPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from helpers.tiny_diffusers import WIDTH, _clip_kwargs, tiny_tokenizer

LATENT_SIZE = 16
IMAGE_SIZE = 32    # LATENT_SIZE x the MoVQ factor 2
LATENT_CHANNELS = 4
EPS_SCALE = 0.3    # the decoder UNet's output layer is scaled by this at random init
# Kandinsky 2.2's decoder scheduler (kandinsky-community/kandinsky-2-2-decoder): linear betas, "leading" + 1
DECODER_SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                         clip_sample=False, prediction_type="epsilon", timestep_spacing="leading", steps_offset=1,
                         variance_type="fixed_small")


def tiny_prior(seed: int = 0):
    """A random ``KandinskyV22PriorPipeline`` (not saved)."""
    from diffusers import KandinskyV22PriorPipeline, PriorTransformer, UnCLIPScheduler
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(Path(tempfile.mkdtemp(prefix="tiny-clip-bpe-")))
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=8, num_layers=1, embedding_dim=WIDTH)
    with torch.no_grad():  # CLIP statistics (zeros / ones when freshly built)
        prior.clip_mean.normal_(0, 0.1)
        prior.clip_std.uniform_(0.5, 1.5)
    pipe = KandinskyV22PriorPipeline(
        prior=prior, tokenizer=tokenizer,
        text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**_clip_kwargs(len(tokenizer)))),
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**_clip_kwargs(), image_size=32, patch_size=8)),
        scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", clip_sample=True,
                                  clip_sample_range=10.0),
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}))
    return pipe.set_progress_bar_config(disable=True) or pipe


def tiny_decoder(seed: int = 1, **scheduler):
    """A random ``KandinskyV22Pipeline`` (not saved); ``scheduler`` overrides ``DECODER_SCHEDULER``."""
    from diffusers import DDPMScheduler, KandinskyV22Pipeline, UNet2DConditionModel, VQModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=2 * LATENT_CHANNELS, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4, addition_embed_type="image", encoder_hid_dim=WIDTH,
        encoder_hid_dim_type="image_proj", cross_attention_dim=WIDTH, attention_head_dim=4,
        resnet_time_scale_shift="scale_shift", class_embed_type=None, mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"))
    with torch.no_grad():  # tamer random eps: latents peak near 20 instead of 30 (float32 rounding grows with them)
        unet.conv_out.weight.mul_(EPS_SCALE)
        unet.conv_out.bias.mul_(EPS_SCALE)
    movq = VQModel(in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, block_out_channels=(32, 32),
                   down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
                   up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1,
                   norm_num_groups=8, norm_type="spatial", num_vq_embeddings=12, vq_embed_dim=LATENT_CHANNELS)
    pipe = KandinskyV22Pipeline(unet=unet, movq=movq, scheduler=DDPMScheduler(**dict(DECODER_SCHEDULER, **scheduler)))
    return pipe.set_progress_bar_config(disable=True) or pipe


def tiny_kandinsky(directory: Path):
    """(prior, decoder, combined) diffusers pipelines, saved to ``directory``/prior, /decoder and /combined."""
    from diffusers import KandinskyV22CombinedPipeline

    directory = Path(directory)
    prior, decoder = tiny_prior(), tiny_decoder()
    combined = KandinskyV22CombinedPipeline(
        **decoder.components, **{f"prior_{name}": part for name, part in prior.components.items()})
    for name, pipe in (("prior", prior), ("decoder", decoder), ("combined", combined)):
        pipe.save_pretrained(directory / name)
    return prior, decoder, combined.set_progress_bar_config(disable=True) or combined
