"""diffusers-style call arguments, accepted as aliases of unclip's own (issue 20).

Code written against diffusers (``UnCLIPPipeline``, ``UnCLIPImageVariationPipeline``,
``KandinskyV22CombinedPipeline``) calls pipelines with ``generator=``, ``num_inference_steps``,
``guidance_scale``, per-stage names, ``callback_on_step_end``, ``return_dict`` and
``output_type="latent"``. ``ALIASES`` is the one table from those names to unclip's;
``diffusers_call`` wraps a pipeline method so that it accepts both spellings:

* a diffusers name is renamed to the unclip name it stands for; giving two names of one setting
  (``decoder_steps`` and ``decoder_num_inference_steps``) is a one-line error;
* ``num_inference_steps`` / ``guidance_scale`` are the **decoder's**, as in diffusers' combined
  Kandinsky 2.2 pipeline, where the prior has its own ``prior_*`` names (the upsampler keeps its
  trained default unless ``super_res_num_inference_steps`` is given);
* ``generator=g`` is ``seed=g`` (per-image seeds are drawn from it); a list of generators gives
  image i the seed drawn from generator i, so image i depends on its own generator alone;
* ``callback_on_step_end(pipe, step, timestep, callback_kwargs)`` runs after every step of every
  stage with ``callback_kwargs = {"latents": x_t, "stage": name}``; the dict it returns may replace
  ``"latents"`` (same shape), which the sampler continues from;
* ``return_dict=False`` returns the tuple ``(images,)``;
* ``output_type="latent"`` returns the decoder's samples as a tensor, before the upsampler and (for
  a latent decoder) before the autoencoder; for CLIP-VQDiffusion, the token codes before the VQ decoder.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

from unclip.errors import UnclipError
from unclip.pipelines.seeds import SEED_MAX

__all__ = ["ALIASES", "TENSOR_INPUTS", "diffusers_call", "translate", "StepEndCallback"]

_SEED = {"seed": ("generator",)}
_UNCLIP_STAGES = {
    "prior_steps": ("prior_num_inference_steps",),
    "decoder_steps": ("decoder_num_inference_steps", "num_inference_steps"),
    "upsampler_steps": ("super_res_num_inference_steps",),
    "prior_guidance": ("prior_guidance_scale",),
    "decoder_guidance": ("decoder_guidance_scale", "guidance_scale"),
}
# (pipeline kind, method) -> {unclip name: the other names accepted for it}
ALIASES: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    ("unclip", "__call__"): {"prompts": ("prompt",), **_SEED, **_UNCLIP_STAGES},
    ("unclip", "variations"): {"num_images": ("num_images_per_prompt",), **_SEED, **_UNCLIP_STAGES},
    ("unclip", "interpolate"): {**_SEED, **_UNCLIP_STAGES},
    ("unclip", "text_diff"): {**_SEED, **_UNCLIP_STAGES},
    ("clipvq", "__call__"): {
        "prompts": ("prompt",), **_SEED,
        "steps": ("decoder_steps", "num_inference_steps", "decoder_num_inference_steps"),
        "guidance_scale": ("decoder_guidance", "decoder_guidance_scale"),
    },
}
TENSOR_INPUTS = ("latents",)  # what callback_on_step_end_tensor_inputs may name


@dataclass
class CallPlan:
    kwargs: dict[str, Any]
    return_dict: bool


def translate(kind: str, method: str, args: tuple, kwargs: dict[str, Any], pipe=None) -> CallPlan:
    """diffusers-style ``kwargs`` (with ``args`` the positional arguments) → unclip keyword arguments."""
    kwargs = dict(kwargs)
    return_dict = kwargs.pop("return_dict", True)
    if not isinstance(return_dict, bool):
        raise UnclipError(f"return_dict must be True or False, got {return_dict!r}")
    for name, others in ALIASES.get((kind, method), {}).items():
        given = [n for n in (name,) + others if kwargs.get(n) is not None]  # None: not given (the default)
        if name == "prompts" and args:
            given.insert(0, "prompts (positional)")
        if len(given) > 1:
            raise UnclipError(f"{given[0]} and {given[1]} set the same thing; pass only one of them")
        for alias in others:
            value = kwargs.pop(alias, None)
            if value is not None:
                kwargs[name] = _seeds_from(value) if alias == "generator" else value
    if kwargs.get("output_type") == "latent":
        if kwargs.get("upsample"):
            raise UnclipError("output_type='latent' returns the decoder's samples, before the upsampler; "
                              "drop upsample=True")
        if kwargs.get("upsampler_steps") is not None:
            raise UnclipError("output_type='latent' stops before the upsampler, so upsampler_steps "
                              "(super_res_num_inference_steps) cannot apply; drop one of them")
        kwargs["to_pixels"] = False
        if kind == "unclip":
            kwargs["upsample"] = False
    tensor_inputs = kwargs.pop("callback_on_step_end_tensor_inputs", None)
    step_end = kwargs.pop("callback_on_step_end", None)
    if step_end is not None:
        if kwargs.get("callback") is not None:
            raise UnclipError("pass callback or callback_on_step_end, not both")
        kwargs["callback"] = StepEndCallback(pipe, step_end, tensor_inputs, _settings_kwargs(pipe, kwargs))
    elif tensor_inputs is not None:
        raise UnclipError("callback_on_step_end_tensor_inputs needs a callback_on_step_end")
    return CallPlan(kwargs, return_dict)


def diffusers_call(method: Callable) -> Callable:
    """Decorate a pipeline method so that it also accepts the diffusers names of ``ALIASES``."""

    @functools.wraps(method)
    def call(pipe, *args, **kwargs):
        plan = translate(pipe.kind, method.__name__, args, kwargs, pipe)
        output = method(pipe, *args, **plan.kwargs)
        return output if plan.return_dict else (output.images,)

    return call


def _settings_kwargs(pipe, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments in ``kwargs`` that ``pipe.resolve_settings`` takes (to find each stage's grid)."""
    if pipe is None:
        return {}
    names = inspect.signature(pipe.resolve_settings).parameters
    return {k: v for k, v in kwargs.items() if k in names}


def _seeds_from(generator) -> torch.Generator | list[int]:
    """``generator=``: one Generator (seeds are drawn from it) or a list → one seed drawn from each."""
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (list, tuple)) and generator and all(isinstance(g, torch.Generator) for g in generator):

        return [int(torch.randint(0, SEED_MAX, (1,), generator=g, device=g.device)) for g in generator]
    raise UnclipError(f"generator must be a torch.Generator or a list of them (one per image), got "
                      f"{type(generator).__name__}")


class StepEndCallback:
    """unclip's ``callback(stage, step, total, x)`` that calls diffusers' ``callback_on_step_end``.

    ``callback_on_step_end(pipe, i, t, {"latents": x, "stage": stage})`` with i counting from 0 within
    the stage and t its timestep (a 0-dim tensor); a returned ``"latents"`` is copied into x in place,
    so the sampler, which holds x, continues from it.
    """

    def __init__(self, pipe, function: Callable, tensor_inputs=None, settings_kwargs: dict | None = None):
        if not callable(function):
            raise UnclipError("callback_on_step_end must be callable as f(pipe, step, timestep, callback_kwargs)")
        names = list(getattr(function, "tensor_inputs", None) or tensor_inputs or TENSOR_INPUTS)
        unknown = [n for n in names if n not in TENSOR_INPUTS]
        if unknown:
            raise UnclipError(f"callback_on_step_end_tensor_inputs can name {', '.join(TENSOR_INPUTS)}, "
                              f"not {', '.join(map(repr, unknown))}")
        self.pipe, self.function, self.names = pipe, function, names
        self.settings_kwargs, self._settings = dict(settings_kwargs or {}), None

    def __call__(self, stage: str, step: int, total: int, x: torch.Tensor) -> None:
        kwargs = {"latents": x, "stage": stage}
        returned = self.function(self.pipe, step - 1, self._timestep(stage, step, total), kwargs)
        if returned is None or "latents" not in returned or returned["latents"] is x:
            return
        latents = returned["latents"]
        if not isinstance(latents, torch.Tensor) or latents.shape != x.shape:
            shape = getattr(latents, "shape", type(latents).__name__)
            raise UnclipError(f"callback_on_step_end returned latents of shape {tuple(shape)} for the {stage}'s "
                              f"{tuple(x.shape)}; return a tensor shaped like callback_kwargs['latents']")
        x.copy_(latents)

    def _timestep(self, stage: str, step: int, total: int) -> torch.Tensor:
        """The training timestep (a 0-dim tensor) of ``step`` (1-based) of ``total`` in ``stage``'s grid."""
        from unclip.diffusion.schedule import sampling_timesteps

        pipe = self.pipe
        if getattr(pipe, "kind", None) != "unclip":
            return torch.tensor(total - step + 1)  # CLIP-VQDiffusion: the discrete step, T → 1
        if stage == "prior":
            config = getattr(pipe.prior.model.config, "diffusion", None)
            if config is None:  # the autoregressive prior: the position of the code just sampled
                return torch.tensor(step - 1)
            num_timesteps = config.timesteps
        else:
            num_timesteps = (pipe.decoder if stage == "decoder" else pipe.upsampler).diffusion.num_timesteps
        if self._settings is None:  # the call has validated these already; resolving is pure
            self._settings = pipe.resolve_settings(**self.settings_kwargs)
        stage_settings = self._settings.get(stage, {})
        grid = sampling_timesteps(num_timesteps, stage_settings.get("steps", total),
                                  stage_settings.get("spacing", "trailing"))
        return torch.tensor(int(grid[step - 1]))
