"""One table of samplers and their traits (house rule 1; k-diffusion's "samplers are plain functions").

A sampler is a pure function; what differs between samplers (whether it draws noise at every step,
whether it takes DDIM's eta, whether its one step can be run backwards or inside RePaint) is a field of
its ``SamplerSpec``. The pipelines, the CLI choices, the server schema and the contract tests all read
``SAMPLERS``, so adding a sampler is its function plus one ``register(SamplerSpec(...))`` line.

Two kinds share the table:

* ``"gaussian"``: ``fn(model_fn, x_T, diffusion, *, timesteps, generator, callback, model_kwargs,
  clip_denoised, dynamic_threshold[, eta]) -> x_0``; ``timesteps`` is the descending grid the caller
  computed (``unclip.diffusion.samplers.grid``). ``unclip.diffusion.samplers``.
* ``"discrete"``: ``fn(model_fn, shape, schedule, *, steps, truncation, generator, device, callback,
  known, keep) -> codes [B, N]`` over VQ codes. ``unclip.diffusion.discrete``.

Every sampler calls ``callback(step, total, x, x0)`` (``StepCallback``) after each step, step from 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from unclip.errors import UnclipError

__all__ = ["KINDS", "SAMPLERS", "SamplerSpec", "StepCallback", "get_sampler", "register", "sampler_names",
           "unregister"]

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
"""``callback(step, total, x, x0)``: after step ``step`` (0-based) of ``total``, the new sample and its x0."""

KINDS = ("gaussian", "discrete")


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler and its traits.

    ``stochastic``: draws fresh noise at every step whatever its settings (then the pipelines sample each
    image alone with its own generator). ``takes_eta``: accepts DDIM's eta, and is stochastic when eta > 0.
    ``supports_inversion``: its deterministic step runs backwards (DDIM inversion, Song et al. 2021 §4.3).
    ``repaint_eta``: its one step equals a DDIM step at this eta, so RePaint can use it (None: a multistep
    solver whose history RePaint's jumps would break; a ``takes_eta`` sampler uses the caller's eta).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    kind: str = "gaussian"
    stochastic: bool = False
    takes_eta: bool = False
    supports_inversion: bool = False
    repaint_eta: float | None = None
    help: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"sampler kind must be one of {KINDS}, got {self.kind!r}")

    def is_stochastic(self, eta: float = 0.0) -> bool:
        return self.stochastic or (self.takes_eta and eta > 0)

    @property
    def can_repaint(self) -> bool:
        return self.takes_eta or self.repaint_eta is not None


SAMPLERS: dict[str, SamplerSpec] = {}


def register(spec: SamplerSpec) -> SamplerSpec:
    """Add ``spec`` to the table (a name is registered once)."""
    if spec.name in SAMPLERS:
        raise ValueError(f"sampler {spec.name!r} is already registered")
    SAMPLERS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    SAMPLERS.pop(name, None)


def sampler_names(kind: str | None = None) -> tuple[str, ...]:
    """Registered sampler names of ``kind`` (every kind when None), in registration order."""
    return tuple(name for name, spec in SAMPLERS.items() if kind is None or spec.kind == kind)


def get_sampler(name: str, kind: str = "gaussian", *, eta: float = 0.0) -> SamplerSpec:
    """The spec of sampler ``name`` of ``kind``; one-line errors for an unknown name or a misplaced eta."""
    spec = SAMPLERS.get(name)
    choices = ", ".join(sampler_names(kind))
    if spec is None:
        raise UnclipError(f"unknown sampler {name!r} (choose from: {choices})")
    if spec.kind != kind:
        what = "CLIP-VQDiffusion" if kind == "discrete" else "unCLIP (Gaussian diffusion)"
        raise UnclipError(f"sampler {name!r} does not apply to {what} (choose from: {choices})")
    if eta and not spec.takes_eta:
        takers = [n for n in sampler_names(kind) if SAMPLERS[n].takes_eta]
        raise UnclipError(f"eta applies only to the {', '.join(map(repr, takers))} sampler, not {name!r}")
    return spec
