"""Classifier-free guidance and predicted-x0 clipping / dynamic thresholding.

* Classifier-free guidance (Ho & Salimans 2022, eq. 6):
  out = out_uncond + s * (out_cond - out_uncond), computed with ONE batched
  forward pass over [cond; uncond]. With learned variance (GLIDE, Nichol et
  al. 2022) only the mean half of dim 1 is guided; the variance comes from the
  conditional half.
* Dynamic thresholding (Saharia et al. 2022, "Imagen" §2.3): s = the
  ``percentile`` quantile of |x0| per sample, s = max(s, 1), x0 = clamp(x0, -s, s) / s.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from unclip.diffusion.gaussian import ModelFn

__all__ = ["classifier_free_guidance", "guide", "threshold_x0"]


def guide(out_cond: torch.Tensor, out_uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance, Ho & Salimans 2022 eq. 6: out_uncond + s (out_cond - out_uncond).

    The one guidance formula: the Gaussian wrapper below applies it to network outputs (eps, x0 or v),
    the discrete sampler to log p(x_0) (``unclip.diffusion.discrete.guided_log_probs``)."""
    return out_uncond + guidance_scale * (out_cond - out_uncond)


def classifier_free_guidance(
    model_fn: ModelFn,
    guidance_scale: float,
    uncond_kwargs: Mapping[str, Any],
    *,
    learn_variance: bool = False,
) -> ModelFn:
    """Wrap ``model_fn`` so each call returns the guided output.

    The returned function is called like the original, ``guided(x_t, t, **cond_kwargs)``.
    ``uncond_kwargs`` replaces some of the conditioning keyword arguments for the
    unconditional half (e.g. ``{"drop_text": torch.ones(B, dtype=bool)}``); tensors
    in it have the same batch size as x_t. Keyword arguments absent from
    ``uncond_kwargs`` are shared: tensors are repeated, other values passed as-is.
    ``guidance_scale == 1`` is the plain conditional model (one forward, no doubling).
    """

    if guidance_scale == 1.0:
        return model_fn

    def guided(x_t: torch.Tensor, t: torch.Tensor, **cond_kwargs: Any) -> torch.Tensor:
        batch = x_t.shape[0]
        kwargs = {}
        for key in set(cond_kwargs) | set(uncond_kwargs):
            cond = cond_kwargs.get(key, uncond_kwargs.get(key))
            uncond = uncond_kwargs.get(key, cond)
            if isinstance(cond, torch.Tensor) and cond.ndim > 0 and cond.shape[0] == batch:
                kwargs[key] = torch.cat([cond, uncond.to(cond.device)], dim=0)
            else:
                kwargs[key] = cond
        out = model_fn(torch.cat([x_t, x_t]), torch.cat([t, t]), **kwargs).to(x_t.dtype)  # [2B, ...]: fp32 under autocast
        out_cond, out_uncond = out[:batch], out[batch:]
        if learn_variance:
            mean_c, var_c = out_cond.chunk(2, dim=1)
            mean_u, _ = out_uncond.chunk(2, dim=1)
            return torch.cat([guide(mean_c, mean_u, guidance_scale), var_c], dim=1)
        return guide(out_cond, out_uncond, guidance_scale)

    return guided


def threshold_x0(
    x0: torch.Tensor,
    *,
    clip_denoised: bool = False,
    dynamic_threshold: float | None = None,
    clip_value: float = 1.0,
) -> torch.Tensor:
    """Clip the predicted x0 to [-clip_value, clip_value], or dynamically threshold it.

    ``dynamic_threshold`` is the percentile p in (0, 1] of Imagen §2.3 (e.g. 0.995);
    it takes precedence over ``clip_denoised``.
    """
    if dynamic_threshold is not None:
        if not 0 < dynamic_threshold <= 1:
            from unclip.errors import UnclipError

            raise UnclipError(f"dynamic_threshold is a percentile in (0, 1], got {dynamic_threshold}")
        flat = x0.reshape(x0.shape[0], -1).abs().float()               # [B, N]
        s = torch.quantile(flat, dynamic_threshold, dim=1).clamp(min=clip_value).to(x0.dtype)  # [B]
        s = s.reshape(-1, *([1] * (x0.ndim - 1)))
        return x0.clamp(-s, s) / s * clip_value
    if clip_denoised:
        return x0.clamp(-clip_value, clip_value)
    return x0
