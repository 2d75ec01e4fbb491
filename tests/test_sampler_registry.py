"""Adding a sampler is one function plus one registry line (issue #19): a sampler registered at run time
shows up in the CLI, the HTTP schema, the pipeline, ``unclip eval --set`` and the sampler contract with
no other edit. Also the typed per-stage settings (``unclip.pipelines.settings``) they all derive from."""

from __future__ import annotations

import argparse

import pytest
import torch

from helpers.pipeline import tiny_pipeline
from test_sampler_contract import gaussian_contract
from unclip.diffusion.registry import SAMPLERS, SamplerSpec, register, sampler_names, unregister
from unclip.diffusion.samplers import ddim_step, predict
from unclip.errors import UnclipError
from unclip.pipelines.settings import GUIDANCE_MAX, STAGE_DEFAULTS, StageSampling, resolve_stages

pytestmark = pytest.mark.usefixtures("one_thread")
NAME = "test-ddim0"


@torch.no_grad()
def ddim0_sample(model_fn, x_T, diffusion, *, timesteps, generator=None, callback=None, model_kwargs=None,
                    clip_denoised=False, dynamic_threshold=None):
    """A toy sampler: deterministic DDIM written out on the grid the caller computed."""
    acp = [float(diffusion.alphas_cumprod[t]) for t in timesteps] + [1.0]
    x = x_T
    for i, t in enumerate(timesteps):
        pred = predict(model_fn, diffusion, x, t, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                       dynamic_threshold=dynamic_threshold)
        x = ddim_step(pred, acp[i], acp[i + 1])
        if callback is not None:
            callback(i, len(timesteps), x, pred.x0)
    return x


@pytest.fixture
def new_sampler():
    register(SamplerSpec(NAME, ddim0_sample, help="a test sampler"))  # the one registry line
    yield NAME
    unregister(NAME)


def _subparser(name: str) -> argparse.ArgumentParser:
    from unclip.cli import build_parser

    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices[name]


def _help_of(parser: argparse.ArgumentParser, flag: str) -> str:
    return next(a for a in parser._actions if flag in a.option_strings).help


def test_a_new_sampler_is_in_the_cli_choices(new_sampler):
    assert new_sampler in _help_of(_subparser("generate"), "--sampler")
    assert new_sampler in _help_of(_subparser("vary"), "--sampler")
    assert new_sampler in sampler_names("gaussian")


def test_a_new_sampler_is_in_the_server_schema(new_sampler):
    from unclip.serve.schemas import GenerateIn

    enum = GenerateIn.model_json_schema()["properties"]["sampler"]["anyOf"][0]["enum"]
    assert new_sampler in enum and "ddim" in enum and "ancestral" in enum
    assert GenerateIn(prompt="a red circle", sampler=new_sampler).sampler == new_sampler
    with pytest.raises(ValueError, match="unknown sampler"):
        GenerateIn(prompt="a red circle", sampler="no-such-sampler")


def test_a_new_sampler_meets_the_contract(new_sampler):
    for shape in [(3, 5), (2, 3, 4, 4)]:
        gaussian_contract(new_sampler, shape)


def test_a_new_sampler_runs_in_the_pipeline_and_eval_set(new_sampler):
    from unclip.cli.eval import _parse_setting

    pipe = tiny_pipeline("full", upsampler=False)
    out = pipe("a red circle", seed=0, sampler=new_sampler, progress=False, precision="fp32", output_type="pt")
    assert out.settings["stages"]["decoder"]["sampler"] == new_sampler and torch.isfinite(out.images).all()
    assert _parse_setting(f"decoder_sampler={new_sampler}") == ("decoder_sampler", new_sampler)
    unregister(new_sampler)
    with pytest.raises(UnclipError, match="unknown sampler"):
        pipe("a red circle", seed=0, sampler=new_sampler, progress=False)


# --- typed settings ----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be in [1, 1000], got 0"),
    ({"steps": 2.5}, "steps must be an integer"),
    ({"guidance_scale": GUIDANCE_MAX + 1}, "guidance_scale must be in [0, 50]"),
    ({"eta": -0.1}, "eta must be in [0, 1]"),
    ({"spacing": "cubic"}, "unknown spacing 'cubic'"),
    ({"precision": "fp8"}, "precision must be one of auto, fp32, bf16, got 'fp8'"),
    ({"sampler": "euler"}, "unknown sampler 'euler'"),
    ({"sampler": "ancestral"}, "does not apply to unCLIP"),
    ({"sampler": "dpm++2m", "eta": 0.5}, "eta applies only"),
    ({"steps": 0, "stage": "decoder"}, "decoder_steps must be in"),
])
def test_stage_settings_are_validated_once_with_one_line_errors(kwargs, message):
    with pytest.raises(UnclipError) as exc:
        StageSampling(**kwargs)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_flat_keywords_map_onto_the_dataclass_over_the_defaults():
    out = resolve_stages(("prior", "decoder", "upsampler"), {"decoder": {"steps": 7, "spacing": "quadratic"}},
                         values={"decoder_guidance": 5, "sampler": "ddim", "eta": 0.3, "upsampler_sampler": "ddpm",
                                 "prior_steps": None})
    assert out["prior"] == STAGE_DEFAULTS["prior"].__class__(**{**STAGE_DEFAULTS["prior"].as_dict(), "eta": 0.3})
    assert (out["decoder"].steps, out["decoder"].spacing, out["decoder"].guidance_scale) == (7, "quadratic", 5)
    assert out["upsampler"].sampler == "ddpm" and out["upsampler"].eta == 0.0  # eta only where the sampler takes it
    with pytest.raises(UnclipError, match="unknown sampling setting 'decoder_stepz'"):
        resolve_stages(("decoder",), {}, values={"decoder_stepz": 3})


def test_cli_flags_and_server_limits_come_from_the_settings():
    from unclip.serve.config import ServeConfig
    from unclip.serve.schemas import GenerateIn

    parser = _subparser("generate")
    with pytest.raises(SystemExit):
        parser.parse_args(["x", "--decoder-guidance", str(GUIDANCE_MAX + 1)])
    assert parser.parse_args(["x", "--decoder-guidance", str(GUIDANCE_MAX)]).decoder_guidance == GUIDANCE_MAX
    schema = GenerateIn.model_json_schema()["properties"]
    assert schema["decoder_guidance"]["anyOf"][0]["maximum"] == GUIDANCE_MAX
    assert schema["upsampler_steps"]["anyOf"][0]["maximum"] == 1000
    with pytest.raises(ValueError, match="max_guidance"):
        ServeConfig(max_guidance=GUIDANCE_MAX + 1)


def test_eval_set_checks_sampling_settings_before_a_model_loads():
    from unclip.cli.eval import _parse_setting, _parse_sweep

    assert _parse_setting("decoder_guidance=3") == ("decoder_guidance", 3.0)
    assert _parse_setting("image_embed_source=text") == ("image_embed_source", "text")  # not a sampling setting
    with pytest.raises(UnclipError, match="decoder_steps must be an integer"):
        _parse_setting("decoder_steps=abc")
    with pytest.raises(UnclipError, match=r"decoder_guidance must be in \[0, 50\], got 99"):
        _parse_sweep("decoder_guidance=1,99")


def test_every_registered_sampler_has_traits_the_pipeline_reads():
    from unclip.pipelines.sampling import is_stochastic

    assert is_stochastic("ddpm") and not is_stochastic("ddim") and is_stochastic("ddim", 0.5)
    assert all(spec.name == name for name, spec in SAMPLERS.items())
