"""The diffusion UNet of the unCLIP decoder and upsamplers (Ramesh et al. 2022, arXiv 2204.06125, §2.2).

One class serves three roles, chosen by ``UNetConfig``:

* **unCLIP decoder** (``image_embed_dim > 0``): the CLIP image embedding z_i is projected and *added to
  the timestep embedding*, and projected into ``num_image_tokens`` (4) extra context tokens that every
  attention layer attends to, optionally concatenated with the caption's projected text tokens
  (``text_token_dim > 0``). This is GLIDE's text conditioning (Nichol et al. 2022, §2.4) with the CLIP
  tokens added, as in unCLIP §2.2.
* **GLIDE-style text-only baseline** (``image_embed_dim = 0``, ``text_embed_dim > 0``,
  ``text_token_dim > 0``): the pooled text embedding is added to the timestep embedding and the caption
  tokens are the attention context.
* **Upsampler** (``low_res_channels > 0``, ``attention_resolutions = ()``): the input is the noisy
  high-res image concatenated with the (bilinearly upsampled) low-res image; optionally conditioned on
  the conditioning-augmentation noise level (unCLIP App. C; Ho et al. 2021, "Cascaded Diffusion").

Classifier-free guidance (Ho & Salimans 2021) is trained by replacing conditions with *learned null
embeddings*: pass ``drop_image`` / ``drop_text`` boolean masks (see ``cfg_drop_masks``); a condition
passed as ``None`` is replaced by its null embedding for the whole batch (the unconditional branch).

The network knows nothing about noise schedules (house rule 2): ``forward(x_t, t, ...)`` takes whatever
timestep values the diffusion code passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unclip.models.unet_blocks import (
    AttentionBlock,
    Downsample,
    ResBlock,
    Upsample,
    group_norm,
    zero_module,
)
from unclip.models.embeddings import timestep_embedding

__all__ = ["UNetConfig", "UNet", "cfg_drop_masks"]


@dataclass(frozen=True)
class UNetConfig:
    image_size: int = 32                        # training resolution (sets where attention goes)
    in_channels: int = 3
    out_channels: int = 3                       # 6 when the diffusion learns variances
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)  # one level per entry, ×2 downsampling between levels
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)  # feature-map sizes (px) with attention
    head_channels: int = 32
    dropout: float = 0.0
    # conditioning (0 disables)
    image_embed_dim: int = 0                    # CLIP image embedding z_i (unCLIP decoder)
    num_image_tokens: int = 4                   # z_i → this many extra context tokens (paper: 4)
    text_token_dim: int = 0                     # caption token features (encoder's token_dim)
    text_embed_dim: int = 0                     # pooled caption embedding added to time emb (GLIDE baseline)
    context_dim: int = 256                      # width of the projected context tokens
    low_res_channels: int = 0                   # upsampler: channels of the low-res conditioning image
    noise_level_cond: bool = False              # upsampler: condition on the augmentation noise level

    def __post_init__(self):
        if self.image_size < 1 or self.base_channels < 1 or self.num_res_blocks < 1:
            raise ValueError("image_size, base_channels and num_res_blocks must be >= 1")
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise ValueError("channel_mults must be a non-empty list of positive integers")
        factor = 2 ** (len(self.channel_mults) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} must be divisible by {factor} for {len(self.channel_mults)} levels")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        for level, mult in enumerate(self.channel_mults):
            attends = self.image_size // 2**level in self.attention_resolutions or (
                level == len(self.channel_mults) - 1 and self.attention_resolutions)  # middle block
            if attends and (self.base_channels * mult) % self.head_channels:
                raise ValueError(f"channels {self.base_channels * mult} not divisible by head_channels {self.head_channels}")
        if self.image_embed_dim and self.num_image_tokens < 0:
            raise ValueError("num_image_tokens must be >= 0")

    @property
    def uses_context(self) -> bool:
        return bool(self.attention_resolutions) and bool(
            (self.image_embed_dim and self.num_image_tokens) or self.text_token_dim)


def cfg_drop_masks(batch_size: int, p_image: float, p_text: float, *, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Independent per-sample masks for classifier-free-guidance dropout (unCLIP §2.2: 10% / 50%).

    Returns ``(drop_image, drop_text)``, each [B] bool, True = replace by the null embedding.
    """
    u = torch.rand(2, batch_size, generator=generator, device=device)
    return u[0] < p_image, u[1] < p_text


class UNet(nn.Module):
    """ADM/GLIDE UNet with unCLIP conditioning; see the module docstring for the three roles."""

    config_class = UNetConfig

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        ch = cfg.base_channels
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self._build_conditioning(emb_dim)
        context_dim = cfg.context_dim if cfg.uses_context else 0

        self.input_conv = nn.Conv2d(cfg.in_channels + cfg.low_res_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [ch]
        resolution = cfg.image_size
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                self.down.append(self._level_block(ch, cfg.base_channels * mult, emb_dim, resolution, context_dim))
                ch = cfg.base_channels * mult
                skip_channels.append(ch)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(Downsample(ch))
                skip_channels.append(ch)
                resolution //= 2

        self.middle = nn.ModuleList([ResBlock(ch, ch, emb_dim, cfg.dropout)])
        if cfg.attention_resolutions:
            self.middle.append(AttentionBlock(ch, cfg.head_channels, context_dim))
        self.middle.append(ResBlock(ch, ch, emb_dim, cfg.dropout))

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.num_res_blocks + 1):
                out = cfg.base_channels * mult
                self.up.append(self._level_block(ch + skip_channels.pop(), out, emb_dim, resolution, context_dim))
                ch = out
            if level > 0:
                self.up.append(Upsample(ch))
                resolution *= 2

        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))

    def _level_block(self, in_ch: int, out_ch: int, emb_dim: int, resolution: int, context_dim: int) -> nn.ModuleList:
        block = nn.ModuleList([ResBlock(in_ch, out_ch, emb_dim, self.config.dropout)])
        if resolution in self.config.attention_resolutions:
            block.append(AttentionBlock(out_ch, self.config.head_channels, context_dim))
        return block

    def _build_conditioning(self, emb_dim: int) -> None:
        cfg = self.config
        cdim = cfg.context_dim
        if cfg.image_embed_dim:
            self.null_image_embed = nn.Parameter(torch.zeros(cfg.image_embed_dim))
            self.image_to_time = nn.Linear(cfg.image_embed_dim, emb_dim)
            if cfg.uses_context and cfg.num_image_tokens:
                self.image_to_tokens = nn.Linear(cfg.image_embed_dim, cfg.num_image_tokens * cdim)
        if cfg.text_token_dim:
            self.null_text_token = nn.Parameter(torch.zeros(cfg.text_token_dim))
            if cfg.uses_context:
                self.text_to_tokens = nn.Linear(cfg.text_token_dim, cdim)
        if cfg.text_embed_dim:
            self.null_text_embed = nn.Parameter(torch.zeros(cfg.text_embed_dim))
            self.text_to_time = nn.Linear(cfg.text_embed_dim, emb_dim)
        if cfg.uses_context:
            self.context_norm = nn.LayerNorm(cdim)
        if cfg.noise_level_cond:
            self.noise_level_embed = nn.Sequential(
                nn.Linear(cfg.base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    # --- conditioning -----------------------------------------------------------
    @staticmethod
    def _replace(value: torch.Tensor, null: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
        """Rows of ``value`` [B, ...] where ``drop`` [B] is True become ``null`` [...]."""
        if drop is None:
            return value
        keep = (~drop.bool()).reshape(-1, *([1] * (value.dim() - 1))).to(value.dtype)
        return value * keep + null.to(value.dtype) * (1 - keep)

    def _text_tokens(self, text_tokens, text_mask, drop_text, batch, device, dtype):
        """Caption tokens [B, L, Dt] and mask [B, L]; dropped rows become one null token."""
        null = self.null_text_token.to(dtype)
        if text_tokens is None:
            return null.expand(batch, 1, -1), torch.ones(batch, 1, dtype=torch.bool, device=device)
        if text_mask is None:
            text_mask = torch.ones(text_tokens.shape[:2], dtype=torch.bool, device=device)
        text_mask = text_mask.bool()
        if drop_text is not None:
            drop = drop_text.bool()
            first = torch.zeros_like(text_mask)
            first[:, 0] = True
            null_seq = torch.zeros_like(text_tokens)
            null_seq[:, 0] = null
            text_tokens = torch.where(drop[:, None, None], null_seq, text_tokens)
            text_mask = torch.where(drop[:, None], first, text_mask)
        return text_tokens, text_mask

    def condition(self, t, *, batch, device, dtype, image_embed=None, text_tokens=None, text_mask=None,
                  text_embed=None, noise_level=None, drop_image=None, drop_text=None):
        """Embedding [B, E] added in every ResBlock, plus context tokens [B, L, Dc] and mask [B, L] (or None)."""
        cfg = self.config
        emb = self.time_embed(timestep_embedding(t.reshape(-1).expand(batch), cfg.base_channels).to(dtype))
        tokens, masks = [], []
        if cfg.image_embed_dim:
            z = self.null_image_embed.expand(batch, -1) if image_embed is None else image_embed.to(dtype)
            z = self._replace(z, self.null_image_embed, drop_image)  # [B, D]
            emb = emb + self.image_to_time(z)
            if hasattr(self, "image_to_tokens"):
                tokens.append(self.image_to_tokens(z).reshape(batch, cfg.num_image_tokens, cfg.context_dim))
                masks.append(torch.ones(batch, cfg.num_image_tokens, dtype=torch.bool, device=device))
        if cfg.text_embed_dim:
            s = self.null_text_embed.expand(batch, -1) if text_embed is None else text_embed.to(dtype)
            emb = emb + self.text_to_time(self._replace(s, self.null_text_embed, drop_text))
        if cfg.text_token_dim and cfg.uses_context:
            toks, mask = self._text_tokens(text_tokens, text_mask, drop_text, batch, device, dtype)
            tokens.append(self.text_to_tokens(toks.to(dtype)))
            masks.append(mask)
        if cfg.noise_level_cond:
            level = torch.zeros(batch, device=device) if noise_level is None else noise_level.reshape(-1).expand(batch)
            emb = emb + self.noise_level_embed(timestep_embedding(level, cfg.base_channels).to(dtype))
        if not tokens:
            return emb, None, None
        return emb, self.context_norm(torch.cat(tokens, dim=1)), torch.cat(masks, dim=1)

    # --- forward -----------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, *, image_embed: torch.Tensor | None = None,
                text_tokens: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                text_embed: torch.Tensor | None = None, low_res: torch.Tensor | None = None,
                noise_level: torch.Tensor | None = None, drop_image: torch.Tensor | None = None,
                drop_text: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, C, H, W] noisy image, t: [B] (or scalar) timesteps → [B, out_channels, H, W].

        image_embed [B, D]; text_tokens [B, L, Dt] with text_mask [B, L] bool; text_embed [B, Dp];
        low_res [B, Cl, h, w] (upsampled here to H×W); noise_level [B]; drop_* [B] bool masks.
        """
        cfg = self.config
        batch = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        emb, context, context_mask = self.condition(
            t, batch=batch, device=x.device, dtype=x.dtype, image_embed=image_embed, text_tokens=text_tokens,
            text_mask=text_mask, text_embed=text_embed, noise_level=noise_level, drop_image=drop_image,
            drop_text=drop_text)
        if cfg.low_res_channels:
            if low_res is None:
                raise ValueError("this UNet is an upsampler: pass low_res=[B, C, h, w]")
            if low_res.shape[-2:] != x.shape[-2:]:
                low_res = F.interpolate(low_res, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, low_res.to(x.dtype)], dim=1)  # [B, C + Cl, H, W]

        h = self.input_conv(x)
        skips = [h]
        for block in self.down:
            h = self._run(block, h, emb, context, context_mask)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h, context, context_mask)
        for block in self.up:
            if isinstance(block, Upsample):
                h = block(h)
            else:
                h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
        return self.out(h)

    @staticmethod
    def _run(block: nn.Module, h, emb, context, context_mask):
        if isinstance(block, (Downsample, Upsample)):
            return block(h)
        h = block[0](h, emb)
        if len(block) > 1:
            h = block[1](h, context, context_mask)
        return h
