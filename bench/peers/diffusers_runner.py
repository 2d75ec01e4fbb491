"""Benchmark runner for diffusers' UnCLIPPipeline (run with bench/.venv-peers/bin/python).

Built from randomly initialised components, as diffusers' own pipeline tests do:
``PriorTransformer``, ``UnCLIPTextProjModel``, a ``UNet2DConditionModel`` decoder, two
``UNet2DModel`` super-resolution UNets (first/last) and ``UnCLIPScheduler``s. The tiny
``CLIPTextModelWithProjection`` and ``CLIPTokenizer`` are built locally (no hub download): the
pipeline is fed precomputed text embeddings (``text_model_output``), and uses the text encoder
only for the empty unconditional prompt of classifier-free guidance.

Sizes were chosen so that each network's parameter count is within 10% of the DALLE2-pytorch
network it is compared with (bench/peers/dalle2_runner.py); both runners print the counts.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import (  # noqa: E402
    DDPMScheduler,
    PriorTransformer,
    UnCLIPPipeline,
    UnCLIPScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402
from transformers.models.clip.modeling_clip import CLIPTextModelOutput  # noqa: E402

import harness  # noqa: E402

# decoder UNet2DConditionModel block widths matched to DALLE2 Unet small (~5.0M) / large (~51M)
DECODER_SIZES = {
    "small": dict(block_out_channels=(32, 64, 128), layers_per_block=2, attention_head_dim=32),
    "large": dict(block_out_channels=(56, 112, 224, 448), layers_per_block=2, attention_head_dim=56),
}
# each of the two super-res UNets (first / last) matched to DALLE2's lowres-conditioned Unet small
UPSAMPLER_SIZES = {
    "small": dict(block_out_channels=(32, 72, 144), layers_per_block=2),
}


def versions() -> dict:
    import diffusers
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}


def make_tokenizer(text_len: int) -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer with no merges, written to a temporary directory."""
    byte_chars = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(161, 173)] + [chr(c) for c in range(174, 256)]
    extra = [chr(256 + n) for n in range(256 - len(byte_chars))]
    symbols = byte_chars + extra
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder = tempfile.mkdtemp(prefix="bench-clip-tok-")
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                         model_max_length=text_len)


def make_text_encoder(spec: dict, vocab_size: int) -> CLIPTextModelWithProjection:
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=spec["text_dim"], projection_dim=spec["embed_dim"],
        intermediate_size=4 * spec["text_dim"], num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=spec["text_len"], bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModelWithProjection(config).eval()


def make_prior(spec: dict) -> PriorTransformer:
    # matched to DiffusionPriorNetwork(dim=256, depth=4, heads=8, dim_head=64)
    # (36-dim heads: 4.48M parameters against DALLE2's 4.67M)
    return PriorTransformer(num_attention_heads=8, attention_head_dim=36, num_layers=4,
                            embedding_dim=spec["embed_dim"], num_embeddings=spec["text_len"],
                            additional_embeddings=4)


def make_text_proj(spec: dict, time_embed_dim: int, cross_dim: int) -> UnCLIPTextProjModel:
    return UnCLIPTextProjModel(clip_extra_context_tokens=4, clip_embeddings_dim=spec["embed_dim"],
                               time_embed_dim=time_embed_dim, cross_attention_dim=cross_dim)


def make_decoder(spec: dict, size: str) -> UNet2DConditionModel:
    cfg = DECODER_SIZES[size]
    levels = len(cfg["block_out_channels"])
    return UNet2DConditionModel(
        sample_size=spec["image_size"], in_channels=3, out_channels=6,  # learned variance
        down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("SimpleCrossAttnUpBlock2D",) * (levels - 1) + ("ResnetUpsampleBlock2D",),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=cfg["block_out_channels"][0],
        block_out_channels=cfg["block_out_channels"], layers_per_block=cfg["layers_per_block"],
        attention_head_dim=cfg["attention_head_dim"], resnet_time_scale_shift="scale_shift",
        class_embed_type="identity", norm_num_groups=8,  # DALLE2's Unet uses 8 groups too
    )


def make_upsampler(spec: dict, size: str, out_channels: int) -> UNet2DModel:
    cfg = UPSAMPLER_SIZES[size]
    levels = len(cfg["block_out_channels"])
    return UNet2DModel(
        sample_size=spec["sr_size"], in_channels=6, out_channels=out_channels,
        down_block_types=("ResnetDownsampleBlock2D",) * levels, up_block_types=("ResnetUpsampleBlock2D",) * levels,
        block_out_channels=cfg["block_out_channels"], layers_per_block=cfg["layers_per_block"],
        resnet_time_scale_shift="scale_shift", add_attention=False,  # no attention at high resolution
        norm_num_groups=8,
    )


def build_sample(spec: dict) -> harness.Built:
    tokenizer = make_tokenizer(spec["text_len"])
    text_encoder = make_text_encoder(spec, len(tokenizer))
    decoder = make_decoder(spec, spec["decoder"])
    cross_dim = decoder.config.cross_attention_dim
    text_proj = make_text_proj(spec, decoder.config.block_out_channels[0] * 4, cross_dim)
    prior = make_prior(spec)
    sr_first = make_upsampler(spec, spec["upsampler"], out_channels=3)
    sr_last = make_upsampler(spec, spec["upsampler"], out_channels=3)
    pipe = UnCLIPPipeline(
        prior=prior, decoder=decoder, text_encoder=text_encoder, tokenizer=tokenizer, text_proj=text_proj,
        super_res_first=sr_first, super_res_last=sr_last,
        prior_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                        num_train_timesteps=spec["timesteps"], clip_sample_range=5.0),
        decoder_scheduler=UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon",
                                          num_train_timesteps=spec["timesteps"]),
        super_res_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon",
                                            num_train_timesteps=spec["timesteps"]),
    )
    pipe.set_progress_bar_config(disable=True)
    batch = spec["images"]
    # precomputed text encodings: embed [B, D], tokens [B, L, Dt], mask [B, L]
    text_output = CLIPTextModelOutput(text_embeds=torch.randn(batch, spec["embed_dim"]),
                                      last_hidden_state=torch.randn(batch, spec["text_len"], spec["text_dim"]))
    text_mask = torch.ones(batch, spec["text_len"], dtype=torch.bool)
    generator = torch.Generator().manual_seed(0)

    autocast_networks([prior, text_proj, decoder, sr_first, sr_last], spec)  # bf16: as our stages run

    def run(prior_steps: int, decoder_steps: int, sr_steps: int):
        return pipe(
            text_model_output=text_output, text_attention_mask=text_mask, num_images_per_prompt=1,
            prior_num_inference_steps=prior_steps, decoder_num_inference_steps=decoder_steps,
            super_res_num_inference_steps=sr_steps, prior_guidance_scale=spec["prior_guidance"],
            decoder_guidance_scale=spec["decoder_guidance"], generator=generator, output_type="pt",
        ).images

    stages = {"prior": prior, "decoder": [decoder, text_proj], "upsampler": [sr_first, sr_last]}
    return harness.Built(run, stages, notes={
        "sampler": "UnCLIPScheduler, CFG batched", "upsampler_params": "first+last UNets counted together",
        "precision": harness.precision(spec),
        "text_encoder_params": sum(p.numel() for p in text_encoder.parameters())})


def autocast_networks(modules: list, spec: dict) -> None:
    """Run each module's forward under ``harness.autocast(spec)`` and hand fp32 tensors back to the pipeline.

    Autocast around the whole ``UnCLIPPipeline`` call fails on the CPU: the decoder's bf16 image reaches the
    super-resolution stage's antialiased bicubic ``F.interpolate``, which has no bf16 CPU kernel (nor with bf16
    weights). Around the networks alone it is what our pipeline does with ``precision="bf16"``: networks in
    bf16, schedulers and glue in fp32. Hooks (not a patched ``forward``) leave harness.count_flops' patching intact.
    """
    if harness.precision(spec) == "fp32":
        return
    contexts = {}

    def enter(module, args):
        contexts[id(module)] = harness.autocast(spec)
        contexts[id(module)].__enter__()

    def leave(module, args, output):
        contexts.pop(id(module)).__exit__(None, None, None)
        if isinstance(output, torch.Tensor):
            return output.float()
        if isinstance(output, tuple) and not hasattr(output, "keys"):
            return type(output)(o.float() if isinstance(o, torch.Tensor) else o for o in output)
        for key, value in list(output.items()):  # diffusers' BaseOutput dataclasses
            if isinstance(value, torch.Tensor):
                output[key] = value.float()
        return output

    for module in modules:
        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)


def build_prior_train(spec: dict) -> harness.Built:
    prior = make_prior(spec).train()
    scheduler = DDPMScheduler(num_train_timesteps=spec["timesteps"], beta_schedule="squaredcos_cap_v2")
    optimizer = torch.optim.AdamW(prior.parameters(), lr=1e-4)
    batch = spec["batch"]
    text_embed = torch.randn(batch, spec["embed_dim"])
    text_tokens = torch.randn(batch, spec["text_len"], spec["text_dim"])
    image_embed = torch.randn(batch, spec["embed_dim"])

    def run() -> None:
        noise = torch.randn_like(image_embed)
        t = torch.randint(0, spec["timesteps"], (batch,))
        noisy = scheduler.add_noise(image_embed, noise, t)
        with harness.autocast(spec):
            pred = prior(noisy, timestep=t, proj_embedding=text_embed,
                         encoder_hidden_states=text_tokens).predicted_image_embedding
            loss = F.mse_loss(pred, image_embed)  # the unCLIP prior predicts the clean embedding
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return harness.Built(run, {"prior": prior}, notes={"loop": "diffusers has no trainer: standard loop",
                                                       "precision": harness.precision(spec)})


def build_decoder_train(spec: dict) -> harness.Built:
    decoder = make_decoder(spec, spec["decoder"]).train()
    text_proj = make_text_proj(spec, decoder.config.block_out_channels[0] * 4, decoder.config.cross_attention_dim)
    scheduler = DDPMScheduler(num_train_timesteps=spec["timesteps"], beta_schedule="squaredcos_cap_v2")
    params = list(decoder.parameters()) + list(text_proj.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    batch = spec["batch"]
    image_embed = torch.randn(batch, spec["embed_dim"])
    text_embed = torch.randn(batch, spec["embed_dim"])
    text_tokens = torch.randn(batch, spec["text_len"], spec["text_dim"])
    mask = torch.ones(batch, 4 + spec["text_len"], dtype=torch.bool)
    images = torch.rand(batch, 3, spec["image_size"], spec["image_size"]) * 2 - 1

    def run() -> None:
        noise = torch.randn_like(images)
        t = torch.randint(0, spec["timesteps"], (batch,))
        with harness.autocast(spec):
            hidden, time_add = text_proj(image_embeddings=image_embed, prompt_embeds=text_embed,
                                         text_encoder_hidden_states=text_tokens, do_classifier_free_guidance=False)
            out = decoder(scheduler.add_noise(images, noise, t), t, encoder_hidden_states=hidden,
                          class_labels=time_add, attention_mask=mask).sample
            loss = F.mse_loss(out[:, :3].float(), noise)  # epsilon loss (the variance half is left untrained)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return harness.Built(run, {"decoder": [decoder, text_proj]},
                         notes={"loop": "diffusers has no trainer: standard loop", "precision": harness.precision(spec)})


BUILDERS = {"sample": build_sample, "prior_train": build_prior_train, "decoder_train": build_decoder_train}

if __name__ == "__main__":
    harness.main(BUILDERS, "diffusers", versions)
