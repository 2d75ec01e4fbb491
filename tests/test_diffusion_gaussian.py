"""Schedules, respacing, parameterisations and training losses of the Gaussian diffusion."""

import math

import pytest
import torch

from unclip.config import from_dict
from unclip.diffusion import (
    DiffusionConfig,
    GaussianDiffusion,
    output_to_x0_eps,
    prediction_target,
    respaced_betas,
    sampling_timesteps,
    threshold_x0,
)
from unclip.diffusion.gaussian import discretized_gaussian_log_likelihood
from unclip.errors import ConfigError, UnclipError


def test_linear_schedule_matches_ho_2020():
    d = GaussianDiffusion(DiffusionConfig(schedule="linear", timesteps=1000))
    assert math.isclose(float(d.betas[0]), 1e-4) and math.isclose(float(d.betas[-1]), 0.02)
    assert 4e-5 < float(d.alphas_cumprod[-1]) < 5e-5
    d100 = GaussianDiffusion(DiffusionConfig(schedule="linear", timesteps=100))
    assert math.isclose(float(d100.betas[-1]), 0.2)           # scaled by 1000 / T like improved-diffusion


def test_cosine_schedule_matches_eq_17():
    cfg = DiffusionConfig(schedule="cosine", timesteps=50)
    d = GaussianDiffusion(cfg)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 25, 40):
        assert math.isclose(float(d.alphas_cumprod[t]), f((t + 1) / 50) / f(0), rel_tol=1e-9)
    assert float(d.betas.max()) <= 0.999 and bool((d.betas[1:] >= d.betas[:-1]).all())


def test_sampling_timesteps_spacings():
    assert sampling_timesteps(100, 10, "trailing") == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]
    assert sampling_timesteps(100, 10, "leading") == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    # diffusers' DDPMScheduler(timestep_spacing="leading", steps_offset=1).set_timesteps(10) on T = 100
    assert sampling_timesteps(100, 10, "leading_offset") == [91, 81, 71, 61, 51, 41, 31, 21, 11, 1]
    with pytest.raises(UnclipError, match="fewer sampling steps"):
        sampling_timesteps(100, 100, "leading_offset")
    # improved-diffusion space_timesteps(100, [10]): round(i * 99 / 9)
    assert sampling_timesteps(100, 10, "linspace") == [round(i * 99 / 9) for i in range(9, -1, -1)]
    assert sampling_timesteps(7, None) == list(range(6, -1, -1))
    # DDIM's quadratic selection counted from T-1: round(99 (1 - i/10)^2)
    assert sampling_timesteps(100, 10, "quadratic") == [99, 80, 63, 49, 36, 25, 16, 9, 4, 1]
    assert sampling_timesteps(1000, 8, "quadratic") == [999, 765, 562, 390, 250, 140, 62, 16]


@pytest.mark.parametrize("steps", [1, 7, 25, 100, 333, 1000])
def test_quadratic_grids_are_strict_and_nest(steps):
    grid = sampling_timesteps(1000, steps, "quadratic")
    assert len(grid) == steps and grid[0] == 999 and grid[-1] >= 0
    assert all(a > b for a, b in zip(grid, grid[1:]))          # rounding collisions pushed apart
    for n in (1, 2, 4, 8, 16, 32):                              # halving nests, for distillation
        assert sampling_timesteps(1000, 2 * n, "quadratic")[0::2] == sampling_timesteps(1000, n, "quadratic")


def test_respaced_betas_keep_alpha_bar():
    d = GaussianDiffusion(DiffusionConfig(timesteps=100))
    ts = sampling_timesteps(100, 7, "linspace")
    betas = respaced_betas(d.alphas_cumprod, ts)
    # the product of (1 - beta) from the clean end up to t_i is alpha_bar[t_i]
    cum = torch.cumprod((1 - betas).flip(0), 0).flip(0)
    torch.testing.assert_close(cum, d.alphas_cumprod[ts])
    full = respaced_betas(d.alphas_cumprod, list(range(99, -1, -1)))
    torch.testing.assert_close(full.flip(0), d.betas)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_parameterisations_round_trip(prediction):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    a = torch.rand(5, 1, generator=g) * 0.9 + 0.05
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    target = prediction_target(prediction, x0, noise, a)
    got_x0, got_eps = output_to_x0_eps(prediction, target, x_t, a)
    torch.testing.assert_close(got_x0, x0)
    torch.testing.assert_close(got_eps, noise)


def test_q_sample_statistics():
    d = GaussianDiffusion(DiffusionConfig(timesteps=100))
    x0 = torch.full((20000, 1), 2.0)
    t = torch.full((20000,), 50)
    x_t = d.q_sample(x0, t, torch.randn(20000, 1, generator=torch.Generator().manual_seed(0)))
    a = float(d.alphas_cumprod[50])
    assert abs(float(x_t.mean()) - 2 * math.sqrt(a)) < 0.03
    assert abs(float(x_t.var()) - (1 - a)) < 0.03


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_simple_loss_is_zero_for_the_exact_target(prediction):
    d = GaussianDiffusion(DiffusionConfig(timesteps=100, prediction=prediction))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    t = d.sample_timesteps(4, g)

    def oracle(x_t, tt):
        return prediction_target(prediction, x0, noise, d.alpha_bar(tt, x0))

    terms = d.training_losses(oracle, x0, t, noise=noise)
    assert terms["loss"].shape == (4,) and float(terms["loss"].max()) < 1e-10
    terms = d.training_losses(lambda x_t, tt: torch.zeros_like(x_t), x0, t, noise=noise)
    assert float(terms["mse"].min()) > 0.01


def test_hybrid_loss_vb_term():
    d = GaussianDiffusion(DiffusionConfig(timesteps=50, learn_variance=True, loss="hybrid"))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 2, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([5, 20, 49])

    def oracle(x_t, tt, var_value=-1.0):   # exact eps and the true posterior variance (v = -1)
        return torch.cat([noise, torch.full_like(noise, var_value)], dim=1)

    terms = d.training_losses(oracle, x0, t, noise=noise)
    assert float(terms["vb"].abs().max()) < 1e-5                  # KL(q || p) = 0 when p = q
    terms = d.training_losses(lambda x, tt: oracle(x, tt, 0.9), x0, t, noise=noise)
    assert float(terms["vb"].min()) > 0

    # the VB term trains only the variance half: the mean's gradient is stopped
    out = torch.cat([noise, torch.zeros_like(noise)], dim=1).requires_grad_(True)
    terms = d.training_losses(lambda x, tt: out, x0, t, noise=noise)
    terms["vb"].sum().backward()
    assert float(out.grad[:, :2].abs().max()) == 0 and float(out.grad[:, 2:].abs().max()) > 0


def test_t0_uses_the_decoder_likelihood():
    d = GaussianDiffusion(DiffusionConfig(timesteps=50, learn_variance=True, loss="hybrid"))
    x0 = torch.zeros(1, 1, 2, 2)
    noise = torch.zeros_like(x0)
    t0 = torch.tensor([0])

    def vb(eps_offset):
        out = torch.cat([noise + eps_offset, -torch.ones_like(noise)], 1)
        return float(d.training_losses(lambda x, t: out, x0, t0, noise=noise)["vb"])

    # at t = 0 the model mean is its x0, the log variance log beta~_1 (clipped)
    log_var = torch.log(d.betas[1] * (1 - d.alphas_cumprod[0]) / (1 - d.alphas_cumprod[1])).float()
    nll = -discretized_gaussian_log_likelihood(x0, torch.zeros_like(x0), 0.5 * log_var).mean() / math.log(2)
    assert math.isclose(vb(0.0), float(nll) * d.num_timesteps * d.config.vlb_weight, rel_tol=1e-4)
    assert vb(0.0) < vb(0.05)                                     # a wrong mean is less likely


def test_config_validation_and_from_dict():
    with pytest.raises(ConfigError, match="hybrid"):
        from_dict(DiffusionConfig, {"loss": "hybrid"})
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(DiffusionConfig, {"steps": 3})
    with pytest.raises(ConfigError, match="prediction"):
        from_dict(DiffusionConfig, {"prediction": "score"})
    assert from_dict(DiffusionConfig, {"prediction": "v", "timesteps": 64}).timesteps == 64


def test_dynamic_threshold_imagen():
    x0 = torch.tensor([[0.5, -0.2, 3.0, 0.1], [0.2, 0.3, -0.1, 0.0]])
    out = threshold_x0(x0, dynamic_threshold=1.0)
    torch.testing.assert_close(out[0], x0[0] / 3.0)               # s = max |x0| = 3 > 1: rescale
    torch.testing.assert_close(out[1], x0[1])                     # s < 1: s = 1, unchanged
    torch.testing.assert_close(threshold_x0(x0, clip_denoised=True)[0], torch.tensor([0.5, -0.2, 1.0, 0.1]))
