"""Training stage ``upsampler``: a diffusion super-resolution model (unCLIP §2.2 and Appendix C).

The UNet (no attention) sees the noisy high-res image concatenated with the upsampled low-res image.
The low-res conditioning image is made by anti-aliased downsampling and then corrupted
(*conditioning augmentation*): Gaussian blur (the paper's 64→256 model) or a lighter BSR degradation
(the paper's 256→1024 model), optionally plus Gaussian noise at a sampled level that the UNet is told
(Ho et al. 2021, Cascaded Diffusion §4.1). Like the paper, the upsampler is not conditioned on the caption.

``data.crop_size`` trains on random crops of the high-res images (paper §2.2 / App. C: the upsamplers are
trained on crops of a quarter of the target size and applied at full size, which the attention-free,
fully convolutional UNet allows): a crop_size × crop_size window of each image, aligned to the low-res
pixel grid, with its low-res version made from the crop.
Export: ``final/upsampler/model.safetensors``, one self-describing component file (``unclip.components``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from unclip.components import save_component
from unclip.diffusion.gaussian import GaussianDiffusion
from unclip.diffusion.schedule import DiffusionConfig
from unclip.models.degrade import DegradeConfig, degrade, make_low_res, noise_augment
from unclip.models.unet import UNet, UNetConfig
from unclip.train.config import TrainConfig
from unclip.train.stage import ImageStage
from unclip.train.stages.decoder import SampleSettings

__all__ = ["UpsamplerData", "UpsamplerStageConfig", "UpsamplerStage"]


@dataclass(frozen=True)
class UpsamplerData:
    path: str = "data/shapes"
    image_size: int = 64        # output resolution
    low_res_size: int = 32      # input resolution
    val_split: str = "val"
    crop_size: int = 0          # train on random crop_size² windows of the high-res image (0: whole image)

    def __post_init__(self):
        if not 1 <= self.low_res_size < self.image_size:
            raise ValueError("low_res_size must be >= 1 and smaller than image_size")
        if self.image_size % self.low_res_size:
            raise ValueError("image_size must be a multiple of low_res_size")
        factor = self.image_size // self.low_res_size
        if self.crop_size and (not factor <= self.crop_size <= self.image_size or self.crop_size % factor):
            raise ValueError(f"data.crop_size must be 0 or a multiple of {factor} (image_size / low_res_size) "
                             f"no larger than image_size")


@dataclass(frozen=True)
class UpsamplerStageConfig:
    data: UpsamplerData = field(default_factory=UpsamplerData)
    model: UNetConfig = field(default_factory=lambda: UNetConfig(attention_resolutions=()))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference_noise_level: int = 0   # augmentation level the pipeline passes at sampling time
    # at sampling, replace the output's low frequencies by the input's (unclip.pipelines.sampling.anchor_to_low_res)
    anchor_low_res: bool = False
    sample: SampleSettings = field(default_factory=SampleSettings)

    def __post_init__(self):
        if self.degrade.noise_levels and not 0 <= self.inference_noise_level < self.degrade.noise_levels:
            raise ValueError("inference_noise_level must be in [0, degrade.noise_levels)")


class UpsamplerStage(ImageStage):
    name = "upsampler"
    config_class = UpsamplerStageConfig

    def __init__(self, config: UpsamplerStageConfig):
        super().__init__(config)
        self.diffusion = GaussianDiffusion(config.diffusion)

    def model_config(self) -> UNetConfig:
        cfg = self.config
        return dataclasses.replace(
            cfg.model, image_size=cfg.data.image_size, low_res_channels=3,
            out_channels=6 if cfg.diffusion.learn_variance else 3,
            noise_level_cond=cfg.degrade.noise_levels > 0, image_embed_dim=0, text_token_dim=0, text_embed_dim=0)

    def build_model(self) -> torch.nn.Module:
        return UNet(self.model_config())


    def conditioning(self, images: torch.Tensor, generator: torch.Generator | None):
        """High-res [B, 3, H, W] → (corrupted low-res [B, 3, h, w], noise level [B] or None)."""
        cfg = self.config
        low = degrade(make_low_res(images, self.low_res_size(images)), cfg.degrade, generator)
        if not cfg.degrade.noise_levels:
            return low, None
        level = torch.randint(0, cfg.degrade.noise_levels, (images.shape[0],), generator=generator,
                              device=images.device)
        return noise_augment(low, level, cfg.degrade, generator), level

    def random_crops(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """[B, 3, H, W] → one random crop_size² window per image, on the low-res grid (identity if no crop)."""
        data = self.config.data
        if not data.crop_size or data.crop_size == images.shape[-1]:
            return images
        factor = data.image_size // data.low_res_size
        positions = (images.shape[-1] - data.crop_size) // factor + 1
        corners = torch.randint(0, positions, (images.shape[0], 2), generator=generator,
                                device=generator.device if generator is not None else "cpu") * factor
        return torch.stack([img[:, y:y + data.crop_size, x:x + data.crop_size]
                            for img, (y, x) in zip(images, corners.tolist())])

    def low_res_size(self, images: torch.Tensor) -> int:
        """The low-res side for a batch of high-res images (crops keep the image's scale factor)."""
        data = self.config.data
        return images.shape[-1] * data.low_res_size // data.image_size

    def loss(self, model, batch, generator):
        param = next(model.parameters())
        images = self.random_crops(batch["image"].to(param.device, param.dtype), generator)
        low, level = self.conditioning(images, generator)
        kwargs = {"low_res": low} if level is None else {"low_res": low, "noise_level": level}
        t = self.diffusion.sample_timesteps(images.shape[0], generator, images.device)
        terms = self.diffusion.training_losses(model, images, t, model_kwargs=kwargs, generator=generator)
        return terms["loss"].mean(), {k: float(v.detach().mean()) for k, v in terms.items() if k != "loss"}

    @torch.no_grad()
    def evaluate(self, model, out_dir: Path, step: int) -> dict[str, float]:
        """Grid rows: clean low-res input (nearest-upscaled), upsampled output, real high-res. Returns PSNR (dB)."""
        from unclip.pipelines.images import image_grid, save_png, to_pil
        from unclip.pipelines.sampling import sample_upsampler

        s = self.config.sample
        dataset = self.build_dataset("val")
        n = min(s.num_images, len(dataset))
        if n == 0:
            return {}
        param = next(model.parameters())
        images = torch.stack([dataset[i]["image"] for i in range(n)]).to(param.device, param.dtype)
        low = make_low_res(images, self.config.data.low_res_size)
        generator = torch.Generator(param.device).manual_seed(step)
        x_T = torch.randn(images.shape, generator=generator, device=param.device, dtype=param.dtype)
        out = sample_upsampler(model, self.diffusion, low, x_T, noise_level=self.config.inference_noise_level,
                               sampler=s.sampler, steps=s.steps, generator=generator, spacing=s.spacing,
                               anchor_low_res=self.config.anchor_low_res)
        shown = torch.nn.functional.interpolate(low, size=images.shape[-2:], mode="nearest")
        save_png(image_grid(to_pil(shown) + to_pil(out) + to_pil(images), columns=n),
                 Path(out_dir) / f"upsampler_samples_{step:06d}.png")
        mse = ((out - images) / 2).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
        return {"psnr": float((-10 * torch.log10(mse)).mean())}

    def export(self, model, out_dir: Path) -> Path:
        cfg = self.config
        extra = {"image_size": cfg.data.image_size, "low_res_size": cfg.data.low_res_size,
                 "noise_level": cfg.inference_noise_level, "crop_size": cfg.data.crop_size,
                 "anchor_low_res": cfg.anchor_low_res}
        return save_component(Path(out_dir) / "upsampler", model, role="upsampler", diffusion=cfg.diffusion,
                              sample_defaults=cfg.sample, extra=extra)
