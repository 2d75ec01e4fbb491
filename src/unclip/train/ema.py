"""Exponential moving average of weights (the weights sampling uses by default).

unCLIP (Ramesh et al., arXiv 2204.06125, App. C) samples with EMA weights, as
do the diffusion models it builds on (Ho et al., arXiv 2006.11239, §4). The
update is ``ema = decay_t * ema + (1 - decay_t) * param`` with the usual
warm-up ``decay_t = min(decay, (1 + t) / (10 + t))`` so that early, random
weights are forgotten quickly. Buffers (e.g. norm statistics) are copied.
"""

from __future__ import annotations

import copy

import torch

__all__ = ["EMA"]


class EMA:
    """Holds ``model``'s EMA copy as a full module (``self.model``), never trained directly."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """EMA decay used after optimiser step ``step`` (1-based)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = self.decay_at(step)
        ema_params = [p for p in self.model.parameters()]
        params = [p.detach() for p in model.parameters()]
        floats = [(e, p) for e, p in zip(ema_params, params) if e.is_floating_point()]
        if floats:
            # lerp: ema + (1 - decay) * (param - ema)
            torch._foreach_lerp_([e for e, _ in floats], [p.to(e.dtype) for e, p in floats], 1.0 - decay)
        for ema_buf, buf in zip(self.model.buffers(), model.buffers()):
            ema_buf.copy_(buf)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
