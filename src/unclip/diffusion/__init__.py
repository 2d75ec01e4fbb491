"""Diffusion core: schedules, Gaussian diffusion losses, samplers, guidance (see docs/diffusion.md)."""

from unclip.diffusion.registry import SamplerSpec, StepCallback, get_sampler, register, sampler_names
from unclip.diffusion.gaussian import GaussianDiffusion, Prediction, output_to_x0_eps, prediction_target
from unclip.diffusion.guidance import classifier_free_guidance, threshold_x0
from unclip.diffusion.samplers import (
    SAMPLERS,
    ddim_invert,
    ddim_sample,
    ddpm_sample,
    dpmpp_2m_sample,
    predict,
    sample,
)
from unclip.diffusion.schedule import DiffusionConfig, make_betas, respaced_betas, sampling_timesteps
from unclip.diffusion import discrete  # noqa: E402,F401  registers the discrete samplers in the one table

# Discrete (VQ) diffusion lives in unclip.diffusion.discrete; import its functions from there:
# ``from unclip.diffusion.discrete import ...``. Every sampler of both kinds is in ``SAMPLERS``.

__all__ = [
    "DiffusionConfig",
    "GaussianDiffusion",
    "Prediction",
    "SAMPLERS",
    "SamplerSpec",
    "StepCallback",
    "classifier_free_guidance",
    "ddim_invert",
    "ddim_sample",
    "ddpm_sample",
    "discrete",
    "dpmpp_2m_sample",
    "get_sampler",
    "make_betas",
    "output_to_x0_eps",
    "predict",
    "prediction_target",
    "register",
    "respaced_betas",
    "sample",
    "sampler_names",
    "sampling_timesteps",
    "threshold_x0",
]
