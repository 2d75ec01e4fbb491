"""Noise schedules, the diffusion config and timestep respacing.

* Linear betas: Ho et al. 2020, "Denoising Diffusion Probabilistic Models" §4
  (beta_1 = 1e-4 ... beta_T = 0.02 for T = 1000; scaled by 1000/T as in
  improved-diffusion so other T keep the same endpoints of alpha_bar).
* Cosine betas: Nichol & Dhariwal 2021, "Improved DDPM", eq. 17
  (alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) * pi/2), betas clipped at 0.999).
* Respacing (Nichol & Dhariwal 2021 §4): sampling on a subset S of the
  training timesteps uses betas recomputed from alpha_bar,
  beta_i = 1 - alpha_bar[S_i] / alpha_bar[S_{i-1}].

All schedule arrays are float64 on CPU; samplers cast the few numbers they
need to the sample's dtype and device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

__all__ = [
    "DiffusionConfig",
    "make_betas",
    "sampling_timesteps",
    "respaced_betas",
    "SPACINGS",
]

SPACINGS = ("trailing", "linspace", "leading", "quadratic", "leading_offset")


@dataclass(frozen=True)
class DiffusionConfig:
    """Settings of a Gaussian diffusion process (shared by prior, decoder, upsamplers).

    prediction: what the network outputs — ``eps`` (noise, Ho 2020 eq. 11), ``x0``
    (the clean sample; the unCLIP prior) or ``v`` (Salimans & Ho 2022,
    v = sqrt(a) eps - sqrt(1-a) x0).
    learn_variance: the network outputs twice the channels (dim 1); the second
    half interpolates log-variance between beta~ and beta (Nichol & Dhariwal eq. 15).
    loss: ``simple`` = MSE on the prediction target; ``hybrid`` = simple +
    vlb_weight * L_vlb (eq. 16, needs learn_variance).
    min_snr_gamma: > 0 weights each sample's L_simple by min-SNR-γ (Hang et al. 2023, eq. 9-10:
    min(SNR_t, γ) relative to the x0 loss, so the high-SNR steps stop dominating); 0 = unweighted.
    """

    schedule: Literal["linear", "cosine"] = "cosine"
    timesteps: int = 1000
    prediction: Literal["eps", "x0", "v"] = "eps"
    learn_variance: bool = False
    loss: Literal["simple", "hybrid"] = "simple"
    vlb_weight: float = 0.001             # lambda in L_hybrid = L_simple + lambda * L_vlb
    linear_beta_start: float = 1e-4       # at T = 1000
    linear_beta_end: float = 0.02         # at T = 1000
    cosine_offset: float = 0.008          # s in eq. 17
    max_beta: float = 0.999
    min_snr_gamma: float = 0.0            # Hang et al. 2023 (γ = 5 in the paper); 0 disables

    def __post_init__(self):
        if self.timesteps < 2:
            raise ValueError("timesteps must be >= 2")
        if self.loss == "hybrid" and not self.learn_variance:
            raise ValueError("loss 'hybrid' needs learn_variance: true (the VLB term trains the variance)")
        if not 0 < self.max_beta < 1:
            raise ValueError("max_beta must be in (0, 1)")
        if self.vlb_weight < 0:
            raise ValueError("vlb_weight must be >= 0")
        if self.min_snr_gamma < 0:
            raise ValueError("min_snr_gamma must be >= 0 (0 disables the weighting)")


def make_betas(config: DiffusionConfig) -> torch.Tensor:
    """Betas [T] (float64) for the configured schedule."""
    steps = config.timesteps
    if config.schedule == "linear":
        scale = 1000.0 / steps
        betas = np.linspace(scale * config.linear_beta_start, scale * config.linear_beta_end, steps, dtype=np.float64)
        return torch.from_numpy(np.clip(betas, 0.0, config.max_beta))

    def alpha_bar(u: float) -> float:  # eq. 17, u = t / T in [0, 1]
        return math.cos((u + config.cosine_offset) / (1 + config.cosine_offset) * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), config.max_beta) for i in range(steps)]
    return torch.tensor(betas, dtype=torch.float64)


def sampling_timesteps(num_train_timesteps: int, steps: int | None, spacing: str = "trailing") -> list[int]:
    """Descending training timesteps used by a sampler with ``steps`` model calls.

    ``trailing`` (default; Lin et al. 2023, "Common diffusion noise schedules and
    sample steps are flawed", Table 2) starts at T-1: round(arange(T, 0, -T/steps)) - 1.
    ``linspace`` is improved-diffusion's ``space_timesteps`` with one section:
    round(linspace(0, T-1, steps)). ``leading`` is arange(steps) * (T // steps).
    ``leading_offset`` is ``leading`` + 1, diffusers' ``timestep_spacing="leading"`` with ``steps_offset=1``
    (``DDPMScheduler.set_timesteps``, as Stable Diffusion and Kandinsky 2.2 ship it): it starts at
    (steps-1)·(T // steps) + 1 and ends at t = 1, so it needs steps < T.
    ``quadratic`` is DDIM's quadratic selection (Song et al. 2021, Appendix D.2: tau_i ∝ i²),
    here counted from the end so it starts at T-1 like ``trailing``: round((T-1) (1 - i/steps)²)
    for i < steps. It spends more steps at low noise and ends near t = 0 (8 steps: 999, 765, ...,
    62, 16) instead of jumping to the clean image from T/steps (trailing: 124). Like trailing, the
    grid for 2N steps holds the N grid at its even positions (the same reals, rounded alike), so it
    suits progressive distillation. Where rounding would repeat a timestep (N > ~60 on T = 1000)
    the tail is pushed up to keep the grid strictly descending.
    ``steps=None`` means every training timestep.
    """
    total = num_train_timesteps
    steps = total if steps is None else int(steps)
    if not 1 <= steps <= total:
        from unclip.errors import UnclipError

        raise UnclipError(f"sampling steps must be between 1 and {total} (the training timesteps), got {steps}")
    if spacing == "trailing":
        ts = np.round(np.arange(total, 0, -total / steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, total - 1, steps).round()[::-1].astype(np.int64)
    elif spacing == "leading":
        ts = (np.arange(steps) * (total // steps))[::-1].astype(np.int64)
    elif spacing == "leading_offset":
        if steps == total:
            from unclip.errors import UnclipError

            raise UnclipError(f"spacing 'leading_offset' needs fewer sampling steps than the {total} training "
                              "timesteps (its first would be T)")
        ts = (np.arange(steps) * (total // steps))[::-1].astype(np.int64) + 1
    elif spacing == "quadratic":
        ts = np.round((total - 1) * (1 - np.arange(steps) / steps) ** 2).astype(np.int64)
        for i in range(steps - 2, -1, -1):  # keep strictly descending where rounding collides
            ts[i] = max(ts[i], ts[i + 1] + 1)
    else:
        from unclip.errors import UnclipError

        raise UnclipError(f"unknown timestep spacing {spacing!r} (choose from: {', '.join(SPACINGS)})")
    return [int(t) for t in ts]


def respaced_betas(alphas_cumprod: torch.Tensor, timesteps: list[int]) -> torch.Tensor:
    """Betas of the respaced process on descending ``timesteps`` (improved-diffusion ``space_timesteps``).

    Returns [len(timesteps)] aligned with ``timesteps``: entry i is
    1 - alpha_bar[t_i] / alpha_bar[t_{i+1}], with alpha_bar = 1 after the last one.
    """
    acp = alphas_cumprod.to(torch.float64)
    current = acp[torch.tensor(timesteps)]
    previous = torch.cat([current[1:], torch.ones(1, dtype=torch.float64)])
    return 1 - current / previous
