"""diffusers scheduler configs → unclip's ``DiffusionConfig`` + the sampling grid that reproduces them.

``diffusion_from_scheduler(config, where)`` → ``SchedulerMapping(diffusion, clip_range, spacing)``; the
sampler is always unclip's ``ddpm`` (ancestral steps on the respaced betas, Nichol & Dhariwal 2021 §4),
which is what both schedulers below compute at their grid points.

* ``UnCLIPScheduler`` (Karlo, Kandinsky 2.2's prior): ``squaredcos_cap_v2`` betas are unclip's cosine
  schedule (Nichol & Dhariwal eq. 17, s = 0.008, β ≤ 0.999); its grid round((T-1)/(n-1)·i) is the
  ``"linspace"`` spacing; variance ``learned_range`` is eq. 15, ``fixed_small_log`` DDPM's β̃.
* ``DDPMScheduler`` (Kandinsky 2.2's decoder): ``linear`` betas = linspace(beta_start, beta_end, T) (Ho et al.
  2020 §4; unclip's linear endpoints are given at T = 1000, so they are rescaled by T/1000), or
  ``squaredcos_cap_v2``; ``timestep_spacing`` linspace / trailing / leading are unclip's spacings of those
  names, ``leading`` with ``steps_offset=1`` is ``"leading_offset"`` (``unclip.diffusion.schedule``);
  ``fixed_small`` (= ``fixed_small_log``) is β̃, ``learned_range`` eq. 15 with β̃ clamped at 1e-20.
  diffusers' step at t = 1 (the last of ``leading_offset``) adds noise of variance max(β̃, 1e-20) = 1e-20 that
  unclip omits: 1e-10 · z for fixed variances; for learned_range exp(½(v log β + (1-v) log 1e-20)), which is
  as small unless the network's v is near 1 there.

``prediction_type`` epsilon / sample / v_prediction → ``eps`` / ``x0`` / ``v``. ``clip_sample`` is the x0 clip
range (None: no clipping). Anything else (other schedulers, beta schedules, variances, thresholding,
trained betas, zero-SNR rescaling) is a one-line ``UnclipError`` naming the setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unclip.diffusion.schedule import DiffusionConfig
from unclip.errors import UnclipError

__all__ = ["SchedulerMapping", "diffusion_from_scheduler"]

_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_UNCLIP_VARIANCES = {"learned_range": True, "fixed_small_log": False}
_DDPM_VARIANCES = {"learned_range": True, "fixed_small": False, "fixed_small_log": False}
_BETAS = {"squaredcos_cap_v2": "cosine", "linear": "linear"}


@dataclass(frozen=True)
class SchedulerMapping:
    diffusion: DiffusionConfig
    clip_range: float | None    # the x0 clip range (None: x0 is not clipped)
    spacing: str                # unclip's timestep spacing equal to the scheduler's grid

    def astuple(self) -> tuple[DiffusionConfig, float | None]:
        """(diffusion, clip_range): what a stage sampled on the ``"linspace"`` grid needs."""
        return self.diffusion, self.clip_range


def _check(where: str, key: str, value, known) -> None:
    if value not in known:
        raise UnclipError(f"{where}: {key} {value!r} is not supported (known: {', '.join(map(str, known))})")


def diffusion_from_scheduler(config: dict[str, Any], where: str,
                             schedulers: tuple[str, ...] = ("UnCLIPScheduler", "DDPMScheduler")) -> SchedulerMapping:
    """An ``UnCLIPScheduler`` or ``DDPMScheduler`` config → ``SchedulerMapping`` (see the module docstring);
    ``schedulers``: the classes this stage may have (Karlo's stages ship only ``UnCLIPScheduler``)."""
    name = config.get("_class_name", "UnCLIPScheduler")
    _check(where, "scheduler", name, schedulers)
    ddpm = name == "DDPMScheduler"
    prediction = config.get("prediction_type", "epsilon")
    variance = config.get("variance_type", "fixed_small" if ddpm else "fixed_small_log")
    betas = config.get("beta_schedule", "linear" if ddpm else "squaredcos_cap_v2")
    _check(where, "prediction_type", prediction, tuple(_PREDICTIONS) if ddpm else ("epsilon", "sample"))
    _check(where, "variance_type", variance, tuple(_DDPM_VARIANCES if ddpm else _UNCLIP_VARIANCES))
    _check(where, "beta_schedule", betas, tuple(_BETAS) if ddpm else ("squaredcos_cap_v2",))
    timesteps = int(config.get("num_train_timesteps", 1000))
    fields: dict[str, Any] = {"schedule": _BETAS[betas], "timesteps": timesteps,
                              "prediction": _PREDICTIONS[prediction],
                              "learn_variance": (_DDPM_VARIANCES if ddpm else _UNCLIP_VARIANCES)[variance]}
    spacing = "linspace"
    if ddpm:
        for key in ("thresholding", "rescale_betas_zero_snr"):
            if config.get(key):
                raise UnclipError(f"{where}: {key}=true is not supported")
        if config.get("trained_betas") is not None:
            raise UnclipError(f"{where}: trained_betas are not supported (only beta_schedule linear or "
                              "squaredcos_cap_v2)")
        if betas == "linear":  # unclip's linear endpoints are at T = 1000 (scaled by 1000 / T)
            fields.update(linear_beta_start=float(config.get("beta_start", 1e-4)) * timesteps / 1000,
                          linear_beta_end=float(config.get("beta_end", 0.02)) * timesteps / 1000)
        spacing = _ddpm_spacing(config, where)
    clip = float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample", True) else None
    return SchedulerMapping(DiffusionConfig(**fields), clip, spacing)


def _ddpm_spacing(config: dict[str, Any], where: str) -> str:
    """``DDPMScheduler.set_timesteps``' grid as an unclip spacing (steps_offset applies to "leading" only)."""
    spacing = config.get("timestep_spacing", "leading")
    _check(where, "timestep_spacing", spacing, ("leading", "linspace", "trailing"))
    if spacing != "leading":
        return spacing
    offset = int(config.get("steps_offset", 0))
    _check(where, "steps_offset (with timestep_spacing 'leading')", offset, (0, 1))
    return "leading_offset" if offset else "leading"
