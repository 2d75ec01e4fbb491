"""Diffusion core: schedules, Gaussian diffusion losses, samplers, guidance (see docs/diffusion.md)."""

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

# Discrete (VQ) diffusion lives in unclip.diffusion.discrete (owned by the CLIP-VQDiffusion engineer);
# import it from there: ``from unclip.diffusion.discrete import ...``.

__all__ = [
    "DiffusionConfig",
    "GaussianDiffusion",
    "Prediction",
    "SAMPLERS",
    "classifier_free_guidance",
    "ddim_invert",
    "ddim_sample",
    "ddpm_sample",
    "dpmpp_2m_sample",
    "make_betas",
    "output_to_x0_eps",
    "predict",
    "prediction_target",
    "respaced_betas",
    "sample",
    "sampling_timesteps",
    "threshold_x0",
]
