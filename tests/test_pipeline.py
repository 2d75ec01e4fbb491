"""UnCLIPPipeline contract on tiny random components: round trip, determinism, manipulations, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.pipeline import tiny_component, tiny_encoder, tiny_pipeline, tiny_prior
from unclip.errors import UnclipError
from unclip.pipelines import PipelineOutput, assemble, load_pipeline
from unclip.pipelines.manipulate import slerp
from unclip.pipelines.registry import resolve_model
from unclip.pipelines.unclip import UnCLIPPipeline, make_seeds


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def glide():
    return tiny_pipeline("glide")


@pytest.fixture(scope="module")
def unclip_pipe():
    return tiny_pipeline("unclip")


@pytest.fixture(scope="module")
def full():
    return tiny_pipeline("full")


def _red(size=20):
    return Image.new("RGB", (size, size), (220, 30, 30))


def _blue(size=20):
    image = Image.new("RGB", (size, size), "white")
    image.paste((20, 40, 200), (4, 4, 16, 16))
    return image


def _pt(pipe, prompts, **kw):
    return pipe(prompts, progress=False, output_type="pt", **kw)


def test_text_to_image_shapes_and_output_types(glide):
    out = glide(["a red circle", "a blue square"], num_images_per_prompt=2, seed=3, progress=False)
    assert isinstance(out, PipelineOutput)
    assert len(out.images) == 4 and out.images[0].size == (32, 32) and out.images[0].mode == "RGB"
    assert out.seeds == [3, 4, 5, 6]
    assert out.prompts == ["a red circle"] * 2 + ["a blue square"] * 2
    assert out.settings["stages"]["decoder"]["steps"] == 4 and "upsampler" in out.settings["stages"]
    array = glide(["a red circle"], seed=0, progress=False, output_type="np").images
    assert array.shape == (1, 32, 32, 3) and array.dtype == np.float32 and 0 <= array.min() <= array.max() <= 1
    tensor = _pt(glide, ["a red circle"], seed=0).images
    assert tensor.shape == (1, 3, 32, 32) and torch.allclose((tensor[0].permute(1, 2, 0) + 1) / 2,
                                                              torch.from_numpy(array[0]), atol=1e-6)


# Batched and single runs of one seed differ by float rounding, which depends on the batch size, the
# thread count and the CPU, and which these random tiny nets (saturated at ±1) amplify chaotically.
# Worst mean |difference| of image i alone vs batched, tiny pipelines, ddim and dpm++2m
# (`PYTHONPATH=src:tests python scripts/batch_spread.py --threads N`): 0 with one thread and 0.018 with
# two on an AVX512 host; 0.0014 with one thread on another 2-core host (issue 23); two different seeds
# are >= 0.88 apart. So the test asks for the same image up to rounding: mean |difference| < ROUNDING
# (5x the worst measured), and nearer to its batched self than to another seed's image by 5x.
ROUNDING = 0.1


def assert_same_up_to_rounding(alone: torch.Tensor, batch: torch.Tensor, index: int) -> None:
    """``alone`` [3,H,W] is ``batch[index]`` up to float rounding, and nearer to it than to any other image."""
    own = (alone - batch[index]).abs().mean().item()
    others = [(alone - image).abs().mean().item() for j, image in enumerate(batch) if j != index]
    assert own < ROUNDING, f"image {index} alone differs from its batched self by {own:.4f} (mean |difference|)"
    assert all(own < other / 5 for other in others), (own, others)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm++2m"])
@pytest.mark.parametrize("kind", ["full", "glide"])
def test_determinism_and_per_image_seeds(glide, full, kind, sampler):
    glide = {"glide": glide, "full": full}[kind]
    a = _pt(glide, ["a red circle"], num_images_per_prompt=3, seed=11, sampler=sampler)
    b = _pt(glide, ["a red circle"], num_images_per_prompt=3, seed=11, sampler=sampler)
    assert torch.equal(a.images, b.images)  # same call, same machine: bit-identical
    assert not torch.allclose(a.images[0], a.images[1])  # different seeds, different images
    # Exactly: image i's starting noise comes from seeds[i] alone, whatever the batch.
    with_prior = glide.prior is not None
    batched, single = glide.noise(a.seeds, with_prior=with_prior), glide.noise(a.seeds[2:], with_prior=with_prior)
    for stage in ("prior", "decoder", "upsampler") if with_prior else ("decoder", "upsampler"):
        assert torch.equal(batched[stage][2], single[stage][0]), stage
    # Image i alone, from its recorded seed, is the same image up to float rounding.
    alone = _pt(glide, ["a red circle"], num_images_per_prompt=1, seed=a.seeds[2], sampler=sampler)
    assert_same_up_to_rounding(alone.images[0], a.images, 2)
    # A torch.Generator works too and its drawn seeds are recorded.
    g = _pt(glide, ["a red circle"], num_images_per_prompt=2, seed=torch.Generator().manual_seed(0), sampler=sampler)
    again = _pt(glide, ["a red circle"], num_images_per_prompt=2, seed=g.seeds, sampler=sampler)
    assert torch.equal(g.images, again.images)


def test_negative_prompt_guidance_and_callback(glide):
    calls = []
    base = _pt(glide, ["a red circle"], seed=1, callback=lambda stage, step, total, x: calls.append((stage, step, total)))
    assert ("decoder", 1, 4) in calls and ("decoder", 4, 4) in calls and ("upsampler", 4, 4) in calls
    negative = _pt(glide, ["a red circle"], seed=1, negative_prompt="a blue square")
    assert not torch.allclose(base.images, negative.images)
    unguided = _pt(glide, ["a red circle"], seed=1, decoder_guidance=1.0)
    assert not torch.allclose(base.images, unguided.images)
    fewer = _pt(glide, ["a red circle"], seed=1, decoder_steps=2)
    assert fewer.settings["stages"]["decoder"]["steps"] == 2


def test_bad_inputs_are_one_line_errors(glide, unclip_pipe):
    for bad in ([], [""], ["  "]):
        with pytest.raises(UnclipError):
            glide(bad, progress=False)
    with pytest.raises(UnclipError, match="num_images_per_prompt"):
        glide(["a"], num_images_per_prompt=0, progress=False)
    with pytest.raises(UnclipError, match="decoder_steps"):
        glide(["a"], decoder_steps=0, progress=False)
    with pytest.raises(UnclipError, match="sampler"):
        glide(["a"], sampler="euler", progress=False)
    with pytest.raises(UnclipError, match="seeds"):
        glide(["a"], num_images_per_prompt=2, seed=[1], progress=False)
    with pytest.raises(UnclipError, match="output_type"):
        glide(["a"], output_type="jpeg", progress=False)
    with pytest.raises(UnclipError, match="no prior"):
        unclip_pipe(["a red circle"], progress=False)
    with pytest.raises(UnclipError, match="text-only"):
        glide.variations(_red(), num_images=1, progress=False)
    with pytest.raises(UnclipError, match="image not found"):
        unclip_pipe.variations("/nonexistent.png", num_images=1, progress=False)
    assert make_seeds(7, 3) == [7, 8, 9]


def test_full_pipeline_prior_negative_prompt_and_callback(full):
    calls = []
    base = _pt(full, ["a red circle"], seed=2, callback=lambda stage, step, total, x: calls.append(stage))
    assert full.stages == ("prior", "decoder", "upsampler") and calls.count("prior") == 4
    assert base.settings["stages"]["prior"]["guidance_scale"] == 2.0
    negative = _pt(full, ["a red circle"], seed=2, negative_prompt="a blue square")
    assert not torch.allclose(base.images, negative.images)
    other_prior = _pt(full, ["a red circle"], seed=2, prior_guidance=5.0, prior_steps=3)
    assert not torch.allclose(base.images, other_prior.images)
    assert other_prior.settings["stages"]["prior"]["steps"] == 3


def test_save_load_round_trip(tmp_path, unclip_pipe, glide, full):
    path = full.save(tmp_path / "full")
    assert (path / "prior" / "model.safetensors").is_file()
    loaded = load_pipeline(path)
    assert loaded.stages == full.stages
    assert torch.equal(_pt(full, ["a red circle"], seed=8).images, _pt(loaded, ["a red circle"], seed=8).images)
    for name, pipe in (("unclip", unclip_pipe), ("glide", glide)):
        path = pipe.save(tmp_path / name)
        info = json.loads((path / "pipeline.json").read_text())
        assert info["kind"] == "unclip" and set(info["components"]) >= {"encoder", "decoder"}
        assert info["upsamplers"] == ["upsampler"]
        for part in ("encoder", "decoder", "upsampler"):
            assert (path / part).is_dir()
        # one self-describing file per component (unclip.components): no component.json beside it
        assert (path / "decoder" / "model.safetensors").is_file() and not (path / "decoder" / "component.json").exists()
        loaded = load_pipeline(path)
        assert isinstance(loaded, UnCLIPPipeline) and loaded.stages == pipe.stages and loaded.defaults == pipe.defaults
        if name == "glide":
            assert torch.equal(_pt(pipe, ["a blue square"], seed=2).images, _pt(loaded, ["a blue square"], seed=2).images)
        else:
            kw = dict(num_images=2, seed=4, progress=False, output_type="pt")
            assert torch.equal(pipe.variations(_red(), **kw).images, loaded.variations(_red(), **kw).images)
    with pytest.raises(UnclipError, match="already exists"):
        glide.save(tmp_path / "glide")


def test_assemble_from_stage_outputs(tmp_path):
    encoder = tiny_encoder()
    encoder.save(tmp_path / "enc")
    tiny_component("decoder", encoder).save(tmp_path / "run-dec" / "final" / "decoder")
    tiny_component("upsampler", encoder, seed=2).save(tmp_path / "run-up" / "final" / "upsampler")
    tiny_prior(encoder).save(tmp_path / "run-prior" / "final" / "prior")
    pipe = assemble(tmp_path / "pipe", encoder=tmp_path / "enc", decoder=tmp_path / "run-dec",
                    upsampler=tmp_path / "run-up" / "final", prior=tmp_path / "run-prior",
                    defaults={"decoder": {"steps": 3}})
    assert pipe.stages == ("prior", "decoder", "upsampler") and pipe.defaults["decoder"]["steps"] == 3
    assert len(pipe(["a red circle"], progress=False, seed=0, prior_steps=2, upsampler_steps=2).images) == 1
    assert (tmp_path / "pipe" / "pipeline.json").is_file()
    with pytest.raises(UnclipError, match="no trained decoder"):
        assemble(tmp_path / "pipe2", encoder=tmp_path / "enc", decoder=tmp_path / "nothing")


def test_variations(unclip_pipe):
    out = unclip_pipe.variations(_red(), num_images=3, seed=0, progress=False, output_type="pt")
    assert out.images.shape == (3, 3, 32, 32) and out.seeds == [0, 1, 2]
    assert not torch.allclose(out.images[0], out.images[1])
    # From the DDIM-inverted latent: eta = 0 gives one deterministic image whatever the seed.
    # (Checked at the decoder's output: the upsampler's own noise still differs by seed.)
    base_only = tiny_pipeline("unclip", upsampler=False)
    inv = base_only.variations(_red(), num_images=2, seed=0, from_inversion=True, eta=0.0, progress=False,
                               output_type="pt")
    assert inv.images.shape == (2, 3, 16, 16) and torch.allclose(inv.images[0], inv.images[1], atol=1e-5)
    diverse = unclip_pipe.variations(_red(), num_images=2, seed=0, from_inversion=True, eta=1.0, progress=False,
                                     output_type="pt")
    assert not torch.allclose(diverse.images[0], diverse.images[1])


def test_ddim_inversion_reconstructs_through_the_decoder():
    from unclip.diffusion.samplers import ddim_sample
    from unclip.pipelines.images import image_to_tensor
    from unclip.pipelines.manipulate import invert
    from unclip.pipelines.sampling import decoder_kwargs

    # A random network is no smooth ODE; a decoder with small outputs is (and still depends on z_i).
    unclip_pipe = tiny_pipeline("unclip", upsampler=False)
    with torch.no_grad():
        for p in unclip_pipe.decoder.model.out.parameters():
            p.mul_(0.001)
    x = image_to_tensor(_blue(), 16)[None]
    z = unclip_pipe.encoder.encode_image(x)
    latent = invert(unclip_pipe, x, z, steps=50)
    cond, _ = decoder_kwargs(unclip_pipe.decoder.model, 1, x.device, image_embed=z)
    back = ddim_sample(unclip_pipe.decoder.model, latent, unclip_pipe.decoder.diffusion, steps=50, model_kwargs=cond)
    assert (back - x).abs().mean() < 0.01


def test_interpolation_endpoints_and_fixed_noise(unclip_pipe):
    out = unclip_pipe.interpolate(_red(), _blue(), num_frames=4, seed=9, progress=False, output_type="pt")
    assert out.images.shape == (4, 3, 32, 32) and out.seeds == [9] * 4
    assert out.settings["thetas"] == [0.0, pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0]
    # Frame 0 decodes z_a with the fixed noise = a plain variation of image A with the same seed.
    var_a = unclip_pipe.variations(_red(), num_images=1, seed=9, progress=False, output_type="pt")
    assert_same_up_to_rounding(var_a.images[0], out.images, 0)  # a batch of 4 frames vs one image
    assert not torch.allclose(out.images[0], out.images[-1])
    inv = unclip_pipe.interpolate(_red(), _blue(), num_frames=3, seed=9, noise="inversion", progress=False,
                                  output_type="pt")
    assert inv.images.shape == (3, 3, 32, 32)
    with pytest.raises(UnclipError, match="num_frames"):
        unclip_pipe.interpolate(_red(), _blue(), num_frames=1, progress=False)


def test_text_diff(unclip_pipe):
    out = unclip_pipe.text_diff(_red(), "a red circle", "a blue square", num_frames=3, max_theta=0.5, seed=0,
                                progress=False, output_type="pt")
    assert out.images.shape == (3, 3, 32, 32) and out.settings["thetas"] == [0.0, 0.25, 0.5]
    assert not torch.allclose(out.images[0], out.images[-1])
    from unclip.pipelines.manipulate import text_diff_embeddings

    z = torch.nn.functional.normalize(torch.randn(1, 16), dim=-1)
    frames = text_diff_embeddings(unclip_pipe, z, "a red circle", "a blue square", torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(frames[0], z[0], atol=1e-5)
    text = unclip_pipe.encoder.encode_text(["a red circle", "a blue square"]).embed
    direction = torch.nn.functional.normalize(text[1] - text[0], dim=-1)
    assert torch.allclose(torch.nn.functional.normalize(frames[2], dim=-1), direction, atol=1e-4)
    with pytest.raises(UnclipError, match="same text embedding"):
        unclip_pipe.text_diff(_red(), "a red circle", "a red circle", num_frames=2, progress=False)


def test_slerp_properties():
    a = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    mid = slerp(a, b, 0.5)
    assert torch.allclose(mid.norm(dim=-1), torch.ones(5), atol=1e-5)
    # Equal angles to both ends at theta = 1/2.
    assert torch.allclose((mid * a).sum(-1), (mid * b).sum(-1), atol=1e-5)
    assert torch.allclose(slerp(a, a, 0.3), a, atol=1e-5)  # parallel: no NaN


def test_resolve_model_errors(tmp_path):
    with pytest.raises(UnclipError, match="--model PATH"):
        resolve_model("no-such-model-name")
    with pytest.raises(UnclipError, match="not found"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(UnclipError, match="not a pipeline directory"):
        resolve_model(str(tmp_path))
    (tmp_path / "pipeline.json").write_text('{"kind": "nope"}')
    with pytest.raises(UnclipError, match="unknown kind"):
        load_pipeline(str(tmp_path))
    (tmp_path / "pipeline.json").write_text("not json")
    with pytest.raises(UnclipError, match="unreadable"):
        load_pipeline(str(tmp_path))


def test_upsample_false_stops_after_the_decoder():
    from helpers.pipeline import tiny_pipeline

    pipe = tiny_pipeline("full", upsampler=True)
    full = pipe(["a red circle"], seed=0, progress=False, output_type="pt")
    base = pipe(["a red circle"], seed=0, progress=False, output_type="pt", upsample=False)
    assert full.images.shape[-1] == 32 and base.images.shape[-1] == 16
    assert "upsampler" not in base.settings["stages"]
    with pytest.raises(UnclipError, match="upsampler_steps"):
        pipe(["a red circle"], progress=False, upsample=False, upsampler_steps=3)
