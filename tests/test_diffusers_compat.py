"""diffusers-style call arguments (unclip.pipelines.diffusers_compat) on tiny random pipelines."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from helpers.pipeline import tiny_clipvq, tiny_encoder, tiny_pipeline, _wake
from unclip.diffusion.schedule import DiffusionConfig, sampling_timesteps
from unclip.config import to_dict
from unclip.errors import UnclipError
from unclip.pipelines.diffusers_compat import ALIASES

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a red circle"
FAST = dict(progress=False, precision="fp32")


@pytest.fixture(scope="module")
def full():
    return tiny_pipeline("full")


@pytest.fixture(scope="module")
def latent_pipe():
    """A prior-free unCLIP pipeline whose decoder denoises 8x8x2 autoencoder latents."""
    from unclip.models.autoencoder import Autoencoder, AutoencoderConfig
    from unclip.models.unet import UNet, UNetConfig
    from unclip.pipelines.unclip import Component, UnCLIPPipeline

    encoder = tiny_encoder()
    torch.manual_seed(0)
    autoencoder = Autoencoder(AutoencoderConfig(image_size=16, base_channels=8, channel_mult=(1, 2), latent_channels=2))
    unet = UNet(UNetConfig(image_size=8, in_channels=2, out_channels=2, base_channels=16, channel_mults=(1, 2),
                           num_res_blocks=1, attention_resolutions=(4,), head_channels=16, context_dim=16,
                           image_embed_dim=encoder.embed_dim, text_token_dim=encoder.token_dim))
    info = {"role": "decoder", "diffusion": to_dict(DiffusionConfig(timesteps=100)), "autoencoder": "ae.safetensors"}
    decoder = Component(_wake(unet, 1), info, autoencoder)
    return UnCLIPPipeline(encoder, decoder, defaults={"decoder": {"steps": 3}}, name="tiny-latent")


@pytest.fixture(scope="module")
def clipvq():
    return tiny_clipvq()


def _red(size=16):
    return Image.new("RGB", (size, size), (220, 30, 30))


# --- generator= -------------------------------------------------------------------------
def test_generator_is_seed(full):
    a = full(PROMPT, num_images_per_prompt=2, generator=torch.Generator().manual_seed(5), output_type="pt", **FAST)
    b = full(PROMPT, num_images_per_prompt=2, seed=torch.Generator().manual_seed(5), output_type="pt", **FAST)
    assert a.seeds == b.seeds
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)


def test_a_list_of_generators_gives_each_image_its_own(full):
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    both = full(PROMPT, num_images_per_prompt=2, generator=gens(1, 2), output_type="pt", **FAST)
    second = full(PROMPT, generator=gens(2), output_type="pt", **FAST)
    # equal up to float noise of batched matmuls (the random tiny networks amplify it)
    torch.testing.assert_close(both.images[1:], second.images, rtol=0, atol=1e-2)
    assert both.seeds[1] == second.seeds[0]
    with pytest.raises(UnclipError, match="2 seeds for 3 images"):
        full(PROMPT, num_images_per_prompt=3, generator=gens(1, 2), **FAST)
    with pytest.raises(UnclipError, match="torch.Generator"):
        full(PROMPT, generator=3, **FAST)
    with pytest.raises(UnclipError, match="seed and generator set the same thing"):
        full(PROMPT, seed=0, generator=torch.Generator(), **FAST)


# --- steps and guidance ---------------------------------------------------------------------
def test_step_and_guidance_names_reach_their_stages(full):
    out = full(prompt=PROMPT, seed=0, prior_num_inference_steps=2, decoder_num_inference_steps=3,
               super_res_num_inference_steps=2, prior_guidance_scale=1.5, decoder_guidance_scale=2.5, **FAST)
    stages = out.settings["stages"]
    assert (stages["prior"]["steps"], stages["decoder"]["steps"], stages["upsampler"]["steps"]) == (2, 3, 2)
    assert (stages["prior"]["guidance_scale"], stages["decoder"]["guidance_scale"]) == (1.5, 2.5)
    # num_inference_steps / guidance_scale are the decoder's (as in diffusers' combined Kandinsky pipeline)
    out = full(PROMPT, seed=0, num_inference_steps=2, guidance_scale=4.0, **FAST)
    assert out.settings["stages"]["decoder"]["steps"] == 2 and out.settings["stages"]["decoder"]["guidance_scale"] == 4
    assert out.settings["stages"]["prior"]["steps"] == 4 and out.settings["stages"]["upsampler"]["steps"] == 4
    same = full(PROMPT, seed=0, decoder_steps=2, decoder_guidance=4.0, **FAST)
    assert [a.tobytes() for a in out.images] == [b.tobytes() for b in same.images]


@pytest.mark.parametrize("given", [("decoder_steps", "decoder_num_inference_steps"),
                                   ("num_inference_steps", "decoder_steps"),
                                   ("decoder_guidance", "guidance_scale"),
                                   ("prior_steps", "prior_num_inference_steps"),
                                   ("upsampler_steps", "super_res_num_inference_steps")])
def test_two_names_for_one_setting_are_an_error(full, given):
    with pytest.raises(UnclipError, match="set the same thing; pass only one of them"):
        full(PROMPT, **{name: 2 for name in given}, **FAST)


def test_prompt_keyword_and_positional_prompts_conflict(full):
    with pytest.raises(UnclipError, match="prompts .positional. and prompt"):
        full(PROMPT, prompt=PROMPT, **FAST)


def test_the_table_names_only_real_settings(full, clipvq):
    import inspect

    for (kind, method), table in ALIASES.items():
        pipe = full if kind == "unclip" else clipvq
        accepted = set(inspect.signature(getattr(pipe, method)).parameters)
        accepted |= set(inspect.signature(pipe.resolve_settings).parameters)
        assert set(table) <= accepted, (kind, method, set(table) - accepted)


# --- return_dict, output_type="latent" -------------------------------------------------------
def test_return_dict_false_is_a_tuple_of_images(full):
    out = full(PROMPT, seed=0, return_dict=False, **FAST)
    assert isinstance(out, tuple) and len(out) == 1 and isinstance(out[0][0], Image.Image)
    with pytest.raises(UnclipError, match="return_dict"):
        full(PROMPT, return_dict="no", **FAST)


def test_latent_output_is_the_decoder_sample_before_the_upsampler(full):
    latent = full(PROMPT, seed=0, output_type="latent", **FAST)
    base = full(PROMPT, seed=0, upsample=False, output_type="pt", **FAST)
    assert latent.images.shape == (1, 3, 16, 16) and "upsampler" not in latent.settings["stages"]
    torch.testing.assert_close(latent.images, base.images, rtol=0, atol=0)
    with pytest.raises(UnclipError, match="before the upsampler"):
        full(PROMPT, output_type="latent", super_res_num_inference_steps=2, **FAST)


def test_latent_output_of_a_latent_decoder_is_before_the_autoencoder(latent_pipe):
    kwargs = dict(seed=0, image_embed_source="text", **FAST)
    latent = latent_pipe(PROMPT, output_type="latent", **kwargs)
    pixels = latent_pipe(PROMPT, output_type="pt", **kwargs)
    assert latent.images.shape == (1, 2, 8, 8) and pixels.images.shape == (1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(latent_pipe.decoder.to_pixels(latent.images), pixels.images, rtol=0, atol=1e-5)


# --- callback_on_step_end ----------------------------------------------------------------------
def test_callback_on_step_end_sees_every_step_with_its_timestep(full):
    seen = []

    def record(pipe, step, timestep, callback_kwargs):
        assert pipe is full and isinstance(callback_kwargs["latents"], torch.Tensor)
        seen.append((callback_kwargs["stage"], step, int(timestep)))
        return callback_kwargs

    reference = full(PROMPT, seed=0, output_type="pt", decoder_spacing="linspace", **FAST)
    out = full(PROMPT, seed=0, output_type="pt", callback_on_step_end=record, decoder_spacing="linspace", **FAST)
    torch.testing.assert_close(out.images, reference.images, rtol=0, atol=0)  # returning the dict changes nothing
    prior_grid = sampling_timesteps(full.prior.model.config.diffusion.timesteps, 4, "trailing")
    decoder_grid = sampling_timesteps(full.decoder.diffusion.num_timesteps, 4, "linspace")
    assert [s for s in seen if s[0] == "prior"] == [("prior", i, t) for i, t in enumerate(prior_grid)]
    assert [s for s in seen if s[0] == "decoder"] == [("decoder", i, t) for i, t in enumerate(decoder_grid)]
    assert [s[1] for s in seen if s[0] == "upsampler"] == [0, 1, 2, 3]


def test_callback_on_step_end_may_replace_the_latents(full):
    def last_step_constant(pipe, step, timestep, callback_kwargs):
        if callback_kwargs["stage"] == "decoder" and step == 3:
            return {"latents": torch.full_like(callback_kwargs["latents"], 0.5)}
        return {}

    out = full(PROMPT, seed=0, output_type="latent", callback_on_step_end=last_step_constant, **FAST)
    torch.testing.assert_close(out.images, torch.full((1, 3, 16, 16), 0.5))

    def first_step_zero(pipe, step, timestep, callback_kwargs):
        if callback_kwargs["stage"] == "decoder" and step == 0:
            return {"latents": torch.zeros_like(callback_kwargs["latents"])}

    plain = full(PROMPT, seed=0, output_type="latent", **FAST)
    edited = full(PROMPT, seed=0, output_type="latent", callback_on_step_end=first_step_zero,
                  callback_on_step_end_tensor_inputs=["latents"], **FAST)
    assert not torch.allclose(plain.images, edited.images)


def test_callback_on_step_end_errors(full):
    with pytest.raises(UnclipError, match="can name latents, not 'prompt_embeds'"):
        full(PROMPT, callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["prompt_embeds"], **FAST)
    with pytest.raises(UnclipError, match="not both"):
        full(PROMPT, callback_on_step_end=lambda *a: {}, callback=lambda *a: None, **FAST)
    with pytest.raises(UnclipError, match="needs a callback_on_step_end"):
        full(PROMPT, callback_on_step_end_tensor_inputs=["latents"], **FAST)
    with pytest.raises(UnclipError, match="shaped like"):
        full(PROMPT, callback_on_step_end=lambda *a: {"latents": torch.zeros(2)}, **FAST)


# --- the manipulations ------------------------------------------------------------------------
def test_variations_take_diffusers_image_variation_names(full):
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    images = full.variations(_red(), num_images_per_prompt=2, generator=gens, decoder_num_inference_steps=2,
                             decoder_guidance_scale=2.0, return_dict=False, **FAST)[0]
    assert len(images) == 2
    latent = full.variations(_red(), num_images=2, seed=0, output_type="latent", num_inference_steps=2, **FAST)
    assert latent.images.shape == (2, 3, 16, 16) and latent.settings["stages"]["decoder"]["steps"] == 2
    with pytest.raises(UnclipError, match="num_images and num_images_per_prompt"):
        full.variations(_red(), num_images=2, num_images_per_prompt=2, **FAST)


def test_interpolate_and_text_diff_take_diffusers_names(full):
    steps = []
    frames = full.interpolate(_red(), Image.new("RGB", (16, 16), (20, 30, 220)), num_frames=2,
                              generator=torch.Generator().manual_seed(0), num_inference_steps=2, return_dict=False,
                              callback_on_step_end=lambda p, i, t, kw: steps.append((kw["stage"], i)), **FAST)[0]
    assert len(frames) == 2 and ("decoder", 1) in steps
    out = full.text_diff(_red(), "a red circle", "a blue circle", num_frames=2, generator=[torch.Generator()],
                         decoder_num_inference_steps=2, output_type="latent", **FAST)
    assert out.images.shape == (2, 3, 16, 16)


# --- CLIP-VQDiffusion ---------------------------------------------------------------------------
def test_clipvq_takes_diffusers_names(clipvq):
    base = clipvq(PROMPT, seed=7, steps=3, guidance_scale=2.0, output_type="pt", progress=False)
    out = clipvq(prompt=PROMPT, generator=[torch.Generator().manual_seed(0)], num_inference_steps=3,
                 decoder_guidance_scale=2.0, output_type="pt", progress=False)
    assert out.settings["stages"]["decoder"]["steps"] == 3 and out.settings["stages"]["decoder"]["guidance_scale"] == 2
    again = clipvq(PROMPT, seed=out.seeds, steps=3, guidance_scale=2.0, output_type="pt", progress=False)
    torch.testing.assert_close(out.images, again.images, rtol=0, atol=0)
    assert base.images.shape == (1, 3, 16, 16)
    with pytest.raises(UnclipError, match="steps and num_inference_steps"):
        clipvq(PROMPT, steps=3, num_inference_steps=3, progress=False)


def test_clipvq_latent_output_is_the_codes_and_callbacks_can_edit_them(clipvq):
    codes = clipvq(PROMPT, seed=1, output_type="latent", progress=False)
    pixels = clipvq(PROMPT, seed=1, output_type="pt", progress=False, precision="fp32")
    assert codes.images.dtype == torch.long and codes.images.shape == (1, clipvq.transformer.config.seq_len)
    with torch.no_grad():
        torch.testing.assert_close(clipvq.vq.decode(codes.images).float(), pixels.images)
    seen = []

    def last_code_zero(pipe, step, timestep, callback_kwargs):
        seen.append((step, int(timestep)))
        if step == 3:
            return {"latents": torch.zeros_like(callback_kwargs["latents"])}

    edited = clipvq(PROMPT, seed=1, output_type="latent", callback_on_step_end=last_code_zero, return_dict=False,
                    progress=False)[0]
    assert seen == [(0, 4), (1, 3), (2, 2), (3, 1)] and int(edited.abs().sum()) == 0
