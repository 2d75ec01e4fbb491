"""Image-to-image (SDEdit) and inpainting (RePaint, fixed VQ tokens) on tiny models: samplers, pipelines, masks."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from helpers.pipeline import tiny_encoder, tiny_pipeline
from unclip.diffusion import DiffusionConfig, GaussianDiffusion, ddim_sample, sample, sampler_names, sampling_timesteps
from unclip.diffusion.samplers import inpaint, repaint_sample, sdedit_start
from unclip.errors import UnclipError
from unclip.pipelines.edits import box_mask, mask_tensor, parse_box

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = sampler_names("gaussian")


def _diffusion():
    return GaussianDiffusion(DiffusionConfig(timesteps=100, prediction="v"))


# --- samplers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_every_sampler_starts_at_start_step(name):
    diffusion = _diffusion()
    seen = []

    def model_fn(x, t):
        seen.append(int(t[0]))
        return 0.5 * torch.tanh(x)

    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    grid = sampling_timesteps(100, 6, "trailing")
    assert torch.equal(sample(name, model_fn, x, diffusion, steps=6, start_step=6), x) and not seen  # strength 0
    out = sample(name, model_fn, x, diffusion, steps=6, start_step=2, generator=torch.Generator().manual_seed(1))
    assert seen == grid[2:] and out.shape == x.shape and torch.isfinite(out).all()
    seen.clear()
    full = sample(name, model_fn, x, diffusion, steps=6, generator=torch.Generator().manual_seed(1))
    again = sample(name, model_fn, x, diffusion, steps=6, start_step=0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(full, again) and seen == grid + grid
    with pytest.raises(UnclipError, match="start_step"):
        sample(name, model_fn, x, diffusion, steps=6, start_step=7)


def test_sdedit_start_noises_to_the_grid_point():
    diffusion = _diffusion()
    x0, noise = torch.full((1, 3, 2, 2), 0.5), torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    assert sdedit_start(x0, noise, diffusion, steps=10, strength=0.0) == (x0, 10)
    assert sdedit_start(x0, noise, diffusion, steps=10, strength=1.0) == (noise, 0)
    x, start = sdedit_start(x0, noise, diffusion, steps=10, spacing="linspace", strength=0.3)
    t = sampling_timesteps(100, 10, "linspace")[start]
    a = float(diffusion.alphas_cumprod[t])
    assert start == 7 and torch.allclose(x, a**0.5 * x0 + (1 - a) ** 0.5 * noise)
    with pytest.raises(UnclipError, match="strength"):
        sdedit_start(x0, noise, diffusion, steps=10, strength=1.5)


def test_repaint_keeps_the_known_region_and_counts_its_calls():
    diffusion = _diffusion()
    calls = []

    def model_fn(x, t):
        calls.append(int(t[0]))
        return torch.tanh(x)

    known = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :4] = 1
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = repaint_sample(model_fn, x_T, diffusion, known=known, mask=mask, resample=3, steps=5,
                         generator=torch.Generator().manual_seed(2), clip_denoised=True)
    keep = mask.expand_as(out) == 0
    assert torch.equal(out[keep], known[keep])                              # exact outside the mask
    assert (out - known)[~keep].abs().mean() > 0.1                          # the masked region was regenerated
    assert len(calls) == 3 * 4 + 1                                          # U passes per step, 1 at the last
    # a full mask, no jumps and eta = 0: plain DDIM
    calls.clear()
    plain = ddim_sample(model_fn, x_T, diffusion, steps=5)
    same = repaint_sample(model_fn, x_T, diffusion, known=known, mask=torch.ones(1, 1, 8, 8), resample=1, steps=5,
                          eta=0.0, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(same, plain)
    with pytest.raises(UnclipError, match="dpm"):
        inpaint("dpm++2m", model_fn, x_T, diffusion, known=known, mask=mask, steps=5)
    with pytest.raises(UnclipError, match="resample"):
        repaint_sample(model_fn, x_T, diffusion, known=known, mask=mask, resample=0, steps=5)


# --- masks ---------------------------------------------------------------------------------------
def test_masks_from_boxes_pngs_and_tensors(tmp_path):
    image = Image.new("RGB", (40, 40), "white")
    pixels = mask_tensor((0, 0, 20, 20), image, 16, "cpu")
    fractions = mask_tensor((0, 0, 0.5, 0.5), image, 16, "cpu")
    assert pixels.shape == (1, 1, 16, 16) and torch.equal(pixels, fractions)
    assert float(pixels.sum()) == 64 and float(pixels[..., :8, :8].sum()) == 64
    box_mask((0, 0, 20, 20), 40, 40).save(tmp_path / "mask.png")
    assert torch.equal(mask_tensor(tmp_path / "mask.png", image, 16, "cpu"), pixels)
    tensor = torch.zeros(40, 40)
    tensor[:20, :20] = 1
    assert torch.equal(mask_tensor(tensor, image, 16, "cpu"), pixels)
    assert parse_box("1,2,3,4") == (1.0, 2.0, 3.0, 4.0)
    for bad in ("1,2,3", "a,b,c,d"):
        with pytest.raises(UnclipError, match="x0,y0,x1,y1"):
            parse_box(bad)
    with pytest.raises(UnclipError, match="outside"):
        box_mask((10, 10, 5, 20), 40, 40)
    with pytest.raises(UnclipError, match="empty"):
        mask_tensor(Image.new("L", (40, 40), 0), image, 16, "cpu")
    with pytest.raises(UnclipError, match="40x40"):
        mask_tensor(Image.new("L", (20, 40), 255), image, 16, "cpu")


# --- unCLIP image-to-image ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_pipe():
    return tiny_pipeline("full", upsampler=True)   # prior + decoder (16 px) + upsampler (32 px)


def _picture(seed=0, size=32):
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_img2img_strength_0_returns_the_input_and_1_is_generation(full_pipe):
    image = _picture()
    kw = dict(progress=False, output_type="pt", decoder_steps=4, upsampler_steps=3)
    same = full_pipe.img2img(image, "a red circle", strength=0.0, seed=0, **kw)
    assert torch.equal(same.images[0], image)                               # exactly, through the upsampler
    base = full_pipe.img2img(image, "a red circle", strength=0.0, seed=0, upsample=False,
                             **kw | {"upsampler_steps": None})
    assert base.images.shape == (1, 3, 16, 16)
    generated = full_pipe(["a red circle"], num_images_per_prompt=2, seed=3, **kw)
    edited = full_pipe.img2img(image, "a red circle", strength=1.0, num_images=2, seed=3, **kw)
    assert torch.equal(edited.images, generated.images)
    steps = []
    half = full_pipe.img2img(image, "a blue square", strength=0.5, seed=0, callback=lambda *a: steps.append(a[:3]),
                             **kw)
    assert half.settings["start_steps"] == {"decoder": 2, "upsampler": 1}   # 4 - round(2), 3 - round(1.5)
    assert [s for s in steps if s[0] == "decoder"] == [("decoder", 1, 2), ("decoder", 2, 2)]
    assert not torch.equal(half.images[0], image) and half.settings["image_embed_source"] == "prior"
    with pytest.raises(UnclipError, match="strength"):
        full_pipe.img2img(image, "a red circle", strength=1.2, **kw)


def test_img2img_without_a_prompt_uses_the_images_own_embedding():
    pipe = tiny_pipeline("unclip", upsampler=False)   # no prior: only the image's z_i (or text/none) can condition
    image = _picture(1, 16)
    out = pipe.img2img(image, strength=0.5, seed=0, progress=False, output_type="pt")
    assert out.settings["image_embed_source"] == "image" and out.images.shape == (1, 3, 16, 16)
    assert torch.equal(pipe.img2img(image, strength=0.0, progress=False, output_type="pt").images[0], image)
    captioned = pipe.img2img(image, "a red circle", image_embed_source="image", strength=0.5, seed=0,
                             progress=False, output_type="pt")
    assert not torch.equal(captioned.images, out.images)                    # the caption tokens reach the decoder
    with pytest.raises(UnclipError, match="no prior"):
        pipe.img2img(image, "a red circle", progress=False)
    with pytest.raises(UnclipError, match="text-only"):
        tiny_pipeline("glide", upsampler=False).img2img(image, progress=False)


# --- unCLIP inpainting ---------------------------------------------------------------------------
def test_inpaint_changes_the_mask_and_keeps_the_rest(full_pipe):
    image = _picture(2)
    kw = dict(progress=False, output_type="pt", decoder_steps=4, upsampler_steps=3, seed=0, num_images=2)
    out = full_pipe.inpaint(image, (0, 0, 0.5, 0.5), "a blue square", resample=2, paste_back=False, **kw)
    diff = (out.images - image).abs()
    assert diff[:, :, :16, :16].mean() > 0.1                                # regenerated
    assert diff[:, :, 16:].max() < 1e-5 and diff[:, :, :, 16:].max() < 1e-5  # RePaint alone keeps the rest
    assert not torch.equal(out.images[0], out.images[1])                    # each image its own seed
    again = full_pipe.inpaint(image, (0, 0, 0.5, 0.5), "a blue square", resample=2, paste_back=False, **kw)
    assert torch.equal(again.images, out.images)
    assert out.settings["masked_fraction"] == 0.25 and out.settings["stages"]["decoder"]["eta"] == 1.0
    assert out.settings["stages"]["prior"]["eta"] == 0.0                     # the prior keeps its own sampler
    with pytest.raises(UnclipError, match="dpm"):
        full_pipe.inpaint(image, (0, 0, 0.5, 0.5), "a blue square", sampler="dpm++2m", **kw)
    with pytest.raises(UnclipError, match="resample"):
        full_pipe.inpaint(image, (0, 0, 0.5, 0.5), "a blue square", resample=0, **kw)


def _latent_pipeline():
    """A pixel-free decoder: 8x8x2 latents of a random 16 px autoencoder (no training; shapes only)."""
    from helpers.pipeline import _wake
    from unclip.config import to_dict
    from unclip.models.autoencoder import Autoencoder, AutoencoderConfig
    from unclip.models.unet import UNet, UNetConfig
    from unclip.pipelines.unclip import Component, UnCLIPPipeline

    torch.manual_seed(0)
    encoder = tiny_encoder()
    autoencoder = Autoencoder(AutoencoderConfig(image_size=16, base_channels=8, channel_mult=(1, 2),
                                                latent_channels=2)).eval()
    cfg = UNetConfig(image_size=8, in_channels=2, out_channels=2, base_channels=16, channel_mults=(1, 2),
                     num_res_blocks=1, head_channels=16, context_dim=16, attention_resolutions=(4,),
                     image_embed_dim=encoder.embed_dim, text_token_dim=encoder.token_dim)
    info = {"role": "decoder", "diffusion": to_dict(DiffusionConfig(timesteps=100, prediction="v")),
            "autoencoder": "autoencoder.safetensors"}
    decoder = Component(_wake(UNet(cfg), 1), info, autoencoder)
    return UnCLIPPipeline(encoder, decoder, defaults={"decoder": {"steps": 4}}, name="tiny-latent")


def test_latent_decoder_edits():
    pipe = _latent_pipeline()
    image = _picture(3, 16)
    kw = dict(progress=False, output_type="pt", precision="fp32")
    round_trip = pipe.decoder.to_pixels(pipe.decoder.from_pixels(image[None]))
    torch.testing.assert_close(pipe.img2img(image, strength=0.0, **kw).images, round_trip)  # the autoencoder's
    mask = torch.zeros(16, 16)
    mask[4:10, 4:10] = 1                                                    # latent cells 2..4: max-pooled
    out = pipe.inpaint(image, mask, seed=0, resample=2, **kw)
    keep = mask.bool().logical_not().expand(1, 3, 16, 16)
    assert torch.equal(out.images[keep], image[None][keep])                 # original pixels pasted back
    assert (out.images - image).abs()[~keep].mean() > 0.05
    latents = []                                                            # the decoder's last sample
    pipe.inpaint(image, mask, seed=0, resample=2, paste_back=False, callback=lambda *a: latents.append(a[3]), **kw)
    known = pipe.decoder.from_pixels(image[None])
    cell_mask = torch.zeros(8, 8, dtype=torch.bool)
    cell_mask[2:5, 2:5] = True                                              # a cell with any masked pixel
    torch.testing.assert_close(latents[-1][..., ~cell_mask], known[..., ~cell_mask])
    assert (latents[-1] - known)[..., cell_mask].abs().mean() > 0.05


# --- CLIP-VQDiffusion fixed-token inpainting ---------------------------------------------------
def test_discrete_samplers_keep_fixed_tokens():
    from unclip.diffusion import discrete

    schedule = discrete.mask_replace_schedule(6, discrete.DiscreteDiffusionConfig(num_steps=10))
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    model_fn = lambda x, t: torch.log_softmax(logits.expand(x.shape[0], -1, -1), dim=1)  # noqa: E731
    known = torch.tensor([[0, 1, 2, 3, 4]] * 2)
    keep = torch.tensor([[True, False, True, False, False]] * 2)
    for sampler in (discrete.sample, discrete.sample_purity):
        codes = sampler(model_fn, (2, 5), schedule, generator=torch.Generator().manual_seed(1), known=known, keep=keep)
        assert torch.equal(codes[keep], known[keep]) and (codes < 6).all()


def test_clipvq_inpaint_keeps_the_rest():
    from unclip.models.token_transformer import TokenTransformer, TokenTransformerConfig
    from unclip.models.vq import VQConfig, VQModel
    from unclip.pipelines.clip_vq import ClipVQPipeline
    from unclip.diffusion.discrete import DiscreteDiffusionConfig

    torch.manual_seed(0)
    encoder = tiny_encoder()
    vq = VQModel(VQConfig(image_size=16, base_channels=8, embed_dim=8, codebook_size=16, kmeans_init=False))
    net = TokenTransformer(TokenTransformerConfig(num_codes=16, grid_size=(4, 4), cond_dim=16, width=32, depth=1,
                                                  heads=2, num_steps=10))
    pipe = ClipVQPipeline(encoder, vq, net, diffusion=DiscreteDiffusionConfig(num_steps=10), defaults={"steps": 5})
    image = _picture(4, 16)
    for prompt in (None, "a red circle"):
        out = pipe.inpaint(image, (0, 0, 8, 16), prompt, seed=0, num_images=2, progress=False, output_type="pt")
        assert out.images.shape == (2, 3, 16, 16) and out.settings["fixed_tokens"] == 8
        assert torch.equal(out.images[..., 8:], image[None, :, :, 8:].expand(2, -1, -1, -1))
        again = pipe.inpaint(image, (0, 0, 8, 16), prompt, seed=0, num_images=2, progress=False, output_type="pt")
        assert torch.equal(out.images, again.images)
    with pytest.raises(UnclipError, match="resample"):
        pipe.inpaint(image, (0, 0, 8, 16), resample=2, progress=False)
    styled = pipe(["red apple"], style="fluent", seed=0, progress=False)   # generation's style= on this kind too
    assert styled.prompts == ["a Fluent-style emoji of red apple"] and styled.settings["style"] == "fluent"
