"""The pipeline's view of the unCLIP prior P(z_i | y) (Ramesh et al. 2022, §2.1).

``PriorComponent`` wraps the prior network of ``unclip.models.prior`` with what the pipeline needs:
starting noise per image, ``sample(text, negative, ...)`` → CLIP image embeddings [B, D] (with
classifier-free guidance whose unconditional branch is the negative prompt when given), and
``save(dir)``. The network, its diffusion settings and the sampling algorithm live in
``unclip.models.prior`` (issue 5); this module only adapts the call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from unclip.errors import CheckpointError, UnclipError

__all__ = ["PriorComponent", "load_prior_component"]


def _prior_module():
    try:
        import unclip.models.prior as prior_module
    except ModuleNotFoundError as exc:
        if exc.name == "unclip.models.prior":
            raise UnclipError("this build has no unCLIP prior (unclip.models.prior is missing)") from None
        raise
    return prior_module


class PriorComponent:
    """A loaded prior: ``model`` (nn.Module with ``.config``) and its embedding dimension."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.embed_dim)

    def noise(self, batch: int, *, generator: torch.Generator | None, device) -> torch.Tensor:
        """Starting noise x_T [batch, D] for ``sample``."""
        return torch.randn(batch, self.embed_dim, generator=generator, device=device)

    @torch.no_grad()
    def sample(self, text, negative=None, *, noise: torch.Tensor, steps: int, sampler: str, guidance_scale: float,
               eta: float = 0.0, generator: torch.Generator | None = None,
               callback: Callable | None = None) -> torch.Tensor:
        """CLIP image embeddings [B, D] for ``text`` (a TextEncoding of B captions)."""
        module = _prior_module()
        return module.sample_prior(self.model, text, negative_text=negative, noise=noise, steps=steps,
                                   sampler=sampler, guidance_scale=guidance_scale, eta=eta, generator=generator,
                                   callback=callback)

    def save(self, directory: Path) -> None:
        from unclip.checkpoint import save_model

        save_model(self.model, Path(directory) / "model.safetensors")


def load_prior_component(directory: str | Path, device) -> PriorComponent:
    from unclip.checkpoint import load_model

    path = Path(directory) / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"prior not found: {path}")
    _prior_module()
    return PriorComponent(load_model(path, device=device))
