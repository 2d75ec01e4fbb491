"""Benchmark runner for unclip itself (run with /work/main/.venv/bin/python).

Randomly initialised unclip models whose parameter counts are within 10% of the peers'
(bench/peers/*_runner.py print theirs), driven with the same precomputed text encodings:

- prior: ``DiffusionPrior(PriorConfig(width=296, layers=4, heads=8))``, x0 prediction, cosine schedule;
- decoder: ``UNet`` with ``image_embed_dim`` + caption tokens, learned variance (hybrid loss);
  ``small`` = base 32, mults (1, 2, 4) at 32 px; ``large`` = base 56, mults (1, 2, 4, 8) at 64 px;
- upsampler: ``UNet`` with ``low_res_channels=3``, base 36, mults (1, 2, 4), no attention.

Sampling goes through the public ``UnCLIPPipeline.__call__`` (DDIM, eta 0, CFG in one batched
forward), with an encoder stand-in that returns the precomputed encodings and a prior
component that draws ONE candidate per caption: the pipeline's default best-of-2 (§2.1 of the
paper) would double the prior's work relative to the peers, which draw one.

``--spec '{"precision": "bf16"}'`` runs the same work in bf16: sampling through the pipeline's
``precision="bf16"`` (what ``precision="auto"``, the default, picks on CPUs with AVX512-BF16/AMX),
training steps under ``torch.autocast("cpu", bfloat16)`` as ``train.mixed_precision=bf16`` does.
Without it, sampling passes ``precision="fp32"``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import harness  # noqa: E402
from unclip.diffusion.gaussian import GaussianDiffusion  # noqa: E402
from unclip.diffusion.schedule import DiffusionConfig  # noqa: E402
from unclip.encoders.base import TextEncoding  # noqa: E402
from unclip.models.prior import DiffusionPrior, PriorConfig  # noqa: E402
from unclip.models.unet import UNet, UNetConfig, cfg_drop_masks  # noqa: E402
from unclip.pipelines.prior_adapter import PriorComponent  # noqa: E402
from unclip.pipelines.unclip import Component, UnCLIPPipeline  # noqa: E402

DECODER_SIZES = {  # matched to DALLE2 Unet small (4.98M) / large (51.3M)
    "small": dict(base_channels=32, channel_mults=(1, 2, 4), context_dim=192),
    "large": dict(base_channels=56, channel_mults=(1, 2, 4, 8), context_dim=128),
}
UPSAMPLER_SIZES = {"small": dict(base_channels=36, channel_mults=(1, 2, 4))}  # 4.71M vs 4.98M
DECODER_DIFFUSION = dict(schedule="cosine", timesteps=1000, prediction="eps", learn_variance=True, loss="hybrid")
UPSAMPLER_DIFFUSION = dict(schedule="cosine", timesteps=1000, prediction="eps")


def versions() -> dict:
    from importlib.metadata import version

    return {"torch": torch.__version__, "unclip": version("unclip")}


def make_prior(spec: dict) -> DiffusionPrior:
    return DiffusionPrior(PriorConfig(embed_dim=spec["embed_dim"], token_dim=spec["text_dim"],
                                      max_text_len=spec["text_len"], width=296, layers=4, heads=8))


def make_decoder(spec: dict, size: str) -> UNet:
    return UNet(UNetConfig(image_size=spec["image_size"], out_channels=6, num_res_blocks=2,
                           attention_resolutions=(16, 8), head_channels=32, image_embed_dim=spec["embed_dim"],
                           text_token_dim=spec["text_dim"], **DECODER_SIZES[size]))


def make_upsampler(spec: dict, size: str) -> UNet:
    return UNet(UNetConfig(image_size=spec["sr_size"], out_channels=3, num_res_blocks=2, attention_resolutions=(),
                           low_res_channels=3, **UPSAMPLER_SIZES[size]))


class PrecomputedText(nn.Module):
    """Encoder stand-in: ``encode_text`` returns the benchmark's precomputed encodings."""

    def __init__(self, embed: torch.Tensor, tokens: torch.Tensor):
        super().__init__()
        self.embed_dim = embed.shape[1]
        self.embed, self.tokens = embed, tokens

    def encode_text(self, captions: list[str]) -> TextEncoding:
        n = len(captions)
        mask = torch.ones(n, self.tokens.shape[1], dtype=torch.bool)
        return TextEncoding(embed=self.embed[:n], tokens=self.tokens[:n], mask=mask)


def one_candidate_prior(prior: DiffusionPrior) -> PriorComponent:
    """The pipeline's own prior component, told to draw one candidate per caption (the peers draw one).

    The component's ``sample.num_candidates`` is the setting a shipped prior carries, so the
    benchmark samples through the same code as ``unclip generate`` (a subclass that re-declared
    ``sample()`` broke when the pipeline started passing ``spacing``).
    """
    return PriorComponent(prior, {"role": "prior", "sample": {"num_candidates": 1}})


def text_inputs(spec: dict, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    # precomputed CLIP text embedding [B, D] and token states [B, L, Dt]
    return torch.randn(batch, spec["embed_dim"]), torch.randn(batch, spec["text_len"], spec["text_dim"])


def build_sample(spec: dict) -> harness.Built:
    prior = make_prior(spec)
    decoder = make_decoder(spec, spec["decoder"])
    upsampler = make_upsampler(spec, spec["upsampler"])
    pipe = UnCLIPPipeline(
        PrecomputedText(*text_inputs(spec, spec["images"])),
        Component(decoder, {"role": "decoder", "diffusion": DECODER_DIFFUSION, "image_size": spec["image_size"]}),
        prior=one_candidate_prior(prior),
        upsampler=Component(upsampler, {"role": "upsampler", "diffusion": UPSAMPLER_DIFFUSION,
                                        "low_res_size": spec["image_size"], "image_size": spec["sr_size"]}),
    )
    prompts = [f"prompt {i}" for i in range(spec["images"])]

    def run(prior_steps: int, decoder_steps: int, sr_steps: int) -> torch.Tensor:
        return pipe(prompts, seed=0, progress=False, output_type="pt", sampler="ddim",
                    prior_steps=prior_steps, decoder_steps=decoder_steps, upsampler_steps=sr_steps,
                    prior_guidance=spec["prior_guidance"], decoder_guidance=spec["decoder_guidance"],
                    precision=harness.precision(spec)).images

    return harness.Built(run, {"prior": prior, "decoder": decoder, "upsampler": upsampler},
                         notes={"sampler": "DDIM eta=0, CFG batched", "precision": harness.precision(spec)})


def build_prior_train(spec: dict) -> harness.Built:
    prior = make_prior(spec).train()
    diffusion = GaussianDiffusion(prior.config.diffusion)
    optimizer = torch.optim.AdamW(prior.parameters(), lr=1e-4)
    batch = spec["batch"]
    text_embed, text_tokens = text_inputs(spec, batch)
    text_mask = torch.ones(batch, spec["text_len"], dtype=torch.bool)
    image_embed = torch.randn(batch, spec["embed_dim"])

    def run() -> None:  # the prior stage's loss (unclip.train.stages.prior), one AdamW step
        kwargs = {"text_embed": text_embed, "text_tokens": text_tokens, "text_mask": text_mask,
                  "drop_text": torch.rand(batch) < 0.1}
        with harness.autocast(spec):
            loss = diffusion.training_losses(prior, image_embed, diffusion.sample_timesteps(batch),
                                             model_kwargs=kwargs)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.float().backward()
        optimizer.step()

    return harness.Built(run, {"prior": prior}, notes={"precision": harness.precision(spec)})


def build_decoder_train(spec: dict) -> harness.Built:
    decoder = make_decoder(spec, spec["decoder"]).train()
    diffusion = GaussianDiffusion(DiffusionConfig(**DECODER_DIFFUSION))
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-4)
    batch = spec["batch"]
    image_embed, text_tokens = text_inputs(spec, batch)
    text_mask = torch.ones(batch, spec["text_len"], dtype=torch.bool)
    images = torch.rand(batch, 3, spec["image_size"], spec["image_size"]) * 2 - 1

    def run() -> None:  # the decoder stage's loss (unclip.train.stages.decoder), one AdamW step
        drop_image, drop_text = cfg_drop_masks(batch, 0.1, 0.5)
        kwargs = {"image_embed": image_embed, "text_tokens": text_tokens, "text_mask": text_mask,
                  "drop_image": drop_image, "drop_text": drop_text}
        with harness.autocast(spec):
            loss = diffusion.training_losses(decoder, images, diffusion.sample_timesteps(batch),
                                             model_kwargs=kwargs)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.float().backward()
        optimizer.step()

    return harness.Built(run, {"decoder": decoder},
                         notes={"loss": "hybrid (mse + learned-variance VB)", "precision": harness.precision(spec)})


BUILDERS = {"sample": build_sample, "prior_train": build_prior_train, "decoder_train": build_decoder_train}

if __name__ == "__main__":
    harness.main(BUILDERS, "unclip", versions)
