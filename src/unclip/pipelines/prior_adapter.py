"""The pipeline's view of the unCLIP prior P(z_i | y) (Ramesh et al. 2022, §2.1).

``PriorComponent`` wraps a prior of ``unclip.models.prior`` (the diffusion prior) or
``unclip.models.ar_prior`` (the autoregressive prior) with what the pipeline needs: starting noise per
image, ``sample(text, negative, ...)`` → CLIP image embeddings [B, D] (best of ``num_candidates`` by
z_i · z_t, with classifier-free guidance whose unconditional branch is the negative prompt when given),
and ``save(dir)``. The networks and their sampling algorithms live in those modules (issue 5); this
module only adapts the call. The component is one file (``unclip.components``).

``PriorPipeline`` is the text half of the pipeline cut at the image embedding (issue #19): text → z_i,
batched like the decoder half so one seed gives one image whichever way the halves are called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from unclip.components import load_component, save_component
from unclip.precision import autocast

__all__ = ["PriorComponent", "PriorPipeline", "load_prior_component"]


class PriorComponent:
    """A loaded prior ``model`` (nn.Module with ``.config``) and its component settings ``info``."""

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
        extra = {k: v for k, v in self.info.items() if k not in ("role", "sample")}
        save_component(directory, self.model, role="prior", sample_defaults=self.info.get("sample"), extra=extra)


def load_prior_component(directory: str | Path, device) -> PriorComponent:
    stored = load_component(directory, device=device, roles=("prior",))
    return PriorComponent(stored.model, stored.info)


class PriorPipeline:
    """Text → CLIP image embedding z_i [N, D] (unCLIP §2.1), for the diffusion and the AR prior alike."""

    def __init__(self, encoder, prior: PriorComponent):
        self.encoder, self.prior = encoder, prior

    @property
    def device(self) -> torch.device:
        return next(self.prior.model.parameters()).device

    def noise(self, generators: Sequence[torch.Generator]) -> list[torch.Tensor]:
        """Image i's prior starting noise [1, D], the first draw from ``generators[i]``."""
        return [self.prior.noise(1, generator=g, device=self.device) for g in generators]

    @torch.no_grad()
    def generate(self, text, negative=None, *, noise: Sequence[torch.Tensor], settings: dict[str, Any],
                 generators: Sequence[torch.Generator], groups: Sequence[Sequence[int]] | None = None,
                 stochastic: bool = False, callback: Callable | None = None, progress: bool = True) -> torch.Tensor:
        """z_i [N, D] for ``text`` (a TextEncoding of N captions), sampled with the prior's ``settings``.

        ``groups``: the batches of image indices (``unclip.pipelines.decoder.batches``; default one batch);
        ``stochastic``: the groups hold one image each and sample with that image's generator."""
        from unclip.pipelines.decoder import select_rows
        from unclip.pipelines.sampling import stage_callback

        n = len(noise)
        groups = groups or [list(range(n))]
        s = settings
        bar = tqdm(total=s["steps"] * len(groups), desc="prior", disable=not progress, leave=False)
        out = []
        try:
            for group in groups:
                generator = generators[group[0]] if stochastic else None
                with autocast(s["precision"], self.device):
                    out.append(self.prior.sample(
                        select_rows(text, list(group)), select_rows(negative, list(group)),
                        noise=torch.cat([noise[i] for i in group]), steps=s["steps"], sampler=s["sampler"],
                        guidance_scale=s["guidance_scale"], eta=s["eta"], generator=generator,
                        spacing=s["spacing"], callback=stage_callback("prior", bar, callback)).float())
        finally:
            bar.close()
        return torch.cat(out)

