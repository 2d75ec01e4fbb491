"""Benchmark runner for DALLE2-pytorch 1.15.6 (run with bench/.venv-peers/bin/python).

Models are randomly initialised and driven with precomputed CLIP embeddings (no CLIP model):
``DiffusionPrior(DiffusionPriorNetwork(dim=256, depth=4, heads=8, dim_head=64))`` and a
``Decoder`` cascade of ``Unet``s, the sizes named in issue 9. Sampling with fewer steps than
the 1000 training timesteps uses the library's own DDIM loops (prior and decoder).
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import tv_stub  # noqa: E402

tv_stub.install()  # must precede the dalle2_pytorch import (see tv_stub's docstring)

import torch  # noqa: E402
from dalle2_pytorch import Decoder, DiffusionPrior, DiffusionPriorNetwork, Unet  # noqa: E402

import harness  # noqa: E402

UNET_SIZES = {
    # issue 9: ~5.1M at 32 px, ~51M at 64 px
    "small": dict(dim=32, cond_dim=64, dim_mults=(1, 2, 4)),
    "large": dict(dim=64, cond_dim=128, dim_mults=(1, 2, 4, 8)),
}


def versions() -> dict:
    from importlib.metadata import version

    return {"torch": torch.__version__, "dalle2-pytorch": version("dalle2-pytorch")}


def make_prior(spec: dict) -> DiffusionPrior:
    net = DiffusionPriorNetwork(
        dim=spec["embed_dim"], depth=4, heads=8, dim_head=64,
        num_timesteps=spec["timesteps"], max_text_len=spec["text_len"],
    )
    return DiffusionPrior(
        net, image_embed_dim=spec["embed_dim"], timesteps=spec["timesteps"],
        cond_drop_prob=0.2, condition_on_text_encodings=True,
    )


def make_unet(spec: dict, size: str, *, upsampler: bool) -> Unet:
    cond = dict(lowres_cond=True, attend_at_middle=False) if upsampler else dict(
        cond_on_text_encodings=True, text_embed_dim=spec["text_dim"], max_text_len=spec["text_len"])
    return Unet(image_embed_dim=spec["embed_dim"], channels=3, **UNET_SIZES[size], **cond)


def text_inputs(spec: dict, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    # precomputed CLIP text embedding [B, D] and token encodings [B, L, Dt]
    return torch.randn(batch, spec["embed_dim"]), torch.randn(batch, spec["text_len"], spec["text_dim"])


def build_sample(spec: dict) -> harness.Built:
    prior = make_prior(spec).eval()
    unets = (make_unet(spec, spec["decoder"], upsampler=False), make_unet(spec, spec["upsampler"], upsampler=True))
    decoder = Decoder(
        unet=unets, image_sizes=(spec["image_size"], spec["sr_size"]), timesteps=spec["timesteps"],
        sample_timesteps=(spec["decoder_steps"], spec["sr_steps"]), learned_variance=(True, False),
    ).eval()
    text_embed, text_encodings = text_inputs(spec, spec["images"])
    scales = (spec["decoder_guidance"], 1.0)  # guidance on the decoder, not on the upsampler

    @torch.no_grad()
    def run(prior_steps: int, decoder_steps: int, sr_steps: int) -> torch.Tensor:
        text_cond = dict(text_embed=text_embed, text_encodings=text_encodings)
        image_embed = prior.p_sample_loop(
            (spec["images"], spec["embed_dim"]), text_cond=text_cond,
            cond_scale=spec["prior_guidance"], timesteps=prior_steps)
        decoder.sample_timesteps = (decoder_steps, sr_steps)
        with harness.autocast(spec):
            return decoder.sample(image_embed=image_embed, text_encodings=text_encodings, cond_scale=scales).float()

    # Decoder rebuilds each Unet (cast_model_parameters): measure the ones it holds
    return harness.Built(run, {"prior": prior.net, "decoder": decoder.unets[0], "upsampler": decoder.unets[1]},
                         notes={"sampler": "DDIM (library default below 1000 steps), CFG as two forwards",
                                "precision": harness.precision(spec)})


def build_prior_train(spec: dict) -> harness.Built:
    prior = make_prior(spec).train()
    optimizer = torch.optim.AdamW(prior.parameters(), lr=1e-4)
    batch = spec["batch"]
    text_embed, text_encodings = text_inputs(spec, batch)
    image_embed = torch.randn(batch, spec["embed_dim"])

    def run() -> None:
        with harness.autocast(spec):
            loss = prior(text_embed=text_embed, image_embed=image_embed.clone(), text_encodings=text_encodings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return harness.Built(run, {"prior": prior.net}, notes={"precision": harness.precision(spec)})


def build_decoder_train(spec: dict) -> harness.Built:
    decoder = Decoder(unet=make_unet(spec, spec["decoder"], upsampler=False), image_sizes=(spec["image_size"],),
                      timesteps=spec["timesteps"], learned_variance=True).train()
    unet = decoder.unets[0]  # Decoder rebuilds the Unet it is given (cast_model_parameters)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    batch = spec["batch"]
    _, text_encodings = text_inputs(spec, batch)
    image_embed = torch.randn(batch, spec["embed_dim"])
    images = torch.rand(batch, 3, spec["image_size"], spec["image_size"])  # [0, 1]: auto-normalised

    def run() -> None:
        with harness.autocast(spec):
            loss = decoder(images, image_embed=image_embed, text_encodings=text_encodings, unet_number=1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return harness.Built(run, {"decoder": unet}, notes={"loss": "l2 + learned-variance VB term",
                                                          "precision": harness.precision(spec)})


BUILDERS = {"sample": build_sample, "prior_train": build_prior_train, "decoder_train": build_decoder_train}

if __name__ == "__main__":
    harness.main(BUILDERS, "dalle2-pytorch", versions)
