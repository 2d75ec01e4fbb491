"""The unCLIP autoregressive (AR) prior (Ramesh et al. 2022, §2.1, "Autoregressive (AR) prior").

The CLIP image embedding z_i is turned into a sequence of discrete codes: PCA keeps the
``pca_dims`` leading principal components (sorted by eigenvalue, so the sequence goes from coarse
to fine), each whitened component is quantised into ``num_buckets`` equal-mass buckets (per-dimension
quantiles of the training set), and a causal Transformer predicts the code sequence after a prefix
made of the caption's token states and the CLIP text embedding. Trained with cross-entropy;
sampled token by token (temperature, classifier-free guidance on the logits, Ho & Salimans 2022),
then decoded back through the bucket centres and the inverse PCA.

The paper also conditions on a quantised z_i · z_t token; we use classifier-free guidance with a
learned null prefix instead, shared with the diffusion prior, so that the two priors compare on
equal terms. ``sample_ar_prior`` keeps the best of ``num_candidates`` by dot product with z_t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from unclip.errors import UnclipError
from unclip.models.prior_common import TransformerBlock, candidate_noise

__all__ = ["ARPriorConfig", "ARPrior", "sample_ar_prior"]


@dataclass(frozen=True)
class ARPriorConfig:
    embed_dim: int = 64            # D (filled from the embeddings)
    token_dim: int = 64            # Dt
    max_text_len: int = 16         # L
    pca_dims: int = 32             # K codes per embedding (paper: 319 of 1024)
    num_buckets: int = 256         # values per code (paper: 1024)
    width: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    use_text_tokens: bool = True
    unit_norm: bool = True

    def __post_init__(self):
        if self.pca_dims > self.embed_dim:
            raise ValueError(f"pca_dims ({self.pca_dims}) cannot exceed embed_dim ({self.embed_dim})")
        if self.num_buckets < 2:
            raise ValueError("num_buckets must be >= 2")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")


class ARPrior(nn.Module):
    """Causal Transformer over [caption tokens (L)] [z_t] [code_0 .. code_{K-1}]. Built as ``ARPrior(config)``.

    Buffers (saved with the weights): PCA ``pca_mean`` [D], ``pca_components`` [K, D], ``pca_scale`` [K]
    (sqrt eigenvalues), bucket ``edges`` [K, nb-1] and ``centers`` [K, nb] in whitened units, and the
    text statistics ``text_mean``/``text_std`` [D]. ``fit_codebook`` sets them from training embeddings.
    """

    config_class = ARPriorConfig

    def __init__(self, config: ARPriorConfig):
        super().__init__()
        self.config = config
        D, K, NB, W, L = config.embed_dim, config.pca_dims, config.num_buckets, config.width, config.max_text_len
        self.token_norm = nn.LayerNorm(config.token_dim)
        self.token_proj = nn.Linear(config.token_dim, W)
        self.text_proj = nn.Linear(D, W)
        self.code_embed = nn.Embedding(NB, W)
        self.null_tokens = nn.Parameter(torch.randn(L, W) * 0.02)
        self.null_text = nn.Parameter(torch.randn(W) * 0.02)
        self.position = nn.Parameter(torch.randn(L + 1 + K, W) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(config.width, config.heads, config.mlp_ratio, config.dropout)
                                    for _ in range(config.layers))
        self.norm = nn.LayerNorm(W)
        self.head = nn.Linear(W, NB)
        self.register_buffer("pca_mean", torch.zeros(D))
        self.register_buffer("pca_components", torch.eye(D)[:K].clone())
        self.register_buffer("pca_scale", torch.ones(K))
        self.register_buffer("edges", torch.linspace(-3, 3, NB - 1)[None].repeat(K, 1))
        self.register_buffer("centers", torch.linspace(-3, 3, NB)[None].repeat(K, 1))
        self.register_buffer("text_mean", torch.zeros(D))
        self.register_buffer("text_std", torch.ones(D))

    # --- the code book: PCA + per-dimension quantile buckets -----------------------------
    @torch.no_grad()
    def fit_codebook(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor | None = None) -> None:
        """Fit PCA and buckets on training image embeddings [N, D] (and text stats on text_embeds)."""
        x = image_embeds.double()
        K, NB = self.config.pca_dims, self.config.num_buckets
        if len(x) < 2:
            raise UnclipError("the AR prior needs at least 2 training embeddings to fit its PCA")
        mean = x.mean(0)
        cov = (x - mean).T @ (x - mean) / (len(x) - 1)
        eigvals, eigvecs = torch.linalg.eigh(cov)                       # ascending
        order = eigvals.flip(0)[:K].clamp(min=1e-12)
        components = eigvecs.flip(1)[:, :K].T                           # (K, D), largest first
        z = (x - mean) @ components.T / order.sqrt()                    # (N, K) whitened
        quantiles = torch.linspace(0, 1, 2 * NB + 1, dtype=torch.float64)
        q = torch.quantile(z, quantiles, dim=0).T                       # (K, 2 NB + 1)
        self.pca_mean.copy_(mean.float())
        self.pca_components.copy_(components.float())
        self.pca_scale.copy_(order.sqrt().float())
        self.edges.copy_(q[:, 2:-1:2].float())                          # bucket boundaries (K, NB - 1)
        self.centers.copy_(q[:, 1::2].float())                          # bucket medians (K, NB)
        if text_embeds is not None:
            self.text_mean.copy_(text_embeds.double().mean(0).float())
            self.text_std.copy_(text_embeds.double().std(0).clamp(min=1e-6).float())

    def encode(self, image_embed: torch.Tensor) -> torch.Tensor:
        """Image embeddings [B, D] -> codes [B, K] (long)."""
        z = (image_embed.float() - self.pca_mean) @ self.pca_components.T / self.pca_scale       # (B, K)
        return torch.searchsorted(self.edges.contiguous(), z.T.contiguous()).T.clamp(max=self.config.num_buckets - 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, K] -> image embeddings [B, D] (L2-normalised when unit_norm)."""
        z = torch.gather(self.centers.expand(codes.shape[0], -1, -1), 2, codes[..., None]).squeeze(-1)   # (B, K)
        embed = (z * self.pca_scale) @ self.pca_components + self.pca_mean
        return F.normalize(embed, dim=-1) if self.config.unit_norm else embed

    def normalize_text(self, embed: torch.Tensor) -> torch.Tensor:
        return (embed - self.text_mean) / self.text_std

    @property
    def image_mean(self) -> torch.Tensor:
        """Mean training image embedding [D] (the PCA centre)."""
        return self.pca_mean

    # --- network ----------------------------------------------------------------------------
    def forward(self, codes: torch.Tensor, *, text_embed: torch.Tensor, text_tokens: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, drop_text: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, n+1, NB] for codes 0..n given the first n codes [B, n] (n < K) and the text prefix."""
        B, L = codes.shape[0], self.config.max_text_len
        like = self.null_text                                                                      # device / dtype
        drop = torch.zeros(B, dtype=torch.bool, device=codes.device) if drop_text is None else drop_text.bool()
        text = torch.where(drop[:, None], self.null_text, self.text_proj(self.normalize_text(text_embed.float())))
        tokens, valid = self._tokens(text_tokens, text_mask, drop, B, like)                      # (B, L, W)
        seq = torch.cat([tokens, text[:, None], self.code_embed(codes)], dim=1)                  # (B, L+1+n, W)
        S = seq.shape[1]
        seq = seq + self.position[:S]
        keys = torch.cat([valid, torch.ones(B, S - L, dtype=torch.bool, device=codes.device)], dim=1)
        causal = torch.ones(S, S, dtype=torch.bool, device=codes.device).tril()
        eye = torch.eye(S, dtype=torch.bool, device=codes.device)
        mask = (causal & (keys[:, None, :] | eye))[:, None]                                        # (B, 1, S, S)
        for block in self.blocks:
            seq = block(seq, mask)
        return self.head(self.norm(seq[:, L:]))                                                    # (B, n+1, NB)

    def _tokens(self, text_tokens, text_mask, drop, B, like):
        L, W = self.config.max_text_len, self.config.width
        null = self.null_tokens.expand(B, L, W)
        if not self.config.use_text_tokens or text_tokens is None:
            return null, torch.ones(B, L, dtype=torch.bool, device=like.device)
        tokens = text_tokens[:, :L].float()
        mask = (torch.ones(tokens.shape[:2], dtype=torch.bool, device=like.device) if text_mask is None
                else text_mask[:, :L].bool())
        if tokens.shape[1] < L:
            tokens = F.pad(tokens, (0, 0, 0, L - tokens.shape[1]))
            mask = F.pad(mask, (0, L - mask.shape[1]), value=False)
        projected = torch.where(drop[:, None, None], null, self.token_proj(self.token_norm(tokens)))
        return projected, mask | drop[:, None]

    def loss(self, image_embed: torch.Tensor, **text: Any) -> torch.Tensor:
        """Mean cross-entropy of the code sequence of image_embed [B, D] (teacher forcing)."""
        codes = self.encode(image_embed)                                    # (B, K)
        logits = self(codes[:, :-1], **text)                                # (B, K, NB)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))


@torch.no_grad()
def sample_ar_prior(
    prior: ARPrior,
    text: Any,
    *,
    negative_text: Any = None,
    noise: torch.Tensor | None = None,
    num_candidates: int = 2,
    guidance_scale: float = 2.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    **unused: Any,
) -> torch.Tensor:
    """Image embeddings [B, D] for ``text`` (a TextEncoding), best of ``num_candidates`` by z_i · z_t.

    ``noise`` [B, D] seeds the sampling of each caption's candidates (uniforms derived from it, so a
    caption's result does not depend on the batch); ``steps``/``sampler``/``eta`` are ignored.
    """
    if num_candidates < 1:
        raise UnclipError(f"num_candidates must be >= 1, got {num_candidates}")
    device = prior.pca_mean.device
    B, K, NB = text.embed.shape[0], prior.config.pca_dims, prior.config.num_buckets
    if text.embed.shape[1] != prior.config.embed_dim:
        raise UnclipError(f"text embeddings have {text.embed.shape[1]} dims but the prior expects "
                          f"{prior.config.embed_dim}; use the encoder the prior was trained with")
    if noise is None:
        noise = torch.randn(B, prior.config.embed_dim, generator=generator, device=device)
    # per-caption uniforms for inverse-CDF sampling, derived from the noise rows: (B*C, K)
    gauss = candidate_noise(noise.to(device).float(), num_candidates).reshape(B * num_candidates, -1)
    uniforms = torch.special.ndtr(gauss[:, :K])                          # K <= D columns
    rep = lambda v: None if v is None else v.to(device).repeat_interleave(num_candidates, dim=0)  # noqa: E731
    cond = {"text_embed": rep(text.embed), "text_tokens": rep(text.tokens), "text_mask": rep(text.mask)}
    n = B * num_candidates
    if negative_text is not None:
        uncond = {"text_embed": rep(negative_text.embed), "text_tokens": rep(negative_text.tokens),
                  "text_mask": rep(negative_text.mask), "drop_text": torch.zeros(n, dtype=torch.bool, device=device)}
    else:
        uncond = {**cond, "drop_text": torch.ones(n, dtype=torch.bool, device=device)}
    cond["drop_text"] = torch.zeros(n, dtype=torch.bool, device=device)
    guided = guidance_scale != 1.0
    both = {k: torch.cat([cond[k], uncond[k]]) if guided else cond[k] for k in cond if cond[k] is not None}
    codes = torch.zeros(n, 0, dtype=torch.long, device=device)
    for k in range(K):
        logits = prior(torch.cat([codes, codes]) if guided else codes, **both)[:, -1].float()   # (n or 2n, NB)
        if guided:
            logits = logits[n:] + guidance_scale * (logits[:n] - logits[n:])
        cdf = torch.softmax(logits / max(temperature, 1e-6), dim=-1).cumsum(-1)                # (n, NB)
        nxt = torch.searchsorted(cdf, uniforms[:, k:k + 1].contiguous()).clamp(max=NB - 1)
        codes = torch.cat([codes, nxt], dim=1)
        if callback is not None:
            callback(k, K, codes, codes)
    embeds = prior.decode(codes).view(B, num_candidates, -1)
    scores = (embeds * text.embed.to(device).float()[:, None]).sum(-1)
    return embeds[torch.arange(B, device=device), scores.argmax(1)]

