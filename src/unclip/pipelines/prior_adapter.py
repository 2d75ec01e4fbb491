"""The pipeline's view of the unCLIP prior P(z_i | y) (Ramesh et al. 2022, §2.1).

``PriorComponent`` wraps a prior of ``unclip.models.prior`` (the diffusion prior) or
``unclip.models.ar_prior`` (the autoregressive prior) with what the pipeline needs: starting noise per
image, ``sample(text, negative, ...)`` → CLIP image embeddings [B, D] (best of ``num_candidates`` by
z_i · z_t, with classifier-free guidance whose unconditional branch is the negative prompt when given),
and ``save(dir)``. The networks and their sampling algorithms live in those modules (issue 5); this
module only adapts the call and keeps ``component.json`` beside the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from unclip.errors import CheckpointError

__all__ = ["PriorComponent", "load_prior_component"]


class PriorComponent:
    """A loaded prior ``model`` (nn.Module with ``.config``) and its ``component.json`` ``info``."""

    def __init__(self, model: torch.nn.Module, info: dict[str, Any] | None = None):
        self.model = model.eval()
        self.info = dict(info or {"role": "prior"})

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.embed_dim)

    @property
    def num_candidates(self) -> int:
        return int(self.info.get("sample", {}).get("num_candidates", 2))

    def noise(self, batch: int, *, generator: torch.Generator | None, device) -> torch.Tensor:
        """Starting noise [batch, D] for ``sample`` (further candidates are derived from it)."""
        return torch.randn(batch, self.embed_dim, generator=generator, device=device)

    @torch.no_grad()
    def sample(self, text, negative=None, *, noise: torch.Tensor, steps: int, sampler: str, guidance_scale: float,
               eta: float = 0.0, generator: torch.Generator | None = None,
               callback: Callable | None = None, spacing: str = "trailing") -> torch.Tensor:
        """CLIP image embeddings [B, D] for ``text`` (a TextEncoding of B captions)."""
        from unclip.models.ar_prior import ARPrior, sample_ar_prior
        from unclip.models.prior import sample_prior

        if isinstance(self.model, ARPrior):  # steps / sampler / eta do not apply
            return sample_ar_prior(self.model, text, negative_text=negative, noise=noise,
                                   num_candidates=self.num_candidates, guidance_scale=guidance_scale,
                                   generator=generator, callback=callback)
        return sample_prior(self.model, text, negative_text=negative, noise=noise, num_candidates=self.num_candidates,
                            steps=steps, sampler=sampler, guidance_scale=guidance_scale, eta=eta,
                            generator=generator, callback=callback, spacing=spacing)

    def save(self, directory: Path) -> None:
        from unclip.checkpoint import atomic_write_text, save_model

        directory = Path(directory)
        save_model(self.model, directory / "model.safetensors",
                   extra_metadata={"component": json.dumps(self.info, sort_keys=True)})
        atomic_write_text(directory / "component.json", json.dumps(self.info, indent=2, sort_keys=True) + "\n")


def load_prior_component(directory: str | Path, device) -> PriorComponent:
    from unclip.checkpoint import load_model
    from unclip.pipelines.manifest import check_component_info, read_json_object

    directory = Path(directory)
    path = directory / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"prior not found: {path}")
    info = None
    if (directory / "component.json").is_file():
        info = read_json_object(directory / "component.json", "re-export the prior")
        check_component_info(info, directory / "component.json", ("prior",))
    return PriorComponent(load_model(path, device=device), info)
