"""The sampler contract, run over every registered sampler (Gaussian and discrete), plus the analytic
Gaussian test and DDIM inversion.

``gaussian_contract`` / ``discrete_contract`` are plain functions so a sampler registered at run time
(tests/test_sampler_registry.py) meets the same contract without edits here.
"""

import math

import pytest
import torch

from unclip.diffusion import (
    SAMPLERS,
    DiffusionConfig,
    GaussianDiffusion,
    classifier_free_guidance,
    ddim_invert,
    ddim_sample,
    discrete,
    sample,
    sampler_names,
)
from unclip.diffusion.samplers import inpaint
from unclip.errors import UnclipError

NAMES = sampler_names("gaussian")


def gaussian_denoiser(diffusion, mu, std):
    """The exact network for data x0 ~ N(mu, std^2): E[x0 | x_t] in the diffusion's parameterisation.

    E[x0 | x_t] = mu + sqrt(a) std^2 / (a std^2 + 1 - a) (x_t - sqrt(a) mu).
    """

    def model_fn(x, t):
        a = diffusion.alphas_cumprod[t].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        x0 = mu + a.sqrt() * std**2 / (a * std**2 + 1 - a) * (x - a.sqrt() * mu)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[diffusion.config.prediction]

    return model_fn


def tiny(prediction="eps", schedule="cosine", timesteps=200):
    return GaussianDiffusion(DiffusionConfig(schedule=schedule, timesteps=timesteps, prediction=prediction))


def gaussian_contract(name, shape):
    """What every Gaussian sampler does: the caller's grid in order, one callback per step, the declared
    traits (stochastic or not, eta, RePaint), and the same result for the same seed."""
    spec = SAMPLERS[name]
    diffusion = tiny()
    seen_t, steps_seen = [], []

    def model_fn(x, t, scale):
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        seen_t.append(int(t[0]))
        return scale * torch.tanh(x)

    def run(seed, **kwargs):
        x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        return sample(name, model_fn, x_T, diffusion, steps=7, generator=torch.Generator().manual_seed(seed),
                      model_kwargs={"scale": 0.5},
                      callback=lambda i, n, x, x0: steps_seen.append((i, n, x.shape, x0.shape)), **kwargs)

    out = run(1)
    assert out.shape == shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert steps_seen == [(i, 7, torch.Size(shape), torch.Size(shape)) for i in range(7)]
    assert seen_t == sorted(seen_t, reverse=True) and len(set(seen_t)) == 7
    assert seen_t[0] == diffusion.num_timesteps - 1 and 0 <= seen_t[-1]
    torch.testing.assert_close(run(1), out)                       # same seed, same result
    assert torch.allclose(run(2), out) is not spec.is_stochastic()  # only a stochastic one uses the generator
    if spec.takes_eta:
        assert not torch.allclose(run(2, eta=1.0), run(1, eta=1.0))
    else:
        with pytest.raises(UnclipError, match="eta"):
            run(1, eta=0.5)
    if spec.can_repaint:                                          # RePaint keeps the known region exactly
        known = torch.randn(shape, generator=torch.Generator().manual_seed(3))
        mask = torch.zeros(shape[0], *([1] * (len(shape) - 1)))
        mask[0] = 1
        x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        painted = inpaint(name, lambda x, t: torch.tanh(x), x_T, diffusion, known=known, mask=mask, steps=4,
                          resample=2, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(painted[1:], known[1:])
    else:
        with pytest.raises(UnclipError, match="RePaint"):
            inpaint(name, model_fn, torch.zeros(shape), diffusion, known=torch.zeros(shape),
                    mask=torch.ones(shape[0], *([1] * (len(shape) - 1))), steps=4)


def discrete_contract(name):
    """What every discrete (VQ) sampler does: codes in [0, K), ``steps`` model calls and callbacks,
    per-row generators (a row does not depend on its batch), fixed tokens kept, an oracle recovered."""
    spec = SAMPLERS[name]
    K, N = 8, 6
    schedule = discrete.mask_replace_schedule(K, discrete.DiscreteDiffusionConfig(num_steps=12))
    calls, steps_seen = [], []

    def model_fn(x_t, t):
        assert x_t.dtype == torch.long and t.shape == (x_t.shape[0],) and 1 <= int(t.min()) <= int(t.max()) <= 12
        calls.append(int(t[0]))
        logits = torch.sin(torch.arange(K * N, dtype=torch.float32).reshape(1, K, N) + x_t[:, None, :].float())
        return torch.log_softmax(logits, dim=1)

    def run(seeds, **kwargs):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return spec.fn(model_fn, (len(seeds), N), schedule, steps=4, generator=gens,
                       callback=lambda i, n, x, x0: steps_seen.append((i, n, x.shape, x0.shape)), **kwargs)

    out = run([1, 2])
    assert out.shape == (2, N) and out.dtype == torch.long and 0 <= int(out.min()) and int(out.max()) < K
    assert len(calls) == 4 and calls == sorted(calls, reverse=True)
    assert steps_seen == [(i, 4, torch.Size((2, N)), torch.Size((2, N))) for i in range(4)]
    assert torch.equal(run([1, 2]), out) and torch.equal(run([2])[0], out[1])
    known, keep = torch.full((2, N), 3), torch.zeros(2, N, dtype=torch.bool)
    keep[:, :2] = True
    assert (run([1, 2], known=known, keep=keep)[:, :2] == 3).all()
    target = torch.tensor([[1, 2, 3, 4, 5, 6]])

    def oracle(x_t, t):
        return torch.log(discrete.index_to_log_onehot(target.expand(x_t.shape[0], N), K).exp().clamp_min(1e-12))

    assert torch.equal(spec.fn(oracle, (2, N), schedule, steps=3, generator=torch.Generator().manual_seed(0)),
                       target.expand(2, N))


@pytest.mark.parametrize("name", sampler_names())
def test_sampler_contract(name):
    if SAMPLERS[name].kind == "discrete":
        discrete_contract(name)
    else:
        for shape in [(3, 5), (2, 3, 4, 4)]:
            gaussian_contract(name, shape)


def test_the_registry_holds_both_kinds():
    assert set(sampler_names("gaussian")) >= {"ddpm", "ddim", "dpm++2m"}
    assert set(sampler_names("discrete")) >= {"ancestral", "purity"}
    assert all(SAMPLERS[n].supports_inversion is (n == "ddim") for n in ("ddpm", "ddim", "dpm++2m"))


@pytest.mark.parametrize("name", NAMES)
def test_sampler_clipping_bounds_the_result(name):
    diffusion = tiny()
    x_T = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    wild = lambda x, t: 5 * x  # noqa: E731
    assert sample(name, wild, x_T, diffusion, steps=5).abs().max() > 1
    assert sample(name, wild, x_T, diffusion, steps=5, clip_denoised=True).abs().max() <= 1 + 1e-6
    assert sample(name, wild, x_T, diffusion, steps=5, dynamic_threshold=0.9).abs().max() <= 1 + 1e-6


# DDPM with the fixed-small variance needs the full chain of a long schedule to be unbiased in the
# variance, so it runs 1000 steps, once; the deterministic samplers run each parameterisation.
@pytest.mark.parametrize("name,timesteps,steps,prediction", [
    ("ddpm", 1000, 1000, "v"),
    *[("ddim", 200, 100, p) for p in ("eps", "x0", "v")],
    *[("dpm++2m", 200, 50, p) for p in ("eps", "x0", "v")],
    ("ddim-quadratic", 200, 50, "v"), ("dpm++2m-quadratic", 200, 25, "v"),
])
def test_sampler_reproduces_gaussian_data(name, timesteps, steps, prediction):
    name, _, spacing = name.partition("-")
    diffusion = tiny(prediction, timesteps=timesteps)
    mu, std = torch.tensor([0.5, -1.0, 0.0, 2.0]), torch.tensor([0.3, 1.0, 0.2, 0.6])
    n = 3000
    x_T = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    x0 = sample(name, gaussian_denoiser(diffusion, mu, std), x_T, diffusion, steps=steps,
                spacing=spacing or "trailing", generator=torch.Generator().manual_seed(1))
    # Monte-Carlo error of the mean is std / sqrt(n) ~ 0.018 std and of the std ~ 1.3%; the rest of the
    # tolerance is discretisation (DDPM with fixed-small variance under-disperses with few steps).
    assert torch.allclose((x0.mean(0) - mu) / std, torch.zeros(4), atol=0.06), (x0.mean(0) - mu) / std
    assert torch.allclose(x0.std(0) / std, torch.ones(4), atol=0.07), x0.std(0) / std


def test_gaussian_check_fails_for_a_wrong_denoiser():
    diffusion = tiny()
    mu, std = torch.zeros(2), torch.ones(2)
    x_T = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    wrong = gaussian_denoiser(diffusion, mu, 0.5 * std)
    x0 = sample("ddim", wrong, x_T, diffusion, steps=50)
    assert not torch.allclose(x0.std(0), std, atol=0.08)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddim_inversion_round_trip(prediction):
    diffusion = tiny(prediction, schedule="linear", timesteps=1000)
    mu, std = torch.tensor([0.2, -0.4, 0.0]), torch.tensor([0.5, 0.8, 0.3])
    model_fn = gaussian_denoiser(diffusion, mu, std)
    x0 = mu + std * torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    x_T = ddim_invert(model_fn, x0, diffusion, steps=100)
    assert (x_T - x0).abs().mean() > 0.3                          # it did move to noise
    assert abs(float(x_T.std()) - 1.0) < 0.3                      # latents look like N(0, I)
    error = (ddim_sample(model_fn, x_T, diffusion, steps=100) - x0).abs().max()
    assert error < 0.05
    # the round-trip error is first order in the step size: twice the steps, about half the error
    x_T_fine = ddim_invert(model_fn, x0, diffusion, steps=200)
    assert (ddim_sample(model_fn, x_T_fine, diffusion, steps=200) - x0).abs().max() < 0.6 * error
    # the same on the quadratic grid; decoding on another grid than the inversion's retraces it less well
    x_T_quad = ddim_invert(model_fn, x0, diffusion, steps=100, spacing="quadratic")
    matched = (ddim_sample(model_fn, x_T_quad, diffusion, steps=100, spacing="quadratic") - x0).abs().max()
    assert matched < 0.05
    assert (ddim_sample(model_fn, x_T_quad, diffusion, steps=100) - x0).abs().max() > 1.3 * matched


def test_classifier_free_guidance_is_one_batched_forward():
    calls = []

    def model_fn(x, t, cond, drop):
        calls.append(x.shape[0])
        return x + torch.where(drop[:, None], torch.zeros_like(cond), cond)

    x = torch.randn(3, 4)
    t = torch.zeros(3, dtype=torch.long)
    cond = torch.randn(3, 4)
    keep, drop = torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)
    guided = classifier_free_guidance(model_fn, 2.5, {"drop": drop})
    out = guided(x, t, cond=cond, drop=keep)
    assert calls == [6]
    torch.testing.assert_close(out, x + 2.5 * cond)
    assert classifier_free_guidance(model_fn, 1.0, {"drop": drop}) is model_fn


def test_guidance_with_learned_variance_keeps_conditional_variance():
    def model_fn(x, t, c):
        return torch.cat([x * c[:, None], x + c[:, None]], dim=1)

    x, t = torch.ones(2, 2), torch.zeros(2, dtype=torch.long)
    guided = classifier_free_guidance(model_fn, 3.0, {"c": torch.zeros(2)}, learn_variance=True)
    out = guided(x, t, c=torch.ones(2))
    torch.testing.assert_close(out[:, :2], 3.0 * x)
    torch.testing.assert_close(out[:, 2:], x + 1)


def test_sample_rejects_bad_arguments():
    diffusion = tiny()
    fn = lambda x, t: x  # noqa: E731
    x = torch.zeros(1, 2)
    with pytest.raises(UnclipError, match="unknown sampler"):
        sample("euler", fn, x, diffusion)
    with pytest.raises(UnclipError, match="eta"):
        sample("dpm++2m", fn, x, diffusion, eta=0.5)
    with pytest.raises(UnclipError, match="steps"):
        sample("ddim", fn, x, diffusion, steps=10_000)
    with pytest.raises(UnclipError, match="spacing"):
        sample("ddim", fn, x, diffusion, steps=10, spacing="weird")
    assert math.isfinite(float(sample("ddim", fn, x, diffusion, steps=3, eta=1.0).sum()))
