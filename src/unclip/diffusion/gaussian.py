"""Gaussian diffusion: forward process, parameterisations and training losses.

Ho et al. 2020 (DDPM): q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I) with
a_t = alpha_bar_t (eq. 4); L_simple = E ||eps - eps_theta(x_t, t)||^2 (eq. 14).
Nichol & Dhariwal 2021 (Improved DDPM): learned variance
Sigma = exp(v log beta_t + (1 - v) log beta~_t) (eq. 15) and
L_hybrid = L_simple + lambda L_vlb (eq. 16) with a stop-gradient on the mean.

Networks know nothing about noise (house rule 2): ``model_fn(x_t, t, **kwargs)``
gets integer training timesteps t [B] and returns a tensor shaped like x_t
(twice the channels along dim 1 when the variance is learned). The
parameterisations below are thin wrappers turning that raw output into
(x0, eps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from unclip.diffusion.schedule import DiffusionConfig, make_betas

__all__ = [
    "GaussianDiffusion",
    "Prediction",
    "ModelFn",
    "expand",
    "output_to_x0_eps",
    "prediction_target",
    "min_snr_weight",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
]

ModelFn = Callable[..., torch.Tensor]


def expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample values [B] -> [B, 1, ..., 1] on ``like``'s device and dtype, for broadcasting."""
    values = values.to(device=like.device, dtype=like.dtype)
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


def output_to_x0_eps(prediction: str, output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor):
    """Turn a network output into (x0, eps) given x_t and alpha_bar (broadcastable to x_t).

    eps: x0 = (x_t - sqrt(1-a) eps) / sqrt(a)            (Ho 2020 eq. 15)
    x0 : eps = (x_t - sqrt(a) x0) / sqrt(1-a)
    v  : x0 = sqrt(a) x_t - sqrt(1-a) v, eps = sqrt(1-a) x_t + sqrt(a) v   (Salimans & Ho 2022 §4)
    """
    sqrt_a, sqrt_1ma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction == "eps":
        return (x_t - sqrt_1ma * output) / sqrt_a, output
    if prediction == "x0":
        return output, (x_t - sqrt_a * output) / sqrt_1ma
    if prediction == "v":
        return sqrt_a * x_t - sqrt_1ma * output, sqrt_1ma * x_t + sqrt_a * output
    raise ValueError(f"unknown prediction type {prediction!r}")


def prediction_target(prediction: str, x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The regression target of L_simple for each parameterisation."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
    raise ValueError(f"unknown prediction type {prediction!r}")


def min_snr_weight(prediction: str, alpha_bar: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weight (Hang et al. 2023, §3.4) for an MSE on ``prediction``'s target.

    With SNR = a / (1 - a), the weight on the x0 error is min(SNR, γ); an eps error is SNR times an x0
    error and a v error (SNR + 1) times, so their weights divide by those factors.
    """
    snr = alpha_bar / (1 - alpha_bar)
    clipped = snr.clamp(max=gamma)
    if prediction == "x0":
        return clipped
    if prediction == "eps":
        return clipped / snr
    if prediction == "v":
        return clipped / (snr + 1)
    raise ValueError(f"unknown prediction type {prediction!r}")


@dataclass
class Prediction:
    """What a sampler needs from one model call at (x_t, t)."""

    x0: torch.Tensor                       # same shape as x_t
    eps: torch.Tensor                      # same shape as x_t
    variance_values: torch.Tensor | None   # raw learned-variance output in [-1, 1] (or None)


class GaussianDiffusion:
    """The forward process and losses for one ``DiffusionConfig`` (no network inside).

    Attributes are float64 CPU tensors of length T: ``betas``, ``alphas_cumprod``.
    """

    def __init__(self, config: DiffusionConfig | None = None):
        self.config = config or DiffusionConfig()
        self.betas = make_betas(self.config)                       # [T]
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)     # [T]
        self.num_timesteps = self.config.timesteps

    # --- forward process ---------------------------------------------------
    def alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer timesteps t [B], shaped [B, 1, ...] like ``like``."""
        return expand(self.alphas_cumprod[t.detach().cpu().long()], like)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps (Ho 2020 eq. 4)."""
        a = self.alpha_bar(t, x_start)
        return a.sqrt() * x_start + (1 - a).sqrt() * noise

    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Uniform training timesteps [batch] in [0, T)."""
        if device is None:
            device = generator.device if generator is not None else "cpu"
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=device)

    # --- parameterisation ---------------------------------------------------
    def split_output(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean output, variance values or None): learned variance doubles dim 1."""
        if not self.config.learn_variance:
            return output, None
        mean_out, var_out = output.chunk(2, dim=1)
        return mean_out, var_out

    def predict(self, output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> Prediction:
        """Raw network output -> Prediction(x0, eps, variance values)."""
        mean_out, var_out = self.split_output(output)
        x0, eps = output_to_x0_eps(self.config.prediction, mean_out, x_t, alpha_bar)
        return Prediction(x0=x0, eps=eps, variance_values=var_out)

    # --- posterior and losses ----------------------------------------------------
    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean and log variance (clipped at t=0) of q(x_{t-1} | x_t, x_0), Ho 2020 eqs. 6-7."""
        acp = self.alphas_cumprod
        acp_prev = torch.cat([torch.ones(1, dtype=acp.dtype), acp[:-1]])
        var = self.betas * (1 - acp_prev) / (1 - acp)
        log_var = torch.log(torch.cat([var[1:2], var[1:]]))    # beta~_0 = 0: clip to beta~_1
        coef_x0 = self.betas * acp_prev.sqrt() / (1 - acp)
        coef_xt = (1 - acp_prev) * (1 - self.betas).sqrt() / (1 - acp)
        idx = t.detach().cpu().long()
        mean = expand(coef_x0[idx], x_t) * x_start + expand(coef_xt[idx], x_t) * x_t
        return mean, expand(log_var[idx], x_t)

    def p_log_variance(self, variance_values: torch.Tensor, t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """Learned log variance: v log beta_t + (1 - v) log beta~_t, v = (out + 1) / 2 (eq. 15)."""
        _, min_log = self.q_posterior(x_t, x_t, t)
        max_log = expand(torch.log(self.betas)[t.detach().cpu().long()], x_t)
        frac = (variance_values + 1) / 2
        return frac * max_log + (1 - frac) * min_log

    def training_losses(
        self,
        model_fn: ModelFn,
        x_start: torch.Tensor,
        t: torch.Tensor,
        *,
        model_kwargs: Mapping[str, Any] | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample losses [B]: ``loss`` plus ``mse`` (and ``vb`` for the hybrid loss).

        L_simple is the mean squared error on the prediction target; the hybrid
        loss adds lambda * T * L_t (improved-diffusion's rescaled VLB term) where
        L_t uses the learned variance with the mean's gradient stopped.
        """
        if noise is None:
            noise = torch.randn(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
        x_t = self.q_sample(x_start, t, noise)
        output = model_fn(x_t, t, **(model_kwargs or {}))
        mean_out, var_out = self.split_output(output)
        if mean_out.shape != x_start.shape:
            raise ValueError(f"model output {tuple(output.shape)} does not fit samples {tuple(x_start.shape)}")
        a = self.alpha_bar(t, x_start)
        target = prediction_target(self.config.prediction, x_start, noise, a)
        dims = list(range(1, x_start.ndim))
        terms = {"mse": ((mean_out - target) ** 2).mean(dim=dims)}
        simple = terms["mse"]
        if self.config.min_snr_gamma:
            simple = simple * min_snr_weight(self.config.prediction, a.reshape(-1), self.config.min_snr_gamma)
        if self.config.loss == "hybrid":
            frozen = torch.cat([mean_out.detach(), var_out], dim=1)
            terms["vb"] = self._vb_term(frozen, x_start, x_t, t) * self.num_timesteps * self.config.vlb_weight
            terms["loss"] = simple + terms["vb"]
        else:
            terms["loss"] = simple
        return terms

    def _vb_term(self, output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """L_t in bits per dimension [B]: KL(q || p) for t > 0, decoder NLL at t = 0 (Ho 2020 eq. 5)."""
        pred = self.predict(output, x_t, self.alpha_bar(t, x_t))
        true_mean, true_log_var = self.q_posterior(x_start, x_t, t)
        model_mean, _ = self.q_posterior(pred.x0, x_t, t)
        model_log_var = self.p_log_variance(pred.variance_values, t, x_t)
        dims = list(range(1, x_start.ndim))
        kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var).mean(dim=dims) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, model_mean, 0.5 * model_log_var)
        nll = nll.mean(dim=dims) / math.log(2.0)
        return torch.where(t.to(kl.device) == 0, nll, kl)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log p(x) of 8-bit data in [-1, 1] under a Gaussian discretised into 256 bins (Ho 2020 eq. 13)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
    return log_probs
