"""Training stage ``decoder``: the unCLIP decoder P(x | z_i, y) (Ramesh et al. 2022, §2.2).

The CLIP image embedding z_i (and the caption's text tokens) come from a frozen encoder run on the fly
(``data.encoder``). Classifier-free guidance is trained by dropping z_i with probability ``drop_image``
(paper: 10%) and the caption with ``drop_text`` (paper: 50%), replaced by learned null embeddings.
``conditioning: text`` trains the GLIDE-style baseline instead (Nichol et al. 2022): pooled text
embedding + caption tokens, no CLIP image embedding, no prior needed.

Loss: L_simple (Ho et al. 2020, eq. 14) or the hybrid loss, via ``GaussianDiffusion.training_losses``.
Export: ``final/decoder/model.safetensors``, one self-describing component file (``unclip.components``).

``data.autoencoder`` (a trained ``unclip train autoencoder`` run) makes it a **latent decoder** (Rombach
et al. 2022; Kandinsky 2.2's decoder on MoVQ latents): the UNet denoises the frozen autoencoder's scaled
latents of the ``data.image_size`` image, and the autoencoder is exported beside it
(``final/decoder/autoencoder.safetensors``) so that the decoder component still yields pixels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from unclip.components import AUTOENCODER_FILE, save_component
from unclip.diffusion.gaussian import GaussianDiffusion
from unclip.diffusion.schedule import DiffusionConfig
from unclip.errors import UnclipError
from unclip.models.unet import UNet, UNetConfig, cfg_drop_masks
from unclip.pipelines.settings import check_stage_sampling
from unclip.train.config import TrainConfig
from unclip.train.stage import ImageStage

__all__ = ["DecoderData", "SampleSettings", "DecoderStageConfig", "DecoderStage", "load_autoencoder",
           "AUTOENCODER_FILE"]


@dataclass(frozen=True)
class DecoderData:
    path: str = "data/shapes"    # a built dataset dir (or image folder / shards), see unclip.data
    encoder: str = ""            # a frozen encoder dir (unclip.encoders.load_encoder)
    image_size: int = 32         # decoder resolution
    val_split: str = "val"
    # Side at which the frozen encoder sees each image (0: image_size). Set it to the encoder's training
    # resolution when that is larger than the decoder's (e.g. 64 for a 32 px decoder on a 64 px CLIP):
    # z_i then comes from the full image, as the prior's training embeddings do, and the decoder learns
    # the area-downsampled image.
    encoder_image_size: int = 0
    autoencoder: str = ""        # a trained autoencoder (run dir or model.safetensors): a latent decoder
    # Compute the frozen encoders' outputs (z_i, caption tokens, latents) once before step 0 instead of at
    # every step (unclip.train.cond_cache); right for fixed datasets without augmentation.
    cache_conditions: bool = False


@dataclass(frozen=True)
class SampleSettings:
    """How ``evaluate`` samples its grid."""
    num_images: int = 8
    sampler: str = "ddim"
    steps: int = 25
    guidance_scale: float = 3.0
    spacing: str = "trailing"    # timestep grid (unclip.diffusion.schedule.SPACINGS); the pipeline's default too
    # > 0: also decode this many training images from their own z_i (variations, paper §3.1) and log the
    # fraction EfficientNet-Lite1 recognises (unclip.eval.recognisability) — the training curve of issue #18
    recognisability_items: int = 0

    def __post_init__(self):
        if self.recognisability_items < 0:
            raise ValueError("sample.recognisability_items must be >= 0")
        check_stage_sampling(self, "sample")


@dataclass(frozen=True)
class DecoderStageConfig:
    data: DecoderData = field(default_factory=DecoderData)
    model: UNetConfig = field(default_factory=UNetConfig)  # conditioning dims are filled from the encoder
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    conditioning: Literal["unclip", "text"] = "unclip"     # "text": GLIDE-style baseline
    text_tokens: bool = True                               # also attend to the caption's tokens
    drop_image: float = 0.1
    drop_text: float = 0.5
    sample: SampleSettings = field(default_factory=SampleSettings)

    def __post_init__(self):
        for name in ("drop_image", "drop_text"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.data.encoder_image_size and self.data.encoder_image_size < self.data.image_size:
            raise ValueError("data.encoder_image_size must be 0 or at least data.image_size")
        if self.conditioning == "text" and not self.text_tokens:
            raise ValueError("conditioning 'text' (GLIDE baseline) needs text_tokens: true")


def load_autoencoder(path: str | Path, device="cpu"):
    """An ``Autoencoder`` from a run dir (``final/model.safetensors``), a folder or the file itself."""
    from unclip.checkpoint import load_model
    from unclip.models.autoencoder import Autoencoder

    path = Path(path)
    for candidate in (path, path / "model.safetensors", path / "final" / "model.safetensors"):
        if candidate.is_file():
            return load_model(candidate, device=device, expected=Autoencoder)
    raise UnclipError(f"no trained autoencoder at {path}; train one with 'unclip train autoencoder'")


class DecoderStage(ImageStage):
    name = "decoder"
    config_class = DecoderStageConfig

    def __init__(self, config: DecoderStageConfig):
        super().__init__(config)
        self.diffusion = GaussianDiffusion(config.diffusion)
        self._encoder = None
        self._autoencoder = None
        self._cache = None
        self._cache_to_save = False

    # --- frozen helpers ----------------------------------------------------------
    @property
    def encoder(self):
        if self._encoder is None:
            if not self.config.data.encoder:
                raise UnclipError("the decoder needs a frozen encoder: set data.encoder=PATH (an encoder directory)")
            from unclip.encoders import load_encoder

            self._encoder = load_encoder(self.config.data.encoder).eval().requires_grad_(False)
        return self._encoder

    @property
    def autoencoder(self):
        """The frozen autoencoder of a latent decoder, or None for a pixel decoder."""
        if self._autoencoder is None and self.config.data.autoencoder:
            from unclip.models.autoencoder import Autoencoder

            self._autoencoder = load_autoencoder(self.config.data.autoencoder).eval().requires_grad_(False)
            if self._autoencoder.config.image_size != self.config.data.image_size:
                raise UnclipError(f"data.autoencoder works at {self._autoencoder.config.image_size} px but "
                                  f"data.image_size is {self.config.data.image_size}; make them equal")
            assert isinstance(self._autoencoder, Autoencoder)
        return self._autoencoder

    def image_size(self) -> int:
        data = self.config.data
        return data.encoder_image_size or data.image_size

    def decoder_images(self, images: torch.Tensor) -> torch.Tensor:
        """The decoder's target: ``images`` area-downsampled to ``data.image_size`` when they are larger,
        then, for a latent decoder, the autoencoder's scaled latents [B, C, h, w]."""
        size = self.config.data.image_size
        images = images if images.shape[-1] == size else F.interpolate(images, size=(size, size), mode="area")
        if self.autoencoder is None:
            return images
        with torch.no_grad():
            return self.autoencoder.encode(images).float()

    def to_pixels(self, samples: torch.Tensor) -> torch.Tensor:
        """Decoder samples → images in [-1, 1] (the autoencoder's decoding for a latent decoder)."""
        if self.autoencoder is None:
            return samples
        with torch.no_grad():
            return self.autoencoder.decode(samples.float())

    def setup(self, device: torch.device) -> None:
        self.encoder.to(device)
        if self.autoencoder is not None:
            self.autoencoder.to(device)
        if self.config.data.cache_conditions and self._cache is None:
            from unclip.train.cond_cache import ConditionCache

            path = self.run_dir / ConditionCache.FILE if self.run_dir is not None else None
            self._cache = ConditionCache.load(path, self._cache_fingerprint()) if path is not None else None
            self._cache_to_save = self._cache is None
            if self._cache is None:
                compute = lambda full, captions: (self.conditions(full, captions), self.decoder_images(full))  # noqa: E731
                self._cache = ConditionCache(super().build_dataset("train"), compute, device=device)

    def started(self, run_dir: Path) -> None:
        if self._cache is not None and self._cache_to_save:  # a resume then reads it back instead of recomputing
            from unclip.train.cond_cache import ConditionCache

            self._cache.save(Path(run_dir) / ConditionCache.FILE, self._cache_fingerprint())
            self._cache_to_save = False

    def _cache_fingerprint(self) -> dict:
        """What the cached conditions depend on: the data, the frozen encoder and autoencoder, the sizes."""
        from unclip.train.cond_cache import file_stamp

        data, cfg = self.config.data, self.config
        return {"data": file_stamp(data.path), "encoder": file_stamp(data.encoder),
                "autoencoder": file_stamp(data.autoencoder), "image_size": data.image_size,
                "encoder_image_size": data.encoder_image_size, "conditioning": cfg.conditioning,
                "text_tokens": cfg.text_tokens, "count": len(super().build_dataset("train"))}

    def build_dataset(self, split: str):
        dataset = super().build_dataset(split)
        if split == "train" and self.config.data.cache_conditions:
            from unclip.train.cond_cache import IndexedDataset

            return IndexedDataset(dataset)
        return dataset

    def collate(self, samples):
        batch = super().collate(samples)
        if samples and "index" in samples[0]:
            batch["index"] = torch.tensor([s["index"] for s in samples])
        return batch

    def model_config(self) -> UNetConfig:
        cfg, enc, ae = self.config, self.encoder, self.autoencoder
        channels = ae.config.latent_channels if ae is not None else 3
        size = ae.config.latent_size if ae is not None else cfg.data.image_size
        out_channels = 2 * channels if cfg.diffusion.learn_variance else channels
        return dataclasses.replace(
            cfg.model, image_size=size, in_channels=channels, out_channels=out_channels,
            image_embed_dim=enc.embed_dim if cfg.conditioning == "unclip" else 0,
            text_token_dim=enc.token_dim if cfg.text_tokens else 0,
            text_embed_dim=enc.embed_dim if cfg.conditioning == "text" else 0)

    # --- what to train -----------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        return UNet(self.model_config())


    @torch.no_grad()
    def conditions(self, images: torch.Tensor, captions: list[str]) -> dict[str, torch.Tensor]:
        """Frozen-encoder features: image_embed [B, D]; text_tokens [B, L, Dt], text_mask, text_embed [B, D]."""
        cfg, enc = self.config, self.encoder
        out: dict[str, torch.Tensor] = {}
        if cfg.conditioning == "unclip":
            out["image_embed"] = enc.encode_image(images).float()
        if cfg.text_tokens:
            empty = torch.tensor([not c.strip() for c in captions], device=images.device)
            text = enc.encode_text([c if c.strip() else "an image" for c in captions])
            out.update(text_tokens=text.tokens.float(), text_mask=text.mask, empty_caption=empty)
            if cfg.conditioning == "text":
                out["text_embed"] = text.embed.float()
        return out

    def loss(self, model, batch, generator):
        param = next(model.parameters())
        if self._cache is not None and "index" in batch:
            cond, images = self._cache.batch(batch["index"], param.device)
        else:
            full = batch["image"].to(param.device, param.dtype)
            cond = self.conditions(full, list(batch["caption"]))
            images = self.decoder_images(full)
        empty = cond.pop("empty_caption", None)
        drop_image, drop_text = cfg_drop_masks(images.shape[0], self.config.drop_image, self.config.drop_text,
                                               generator=generator, device=images.device)
        if empty is not None:
            drop_text = drop_text | empty  # language-free images: always the null caption
        kwargs = dict(cond, drop_image=drop_image, drop_text=drop_text)
        t = self.diffusion.sample_timesteps(images.shape[0], generator, images.device)
        terms = self.diffusion.training_losses(model, images, t, model_kwargs=kwargs, generator=generator)
        loss = terms["loss"].mean()
        return loss, {k: float(v.detach().mean()) for k, v in terms.items() if k != "loss"}

    # --- evaluation and export ------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model, out_dir: Path, step: int) -> dict[str, float]:
        """Grid: real val images (top row) and decodings of their CLIP embeddings (bottom row).

        Returns ``clip_sim``: mean cosine between CLIP image embeddings of the samples and the originals.
        """
        from unclip.pipelines.images import image_grid, save_png, to_pil

        s = self.config.sample
        dataset = self.build_dataset("val")
        n = min(s.num_images, len(dataset))
        metrics = self._variation_recognisability(model, step) if s.recognisability_items else {}
        if n == 0:
            return metrics
        samples = [dataset[i] for i in range(n)]
        full = torch.stack([x["image"] for x in samples])
        out, images, cond = self._decode_own_embeddings(model, full, [x["caption"] for x in samples], step)
        out_dir = Path(out_dir)
        save_png(image_grid(to_pil(images) + to_pil(out), columns=n), out_dir / f"decoder_samples_{step:06d}.png")
        full = full.to(out.device, out.dtype)
        real = cond["image_embed"] if "image_embed" in cond else self.encoder.encode_image(full).float()
        fake = self.encoder.encode_image(out).float()
        return {**metrics, "clip_sim": float(torch.nn.functional.cosine_similarity(real, fake).mean())}

    @torch.no_grad()
    def _variation_recognisability(self, model, step: int) -> dict[str, float]:
        """Lite1 recognisability of decodings of ``sample.recognisability_items`` fixed training images."""
        from unclip.eval.recognisability import load_recogniser, recognition_rates

        dataset = super().build_dataset("train")
        count = min(self.config.sample.recognisability_items, len(dataset))
        picks = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:count].tolist()
        rows, outs = [dataset[i] for i in picks], []
        for start in range(0, count, 32):
            chunk = rows[start:start + 32]
            full = torch.stack([x["image"] for x in chunk])
            outs.append(self._decode_own_embeddings(model, full, [x["caption"] for x in chunk], step + start)[0].cpu())
        if not outs:
            return {}
        references = torch.stack([x["image"] for x in rows])
        rates = recognition_rates(load_recogniser(), torch.cat(outs).float(), references,
                                  [x["caption"] for x in rows])
        return {"variation_recognised": rates["recognised"], "variation_chance": rates["chance"]}

    def _decode_own_embeddings(self, model, full: torch.Tensor, captions: list[str], seed: int):
        """Decode images [B,3,H,W] from their own CLIP embedding → (samples, targets, conditions), in pixels."""
        from unclip.pipelines.sampling import sample_decoder

        s = self.config.sample
        param = next(model.parameters())
        full = full.to(param.device, param.dtype)
        cond = self.conditions(full, captions)
        images = self.decoder_images(full)
        text = None
        if "text_tokens" in cond:
            text = _Text(cond.get("text_embed"), cond["text_tokens"], cond["text_mask"])
        generator = torch.Generator(param.device).manual_seed(seed)
        x_T = torch.randn(images.shape, generator=generator, device=param.device, dtype=param.dtype)
        out = sample_decoder(model, self.diffusion, x_T, image_embed=cond.get("image_embed"), text=text,
                             guidance_scale=s.guidance_scale, sampler=s.sampler, steps=s.steps, generator=generator,
                             spacing=s.spacing, clip_denoised=self.autoencoder is None)
        return self.to_pixels(out), self.to_pixels(images), cond

    def export(self, model, out_dir: Path) -> Path:
        cfg = self.config
        return save_component(Path(out_dir) / "decoder", model, role="decoder", diffusion=cfg.diffusion,
                              sample_defaults=cfg.sample, autoencoder=self.autoencoder,
                              extra={"conditioning": cfg.conditioning, "image_size": cfg.data.image_size,
                                     "encoder": str(cfg.data.encoder)})


@dataclass
class _Text:
    embed: torch.Tensor | None
    tokens: torch.Tensor
    mask: torch.Tensor
