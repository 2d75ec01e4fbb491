"""Our samplers against an independent reference: diffusers' schedulers (test-only dependency).

With the same model function, betas, prediction type, timestep spacing and
noise, a full sampling run of ours must match the diffusers scheduler loop to
float tolerance.
"""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from unclip.diffusion import (  # noqa: E402
    DiffusionConfig,
    GaussianDiffusion,
    ddim_sample,
    ddpm_sample,
    dpmpp_2m_sample,
    sampling_timesteps,
)

T = 100
PREDICTION_NAMES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def toy_model(diffusion, learn_variance=False):
    """A deterministic, t-dependent, non-linear stand-in for a trained network.

    It denoises to a bounded x0 = tanh(...) and returns it in the diffusion's
    parameterisation, so every prediction type describes the same sampler ODE.
    """

    def model_fn(x, t):
        a = diffusion.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        s = (t.float() / T).view(-1, 1, 1, 1)
        x0 = torch.tanh(0.7 * a.sqrt() * x + s) + 0.1 * x.mean(dim=(1, 2, 3), keepdim=True) * a.sqrt()
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        out = {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[diffusion.config.prediction]
        if learn_variance:
            return torch.cat([out, torch.tanh(x - s)], dim=1)
        return out

    return model_fn


def make(schedule="linear", prediction="eps", learn_variance=False):
    return GaussianDiffusion(DiffusionConfig(schedule=schedule, timesteps=T, prediction=prediction,
                                             learn_variance=learn_variance))


def reference_loop(scheduler, model_fn, x, generator, **step_kwargs):
    for t in scheduler.timesteps:
        out = model_fn(x, torch.full((x.shape[0],), int(t), dtype=torch.long))
        x = scheduler.step(out, t, x, generator=generator, **step_kwargs).prev_sample
    return x


def x_T(seed=0):
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


def common(diffusion, prediction):
    return dict(num_train_timesteps=T, trained_betas=diffusion.betas.numpy(),
                prediction_type=PREDICTION_NAMES[prediction])


@pytest.mark.parametrize("prediction,learn_variance,spacing", [
    ("eps", False, "trailing"), ("x0", False, "trailing"), ("v", False, "linspace"), ("eps", True, "linspace"),
])
def test_ddpm_matches_diffusers(prediction, learn_variance, spacing):
    # Learned variance uses "linspace" (last t = 0): with "trailing" diffusers still adds noise on
    # the final step (it tests t > 0), which improved-diffusion and we do not.
    diffusion = make(prediction=prediction, learn_variance=learn_variance)
    model_fn = toy_model(diffusion, learn_variance)
    sched = diffusers.DDPMScheduler(**common(diffusion, prediction), clip_sample=False, timestep_spacing=spacing,
                                    variance_type="learned_range" if learn_variance else "fixed_small")
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == sampling_timesteps(T, 10, spacing)
    ref = reference_loop(sched, model_fn, x_T(), torch.Generator().manual_seed(1))
    ours = ddpm_sample(model_fn, x_T(), diffusion, steps=10, spacing=spacing, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("prediction,eta,schedule", [
    ("eps", 0.0, "linear"), ("x0", 0.0, "linear"), ("v", 0.0, "cosine"), ("eps", 0.5, "linear"), ("v", 1.0, "linear"),
])
def test_ddim_matches_diffusers(prediction, eta, schedule):
    diffusion = make(schedule, prediction)
    model_fn = toy_model(diffusion)
    # diffusers' DDIM steps back by T // steps, which equals our next timestep for "trailing" with T % steps == 0.
    sched = diffusers.DDIMScheduler(**common(diffusion, prediction), clip_sample=False, set_alpha_to_one=True,
                                    steps_offset=0, timestep_spacing="trailing")
    sched.set_timesteps(10)
    ref = reference_loop(sched, model_fn, x_T(), torch.Generator().manual_seed(1), eta=eta)
    ours = ddim_sample(model_fn, x_T(), diffusion, steps=10, spacing="trailing", eta=eta,
                       generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("prediction,steps,spacing", [
    ("eps", 10, "trailing"), ("x0", 20, "trailing"), ("v", 20, "linspace"), ("eps", 5, "linspace"), ("eps", 2, "trailing"),
])
def test_dpmpp_2m_matches_diffusers(prediction, steps, spacing):
    diffusion = make(prediction=prediction)
    model_fn = toy_model(diffusion)
    sched = diffusers.DPMSolverMultistepScheduler(
        **common(diffusion, prediction), algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        lower_order_final=True, final_sigmas_type="zero", thresholding=False, timestep_spacing="trailing")
    # diffusers' own "linspace" drops t = 0; pass our timesteps explicitly so both visit the same grid.
    sched.set_timesteps(timesteps=sampling_timesteps(T, steps, spacing))
    ref = reference_loop(sched, model_fn, x_T(), None)
    ours = dpmpp_2m_sample(model_fn, x_T(), diffusion, steps=steps, spacing=spacing)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


def test_dpmpp_2m_trailing_grid_is_diffusers_default():
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, timestep_spacing="trailing")
    sched.set_timesteps(7)
    assert sched.timesteps.tolist() == sampling_timesteps(T, 7, "trailing")


def test_clipping_matches_diffusers_ddim():
    diffusion = make(prediction="eps")
    model_fn = lambda x, t: 3.0 * torch.tanh(x)  # noqa: E731  (large x0 so clipping bites)
    sched = diffusers.DDIMScheduler(**common(diffusion, "eps"), clip_sample=True, clip_sample_range=1.0,
                                    set_alpha_to_one=True, steps_offset=0, timestep_spacing="trailing")
    sched.set_timesteps(10)
    ref = reference_loop(sched, model_fn, x_T(), None, use_clipped_model_output=True)
    ours = ddim_sample(model_fn, x_T(), diffusion, steps=10, clip_denoised=True)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)
    assert not torch.allclose(ours, ddim_sample(model_fn, x_T(), diffusion, steps=10))
