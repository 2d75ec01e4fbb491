"""Samplers for Gaussian diffusion, as pure functions (house rule 1).

Every sampler has the form::

    sample_x(model_fn, x_T, diffusion, *, timesteps, generator, callback,
             model_kwargs, clip_denoised, dynamic_threshold, ...) -> x_0

``model_fn(x_t, t, **model_kwargs)`` is the raw network (or a guidance wrapper
around it); ``t`` holds integer training timesteps [B]. ``diffusion`` is a
``GaussianDiffusion`` (schedule + parameterisation). Sampling runs on the
descending training timesteps ``timesteps`` the caller computed (``grid``: ``steps``
and ``spacing`` from ``start_step`` on; the samplers also take ``steps``/``spacing``/
``start_step`` and compute it themselves), and its last step lands on the clean sample
(alpha_bar = 1). State lives in local variables only. ``callback(step, total, x, x0)``
(``unclip.diffusion.registry.StepCallback``) is called after each step with the new
sample and the predicted x0 of that step. The samplers and their traits are registered
at the end of this file (``unclip.diffusion.registry``); ``sample(name, ...)`` runs one.

* ``ddpm``   ancestral sampling, Ho et al. 2020 Alg. 2, on respaced betas
             (Nichol & Dhariwal 2021 §4), learned or fixed-small variance.
* ``ddim``   Song et al. 2021 eq. 12 with eta (eta = 0: deterministic).
* ``dpm++2m`` DPM-Solver++(2M), Lu et al. 2022 Alg. 2 (data prediction, multistep).
* ``ddim_invert`` deterministic DDIM run backwards, x_0 -> x_T (Song et al. 2021 §4.3).
* ``sdedit_start`` noises a clean sample to a point of the grid (SDEdit, Meng et al. 2022); every
             sampler's ``start_step`` then runs only the rest of the grid (image-to-image).
* ``repaint_sample`` / ``inpaint`` RePaint (Lugmayr et al. 2022): a known region is held to the
             forward-noised original at every step, with resampling jumps (training-free inpainting).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch

from unclip.diffusion.gaussian import GaussianDiffusion, ModelFn, Prediction
from unclip.diffusion.guidance import threshold_x0
from unclip.diffusion.registry import SAMPLERS, SamplerSpec, StepCallback, get_sampler, register
from unclip.diffusion.schedule import respaced_betas, sampling_timesteps
from unclip.errors import UnclipError

__all__ = [
    "SAMPLERS",
    "Callback",
    "grid",
    "predict",
    "ddpm_sample",
    "ddim_sample",
    "ddim_invert",
    "dpmpp_2m_sample",
    "ddim_step",
    "sdedit_start",
    "repaint_sample",
    "inpaint",
    "sample",
]

Callback = StepCallback  # the one callback type (unclip.diffusion.registry)


def predict(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    x_t: torch.Tensor,
    t: int | torch.Tensor,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    clip_denoised: bool = False,
    dynamic_threshold: float | None = None,
) -> Prediction:
    """One model call at integer timestep ``t`` (or per-sample timesteps [B]): (x0, eps, variance values).

    When x0 is clipped or thresholded, eps is recomputed from the clipped x0 so
    that DDIM / DPM-Solver steps stay consistent (as improved-diffusion does).
    """
    if isinstance(t, torch.Tensor):                                 # per-sample t [B] (distillation)
        t_batch, alpha_bar = t, diffusion.alpha_bar(t, x_t)           # alpha_bar [B, 1, ...]
    else:
        t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        alpha_bar = torch.tensor(float(diffusion.alphas_cumprod[t]), dtype=x_t.dtype, device=x_t.device)
    output = model_fn(x_t, t_batch, **(model_kwargs or {})).to(x_t.dtype)  # fp32 arithmetic under autocast
    pred = diffusion.predict(output, x_t, alpha_bar)
    if clip_denoised or dynamic_threshold is not None:
        x0 = threshold_x0(pred.x0, clip_denoised=clip_denoised, dynamic_threshold=dynamic_threshold)
        eps = (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
        pred = Prediction(x0=x0, eps=eps, variance_values=pred.variance_values)
    return pred


def _alpha_bars(diffusion: GaussianDiffusion, timesteps: list[int]) -> list[float]:
    """alpha_bar at each timestep plus 1.0 for the clean sample after the last one."""
    acp = diffusion.alphas_cumprod
    return [float(acp[t]) for t in timesteps] + [1.0]


def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def grid(diffusion: GaussianDiffusion, steps: int | None, spacing: str = "trailing", start_step: int = 0) -> list[int]:
    """The descending grid of ``steps`` and ``spacing`` from index ``start_step`` on (SDEdit skips the start)."""
    timesteps = sampling_timesteps(diffusion.num_timesteps, steps, spacing)
    if not 0 <= start_step <= len(timesteps):
        raise UnclipError(f"start_step must be in [0, {len(timesteps)}] (the grid's steps), got {start_step}")
    return timesteps[start_step:]


def _denoise(model_fn: ModelFn, x_T: torch.Tensor, diffusion: GaussianDiffusion, timesteps: list[int],
             update: Callable[[int, torch.Tensor, Prediction, float, float], torch.Tensor], *,
             callback: Callback | None, model_kwargs: Mapping[str, Any] | None, clip_denoised: bool,
             dynamic_threshold: float | None) -> torch.Tensor:
    """The loop DDPM and DDIM share: predict at each timestep, then ``update(i, x, pred, a_t, a_prev)``.

    An empty grid (SDEdit at strength 0) returns ``x_T`` unchanged."""
    alpha_bars = _alpha_bars(diffusion, timesteps)
    x = x_T
    for i, t in enumerate(timesteps):
        pred = predict(model_fn, diffusion, x, t, model_kwargs=model_kwargs,
                       clip_denoised=clip_denoised, dynamic_threshold=dynamic_threshold)
        x = update(i, x, pred, alpha_bars[i], alpha_bars[i + 1])
        if callback is not None:
            callback(i, len(timesteps), x, pred.x0)
    return x


@torch.no_grad()
def ddpm_sample(
    model_fn: ModelFn,
    x_T: torch.Tensor,
    diffusion: GaussianDiffusion,
    *,
    steps: int | None = None,
    spacing: str = "trailing",
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    clip_denoised: bool = False,
    dynamic_threshold: float | None = None,
    start_step: int = 0,
    timesteps: list[int] | None = None,
) -> torch.Tensor:
    """Ancestral sampling (Ho 2020 Alg. 2) on the respaced process.

    x_{i+1} = c0 x0 + c1 x_i + sigma z with respaced beta_i = 1 - a_i / a_{i+1}
    (posterior mean, Ho 2020 eq. 7); sigma^2 = beta~_i, or the learned
    interpolation exp(v log beta_i + (1 - v) log beta~_i) (Nichol & Dhariwal eq. 15).
    No noise is added on the last step. ``start_step`` (every sampler): begin at that index of the
    grid, from an ``x_T`` noised to its timestep (``sdedit_start``).
    """
    timesteps = grid(diffusion, steps, spacing, start_step) if timesteps is None else list(timesteps)
    betas = respaced_betas(diffusion.alphas_cumprod, timesteps).tolist() if timesteps else []

    def update(i: int, x: torch.Tensor, pred: Prediction, a_t: float, a_prev: float) -> torch.Tensor:
        beta = betas[i]
        coef_x0 = math.sqrt(a_prev) * beta / (1 - a_t)
        coef_xt = math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)
        x_next = coef_x0 * pred.x0 + coef_xt * x
        if i == len(timesteps) - 1:
            return x_next
        small = (1 - a_prev) / (1 - a_t) * beta
        if pred.variance_values is not None:
            frac = (pred.variance_values + 1) / 2
            log_var = frac * math.log(beta) + (1 - frac) * math.log(max(small, 1e-20))
            std = torch.exp(0.5 * log_var)
        else:
            std = math.sqrt(small)
        return x_next + std * _randn(x, generator)

    return _denoise(model_fn, x_T, diffusion, timesteps, update, callback=callback, model_kwargs=model_kwargs,
                    clip_denoised=clip_denoised, dynamic_threshold=dynamic_threshold)


def ddim_step(pred: Prediction, a_t: float | torch.Tensor, a_prev: float | torch.Tensor, *, eta: float = 0.0,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """One DDIM update (Song et al. 2021 eq. 12) from alpha_bar ``a_t`` to ``a_prev``:
    x_prev = sqrt(a') x0 + sqrt(1 - a' - s^2) eps + s z, s = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a').
    eta = 1 is DDPM's posterior (fixed small variance), eta = 0 deterministic.

    The one DDIM step of the library: sampling, RePaint, inversion (``a_prev`` > ``a_t``: the ODE run
    forwards, eta = 0) and distillation's teacher (per-sample alpha_bars as tensors [B, 1, ...], eta = 0)."""
    if isinstance(a_prev, torch.Tensor):
        if eta:
            raise ValueError("ddim_step with per-sample alpha_bars is deterministic (eta = 0)")
        return a_prev.sqrt() * pred.x0 + (1 - a_prev).clamp(min=0).sqrt() * pred.eps
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) if eta else 0.0
    x = math.sqrt(a_prev) * pred.x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * pred.eps
    return x + sigma * _randn(x, generator) if sigma > 0 else x


@torch.no_grad()
def ddim_sample(
    model_fn: ModelFn,
    x_T: torch.Tensor,
    diffusion: GaussianDiffusion,
    *,
    steps: int | None = 50,
    spacing: str = "trailing",
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    clip_denoised: bool = False,
    dynamic_threshold: float | None = None,
    start_step: int = 0,
    timesteps: list[int] | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021 eq. 12), one ``ddim_step`` per grid timestep."""
    if eta < 0:
        raise UnclipError(f"eta must be >= 0, got {eta}")
    timesteps = grid(diffusion, steps, spacing, start_step) if timesteps is None else list(timesteps)

    def update(i: int, x: torch.Tensor, pred: Prediction, a_t: float, a_prev: float) -> torch.Tensor:
        return ddim_step(pred, a_t, a_prev, eta=eta, generator=generator)

    return _denoise(model_fn, x_T, diffusion, timesteps, update, callback=callback, model_kwargs=model_kwargs,
                    clip_denoised=clip_denoised, dynamic_threshold=dynamic_threshold)


@torch.no_grad()
def ddim_invert(
    model_fn: ModelFn,
    x_0: torch.Tensor,
    diffusion: GaussianDiffusion,
    *,
    steps: int | None = 50,
    spacing: str = "trailing",
    callback: Callback | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Deterministic DDIM inversion x_0 -> x_T (Song et al. 2021 §4.3, the ODE run forwards).

    Visits the same timesteps as ``ddim_sample(steps, spacing)`` in reverse, so
    ``ddim_sample(eta=0)`` of the result reconstructs x_0 (up to discretisation
    error). eps is predicted at the current sample with the next timestep.
    """
    timesteps = sampling_timesteps(diffusion.num_timesteps, steps, spacing)[::-1]   # ascending
    total = len(timesteps)
    x = x_0
    a_cur = 1.0
    for i, t in enumerate(timesteps):
        eps = predict(model_fn, diffusion, x, t, model_kwargs=model_kwargs).eps
        x0 = (x - math.sqrt(1 - a_cur) * eps) / math.sqrt(a_cur)          # x0 of the current sample
        a_t = float(diffusion.alphas_cumprod[t])
        x = ddim_step(Prediction(x0=x0, eps=eps, variance_values=None), a_cur, a_t)
        a_cur = a_t
        if callback is not None:
            callback(i, total, x, x0)
    return x


@torch.no_grad()
def dpmpp_2m_sample(
    model_fn: ModelFn,
    x_T: torch.Tensor,
    diffusion: GaussianDiffusion,
    *,
    steps: int | None = 20,
    spacing: str = "trailing",
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    clip_denoised: bool = False,
    dynamic_threshold: float | None = None,
    start_step: int = 0,
    timesteps: list[int] | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2), in VP form.

    With alpha = sqrt(a), sigma = sqrt(1 - a), lambda = log(alpha / sigma) and
    h = lambda_next - lambda_cur:
    x_next = (sigma_next / sigma_cur) x - alpha_next (e^{-h} - 1) D, where
    D = x0 (first order: first step and the last step onto the clean sample) or
    D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev, r = h_prev / h (second order).
    ``generator`` is unused (the solver is deterministic) and kept for a uniform signature.
    """
    del generator
    timesteps = grid(diffusion, steps, spacing, start_step) if timesteps is None else list(timesteps)
    alpha_bars = _alpha_bars(diffusion, timesteps)
    total = len(timesteps)
    x = x_T
    x0_prev, h_prev = None, None
    for i, t in enumerate(timesteps):
        pred = predict(model_fn, diffusion, x, t, model_kwargs=model_kwargs,
                       clip_denoised=clip_denoised, dynamic_threshold=dynamic_threshold)
        a_cur, a_next = alpha_bars[i], alpha_bars[i + 1]
        if i == total - 1:
            x = pred.x0                                   # sigma_next = 0: lambda = inf
        else:
            lam_cur = 0.5 * math.log(a_cur / (1 - a_cur))
            lam_next = 0.5 * math.log(a_next / (1 - a_next))
            h = lam_next - lam_cur
            if x0_prev is None:
                d = pred.x0
            else:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * pred.x0 - (1 / (2 * r)) * x0_prev
            ratio = math.sqrt((1 - a_next) / (1 - a_cur))
            x = ratio * x - math.sqrt(a_next) * math.expm1(-h) * d
            h_prev = h
        x0_prev = pred.x0
        if callback is not None:
            callback(i, total, x, pred.x0)
    return x


def sdedit_start(x_0: torch.Tensor, noise: torch.Tensor, diffusion: GaussianDiffusion, *, steps: int | None,
                 spacing: str = "trailing", strength: float) -> tuple[torch.Tensor, int]:
    """SDEdit (Meng et al. 2022, §3): perturb a clean sample to ``strength`` of the way along the grid.

    The last round(strength · N) of the N grid steps are run, from ``start_step`` = N - round(strength · N):
    x = sqrt(a) x_0 + sqrt(1 - a) noise at a = alpha_bar[timesteps[start_step]]. ``strength`` = 0 runs no
    step and returns x_0 itself; 1 starts from ``noise`` alone, exactly as plain sampling does (the first
    grid timestep's alpha_bar is ~0 anyway). Returns (x, start_step) for any sampler's ``start_step``.
    """
    if not 0.0 <= strength <= 1.0:
        raise UnclipError(f"strength must be in [0, 1], got {strength}")
    timesteps = sampling_timesteps(diffusion.num_timesteps, steps, spacing)
    start_step = len(timesteps) - round(strength * len(timesteps))
    if start_step == len(timesteps):
        return x_0, start_step
    if start_step == 0:
        return noise, start_step
    a = float(diffusion.alphas_cumprod[timesteps[start_step]])
    return math.sqrt(a) * x_0 + math.sqrt(1 - a) * noise, start_step


@torch.no_grad()
def repaint_sample(
    model_fn: ModelFn,
    x_T: torch.Tensor,
    diffusion: GaussianDiffusion,
    *,
    known: torch.Tensor,
    mask: torch.Tensor,
    resample: int = 3,
    steps: int | None = 50,
    spacing: str = "trailing",
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    clip_denoised: bool = False,
    dynamic_threshold: float | None = None,
) -> torch.Tensor:
    """RePaint (Lugmayr et al. 2022, Alg. 1) on the respaced grid, with ``ddim_step`` as the reverse step.

    ``known`` [B, C, H, W] is the clean sample to keep and ``mask`` [B or 1, 1, H, W] is 1 where to
    regenerate, 0 where to keep. Each step t -> t' merges the two halves (eq. 8):
    x_t' = m · ddim_step(x_t) + (1 - m) · (sqrt(a') known + sqrt(1 - a') z). ``resample`` = U: all but the
    last of U passes push the merged x_t' back to t with the forward process (eq. 9, jump length 1),
    x_t = sqrt(a / a') x_t' + sqrt(1 - a / a') z, and denoise it again, so the new region agrees with the
    kept one. The last step lands on a' = 1, where the kept region is ``known`` exactly (and is not
    resampled). ``eta`` = 1 is the paper's DDPM step (fixed small variance); lower values are DDIM's.
    Costs U model calls per step but the last.
    """
    if resample < 1:
        raise UnclipError(f"resample must be >= 1, got {resample}")
    if eta < 0:
        raise UnclipError(f"eta must be >= 0, got {eta}")
    timesteps = sampling_timesteps(diffusion.num_timesteps, steps, spacing)
    alpha_bars = _alpha_bars(diffusion, timesteps)
    mask = mask.to(x_T.dtype)
    keep = 1 - mask  # the merge m·x + (1 - m)·known is exact for a {0, 1} mask

    def noised_known(a: float) -> torch.Tensor:
        return known if a >= 1.0 else math.sqrt(a) * known + math.sqrt(1 - a) * _randn(known, generator)

    x = mask * x_T + keep * noised_known(alpha_bars[0])
    for i, t in enumerate(timesteps):
        a_t, a_prev = alpha_bars[i], alpha_bars[i + 1]
        passes = resample if i < len(timesteps) - 1 else 1  # no jump back from the clean sample
        for jump in range(passes):
            pred = predict(model_fn, diffusion, x, t, model_kwargs=model_kwargs,
                           clip_denoised=clip_denoised, dynamic_threshold=dynamic_threshold)
            x_prev = ddim_step(pred, a_t, a_prev, eta=eta, generator=generator)
            x_prev = mask * x_prev + keep * noised_known(a_prev)
            if jump < passes - 1:
                x = math.sqrt(a_t / a_prev) * x_prev + math.sqrt(1 - a_t / a_prev) * _randn(x_prev, generator)
        x = x_prev
        if callback is not None:
            callback(i, len(timesteps), x, pred.x0)
    return x


def sample(name: str, model_fn: ModelFn, x_T: torch.Tensor, diffusion: GaussianDiffusion, *,
           steps: int | None = None, spacing: str = "trailing", start_step: int = 0, eta: float = 0.0,
           **kwargs: Any) -> torch.Tensor:
    """Run the registered Gaussian sampler ``name`` on the grid of ``steps`` and ``spacing`` (from
    ``start_step`` on); other keyword arguments as the sampler's. ``eta`` only for samplers that take it."""
    spec = get_sampler(name, "gaussian", eta=eta)
    if spec.takes_eta:
        kwargs["eta"] = eta
    timesteps = grid(diffusion, steps, spacing, start_step)
    return spec.fn(model_fn, x_T, diffusion, timesteps=timesteps, **kwargs)


def inpaint(name: str, model_fn: ModelFn, x_T: torch.Tensor, diffusion: GaussianDiffusion, *, eta: float = 0.0,
            **kwargs: Any) -> torch.Tensor:
    """``repaint_sample`` with the one step of sampler ``name``: a DDIM step at the caller's ``eta``
    (samplers that take eta) or at the sampler's ``repaint_eta`` ("ddpm": 1, the same posterior). A
    multistep solver (dpm++2m) has no such step, so it is refused."""
    spec = get_sampler(name, "gaussian")
    if not spec.can_repaint:
        able = [n for n, s in SAMPLERS.items() if s.kind == "gaussian" and s.can_repaint]
        raise UnclipError(f"inpainting (RePaint) steps one timestep at a time, which the multistep {name} cannot; "
                          f"use sampler {' or '.join(able)}")
    return repaint_sample(model_fn, x_T, diffusion, eta=eta if spec.takes_eta else spec.repaint_eta, **kwargs)


register(SamplerSpec("ddpm", ddpm_sample, stochastic=True, repaint_eta=1.0,
                     help="ancestral sampling (Ho et al. 2020), stochastic"))
register(SamplerSpec("ddim", ddim_sample, takes_eta=True, supports_inversion=True,
                     help="DDIM (Song et al. 2021); deterministic at eta 0"))
register(SamplerSpec("dpm++2m", dpmpp_2m_sample, help="DPM-Solver++(2M) (Lu et al. 2022), deterministic, few steps"))
