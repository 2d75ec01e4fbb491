"""The unCLIP diffusion prior P(z_i | y) (Ramesh et al. 2022, "Hierarchical Text-Conditional Image
Generation with CLIP Latents", §2.1 and Appendix C).

A decoder-only Transformer with a causal attention mask over the sequence

    [caption token states (L, projected)] [text embedding z_t] [timestep t] [noised image embedding z_i^(t)] [query]

whose output at the final learned query predicts the UNNOISED image embedding z_i (x0
prediction, trained with MSE: L = E ||f(z_i^(t), t, y) - z_i||^2, §2.1). Embeddings are
normalised per dimension with the encoder's saved statistics (``embed_stats.safetensors``),
which are stored in this model's buffers so the saved file un-normalises on its own.

Classifier-free guidance (Ho & Salimans 2022): with ``drop_text[b]`` the caption tokens and the
text embedding are replaced by learned null values (trained 10% of the time). ``sample_prior``
draws ``num_candidates`` embeddings per caption and keeps the one with the highest dot product
with the text embedding (§2.1: "we generate two samples of z_i and pick the one with a higher
dot product with z_t").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from unclip.diffusion import DiffusionConfig, GaussianDiffusion, classifier_free_guidance, sample
from unclip.errors import UnclipError
from unclip.models.ar_prior import ARPrior, sample_ar_prior
from unclip.models.embeddings import timestep_embedding
from unclip.models.prior_common import TransformerBlock, candidate_noise

__all__ = ["PriorConfig", "DiffusionPrior", "sample_prior"]


def _prior_diffusion() -> DiffusionConfig:
    return DiffusionConfig(schedule="cosine", timesteps=1000, prediction="x0")


@dataclass(frozen=True)
class PriorConfig:
    embed_dim: int = 64            # D, CLIP embedding width (filled from the embeddings by the stage)
    token_dim: int = 64            # Dt, width of the text encoder's token states
    max_text_len: int = 16         # L, caption tokens attended to (longer captions are truncated)
    width: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    use_text_tokens: bool = True   # False: condition on the text embedding only
    unit_norm: bool = True         # the encoder's embeddings are L2-normalised: so are sampled ones
    diffusion: DiffusionConfig = field(default_factory=_prior_diffusion)

    def __post_init__(self):
        if min(self.embed_dim, self.token_dim, self.max_text_len, self.width, self.layers, self.heads) < 1:
            raise ValueError("embed_dim, token_dim, max_text_len, width, layers and heads must be >= 1")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.diffusion.learn_variance:
            raise ValueError("the prior predicts the embedding only; set diffusion.learn_variance: false")


class DiffusionPrior(nn.Module):
    """Causal Transformer predicting the normalised clean image embedding. Built as ``DiffusionPrior(config)``.

    ``forward(x_t, t, *, text_embed, text_tokens, text_mask, drop_text=None) -> x0 [B, D]`` works in
    normalised space: x_t and text_embed are already normalised (``normalize_image`` / ``normalize_text``).
    """

    config_class = PriorConfig

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        D, W, L = config.embed_dim, config.width, config.max_text_len
        self.token_norm = nn.LayerNorm(config.token_dim)
        self.token_proj = nn.Linear(config.token_dim, W)
        self.text_proj = nn.Linear(D, W)
        self.x_proj = nn.Linear(D, W)
        self.time_mlp = nn.Sequential(nn.Linear(W, W), nn.SiLU(), nn.Linear(W, W))
        self.query = nn.Parameter(torch.randn(W) * 0.02)
        self.null_tokens = nn.Parameter(torch.randn(L, W) * 0.02)     # unconditional caption tokens
        self.null_text = nn.Parameter(torch.randn(W) * 0.02)          # unconditional text embedding
        self.position = nn.Parameter(torch.randn(L + 4, W) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(config.width, config.heads, config.mlp_ratio, config.dropout)
                                    for _ in range(config.layers))
        self.norm = nn.LayerNorm(W)
        self.out = nn.Linear(W, D)
        # per-dimension embedding statistics (encoder's embed_stats), saved with the weights
        for name, value in (("image_mean", 0.0), ("image_std", 1.0), ("text_mean", 0.0), ("text_std", 1.0)):
            self.register_buffer(name, torch.full((D,), value))

    # --- normalisation (Appendix C) ----------------------------------------------------
    def set_embed_stats(self, stats: dict[str, torch.Tensor]) -> None:
        """Copy ``{"image_mean", "image_std", "text_mean", "text_std"}`` ([D] each) into the buffers."""
        for name in ("image_mean", "image_std", "text_mean", "text_std"):
            value = torch.as_tensor(stats[name]).float().flatten()
            if value.shape != (self.config.embed_dim,):
                raise UnclipError(f"embedding stats {name} has {value.numel()} dims but the prior expects "
                                  f"{self.config.embed_dim}; use the stats of the encoder that made the embeddings")
            getattr(self, name).copy_(value.clamp(min=1e-6) if name.endswith("std") else value)

    def normalize_image(self, embed: torch.Tensor) -> torch.Tensor:
        return (embed - self.image_mean) / self.image_std

    def denormalize_image(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.image_std + self.image_mean

    def normalize_text(self, embed: torch.Tensor) -> torch.Tensor:
        return (embed - self.text_mean) / self.text_std

    # --- network ------------------------------------------------------------------------
    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        *,
        text_embed: torch.Tensor | None = None,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
        prefix_kv: torch.Tensor | None = None,
        prefix_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x0 (B, D) from x_t (B, D) and t (B,), given the text or its cached ``encode_text`` output.

        The causal mask lets no caption position see t or x_t, so the prefix [caption tokens][z_t] has the
        same keys and values at every diffusion step: ``prefix_kv, prefix_valid = encode_text(...)``
        computes them once per caption and the sampler passes them here, leaving 3 positions per step.
        """
        if prefix_kv is None:
            if text_embed is None:
                raise ValueError("pass text_embed (and the caption tokens) or prefix_kv/prefix_valid")
            prefix_kv, prefix_valid = self.encode_text(text_embed, text_tokens, text_mask, drop_text)
        B, P, W = x_t.shape[0], prefix_valid.shape[1], self.config.width
        time = self.time_mlp(timestep_embedding(t, W).to(x_t.dtype))                                 # (B, W)
        query = self.query.to(x_t.dtype).expand(B, W)
        seq = torch.stack([time, self.x_proj(x_t), query], dim=1) + self.position[P:]               # (B, 3, W)
        causal = torch.ones(3, 3, dtype=torch.bool, device=x_t.device).tril()
        keys = torch.cat([prefix_valid[:, None, :].expand(B, 3, P), causal.expand(B, 3, 3)], dim=2)  # (B, 3, P+3)
        mask = keys[:, None]
        for block, past in zip(self.blocks, prefix_kv.unbind(1)):
            seq = block(seq, mask, past=past)
        return self.out(self.norm(seq[:, -1]))                                                       # (B, D)

    def encode_text(self, text_embed: torch.Tensor, text_tokens: torch.Tensor | None = None,
                    text_mask: torch.Tensor | None = None, drop_text: torch.Tensor | None = None):
        """Run the step-independent prefix [caption tokens (L)][text embedding] through every layer.

        Returns ``prefix_kv`` (B, layers, 2, nh, L+1, hs), each layer's keys and values (batch first, so
        classifier-free guidance concatenates it like any other condition), and ``prefix_valid`` (B, L+1),
        the prefix positions a later position may attend to.
        """
        B = text_embed.shape[0]
        drop = torch.zeros(B, dtype=torch.bool, device=text_embed.device) if drop_text is None else drop_text.bool()
        dtype = self.text_proj.weight.dtype
        text = torch.where(drop[:, None], self.null_text.to(dtype), self.text_proj(text_embed.to(dtype)))  # (B, W)
        tokens, valid = self._tokens(text_tokens, text_mask, drop, B, text)                   # (B, L, W), (B, L)
        seq = torch.cat([tokens, text[:, None].to(tokens.dtype)], dim=1)                      # (B, P, W)
        P = seq.shape[1]
        seq = seq + self.position[:P]
        valid = torch.cat([valid, torch.ones(B, 1, dtype=torch.bool, device=valid.device)], dim=1)    # (B, P)
        causal = torch.ones(P, P, dtype=torch.bool, device=seq.device).tril()
        eye = torch.eye(P, dtype=torch.bool, device=seq.device)   # a padded position still sees itself
        mask = (causal & (valid[:, None, :] | eye))[:, None]                                         # (B, 1, P, P)
        kv = []
        for i, block in enumerate(self.blocks):
            qkv = block.qkv_heads(seq)
            kv.append(qkv[1:])
            if i + 1 < len(self.blocks):  # the last layer's prefix outputs are never read
                seq = block(seq, mask, qkv=qkv)
        return torch.stack(kv, dim=0).permute(2, 0, 1, 3, 4, 5), valid

    def _tokens(self, text_tokens, text_mask, drop, B, like):
        """Projected caption tokens (B, L, W) and their validity (B, L), null tokens where dropped."""
        L, W = self.config.max_text_len, self.config.width
        null = self.null_tokens.to(like.dtype).expand(B, L, W)
        if not self.config.use_text_tokens or text_tokens is None:
            return null, torch.ones(B, L, dtype=torch.bool, device=like.device)
        tokens = text_tokens[:, :L].to(like.dtype)
        mask = (torch.ones(tokens.shape[:2], dtype=torch.bool, device=like.device) if text_mask is None
                else text_mask[:, :L].bool())
        if tokens.shape[1] < L:                                   # pad short token sequences
            pad = L - tokens.shape[1]
            tokens = F.pad(tokens, (0, 0, 0, pad))
            mask = F.pad(mask, (0, pad), value=False)
        projected = self.token_proj(self.token_norm(tokens))
        projected = torch.where(drop[:, None, None], null, projected)
        mask = mask | drop[:, None]
        return projected, mask


@torch.no_grad()
def sample_prior(
    prior: DiffusionPrior,
    text: Any,
    *,
    negative_text: Any = None,
    noise: torch.Tensor | None = None,
    num_candidates: int = 2,
    steps: int = 64,
    sampler: str = "ddim",
    guidance_scale: float = 2.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    spacing: str = "trailing",
) -> torch.Tensor:
    """CLIP image embeddings [B, D] (raw, un-normalised) for ``text`` (a ``TextEncoding`` of B captions).

    ``noise`` [B, D] is the first candidate's x_T (drawn from ``generator`` when None). Each caption
    gets ``num_candidates`` samples; the one with the highest dot product with the caption's text
    embedding is kept (§2.1). ``negative_text`` (a TextEncoding) replaces the null condition in the
    unconditional branch of classifier-free guidance. An ``ARPrior`` is sampled with
    ``sample_ar_prior`` (steps, sampler, spacing and eta do not apply to it). ``spacing``: the timestep grid
    (``unclip.diffusion.schedule.SPACINGS``).
    """
    if not isinstance(prior, DiffusionPrior):
        if isinstance(prior, ARPrior):  # the same call samples the autoregressive prior
            return sample_ar_prior(prior, text, negative_text=negative_text, noise=noise, num_candidates=num_candidates,
                                   guidance_scale=guidance_scale, generator=generator, callback=callback)
    if num_candidates < 1:
        raise UnclipError(f"num_candidates must be >= 1, got {num_candidates}")
    device = prior.image_mean.device
    text_embed = text.embed.to(device).float()
    B, D = text_embed.shape
    if D != prior.config.embed_dim:
        raise UnclipError(f"text embeddings have {D} dims but the prior expects {prior.config.embed_dim}; "
                          "use the encoder the prior was trained with")
    if noise is None:
        noise = torch.randn(B, D, generator=generator, device=device)
    x_T = candidate_noise(noise.to(device).float(), num_candidates).reshape(B * num_candidates, D)

    def repeat(value):  # [B, ...] -> [B * K, ...], candidates of one caption adjacent
        return None if value is None else value.to(device).repeat_interleave(num_candidates, dim=0)

    cond = {"text_embed": repeat(prior.normalize_text(text_embed)), "text_tokens": repeat(text.tokens),
            "text_mask": repeat(text.mask), "drop_text": torch.zeros(B * num_candidates, dtype=torch.bool, device=device)}
    if negative_text is not None:
        uncond = {"text_embed": repeat(prior.normalize_text(negative_text.embed.to(device).float())),
                  "text_tokens": repeat(negative_text.tokens), "text_mask": repeat(negative_text.mask)}
        uncond["text_tokens"], cond["text_tokens"], uncond["text_mask"], cond["text_mask"] = _same_length(
            uncond["text_tokens"], cond["text_tokens"], uncond["text_mask"], cond["text_mask"])
    else:
        uncond = {"drop_text": torch.ones(B * num_candidates, dtype=torch.bool, device=device)}

    def prefix(kwargs):  # the caption prefix's keys and values, computed once instead of at every step
        kv, valid = prior.encode_text(kwargs["text_embed"], kwargs["text_tokens"], kwargs["text_mask"],
                                      kwargs.get("drop_text"))
        return {"prefix_kv": kv, "prefix_valid": valid}

    uncond = prefix({**cond, **uncond}) if guidance_scale != 1.0 else {}
    cond = prefix(cond)
    model_fn = classifier_free_guidance(prior, guidance_scale, uncond)
    diffusion = GaussianDiffusion(prior.config.diffusion)
    x0 = sample(sampler, model_fn, x_T, diffusion, steps=steps, spacing=spacing, eta=eta, generator=generator,
                callback=callback, model_kwargs=cond)
    embeds = prior.denormalize_image(x0).view(B, num_candidates, D)
    if prior.config.unit_norm:
        embeds = F.normalize(embeds, dim=-1)
    scores = (embeds * text_embed[:, None]).sum(-1)                     # (B, K) dot products with z_t
    best = scores.argmax(dim=1)
    return embeds[torch.arange(B, device=device), best]


def _same_length(tokens_a, tokens_b, mask_a, mask_b):
    """Pad two token batches (and masks) to the same length L."""
    if tokens_a is None or tokens_b is None or tokens_a.shape[1] == tokens_b.shape[1]:
        return tokens_a, tokens_b, mask_a, mask_b
    L = max(tokens_a.shape[1], tokens_b.shape[1])

    def pad(tokens, mask):
        extra = L - tokens.shape[1]
        mask = mask if mask is not None else torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return F.pad(tokens, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)

    (tokens_a, mask_a), (tokens_b, mask_b) = pad(tokens_a, mask_a), pad(tokens_b, mask_b)
    return tokens_a, tokens_b, mask_a, mask_b


def replace_dims(config: PriorConfig, **dims: Any) -> PriorConfig:
    """A copy of ``config`` with data-dependent fields (embed_dim, token_dim, max_text_len, unit_norm) set."""
    return dataclasses.replace(config, **dims)
