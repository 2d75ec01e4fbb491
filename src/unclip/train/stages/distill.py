"""Training stage ``distill``: progressive distillation of a trained decoder into a few-step DDIM sampler.

Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models" (arXiv 2202.00512),
Algorithm 2. The student starts as a copy of the teacher (an exported decoder component). In a round
with N student steps, each training example draws x from the data, a point t of the student's N-step
grid and z_t ~ q(z_t | x); two deterministic DDIM steps of the teacher, t → t' → t'' (§3, the 2N grid),
give z_{t''}, and the target x̃ is the x-prediction that takes z_t to z_{t''} in ONE DDIM step (Alg. 2):

    x̃ = (z_{t''} - (σ_{t''}/σ_t) z_t) / (α_{t''} - (σ_{t''}/σ_t) α_t),   α² = alpha_bar, σ² = 1 - alpha_bar

The loss is the truncated-SNR weighted error max(SNR_t, 1) ||x̃ - x̂||² (§4, "truncated SNR weighting").
After each round the teacher becomes a frozen copy of the student and N halves, so ``rounds`` rounds
starting at ``student_steps`` end with a decoder for ``student_steps / 2^(rounds-1)`` DDIM steps.

Grids: the student's N-step grid is exactly ``sampling_timesteps(T, N)`` (what the ``ddim`` sampler
visits, ``trailing`` spacing, then alpha_bar = 1 after the last point), and the teacher's midpoints come
from ``sampling_timesteps(T, 2N)``; the 2N grid must contain the N grid at its even positions, which
``nested_grids`` checks. Trailing spacing nests for every power-of-two N on T = 1000 but not for every
N (rounding of T/N: N = 48 fails), hence the check.

Classifier-free guidance, two ways:

* ``distill.guidance_scale = 0`` (default): teacher and student get the same (possibly dropped, rates
  ``drop_image`` / ``drop_text``) conditioning, so both the conditional and the unconditional branch are
  distilled and the guidance scale stays adjustable at sampling (two UNet calls per step).
* ``distill.guidance_scale = w``: round 1's teacher is the *guided* teacher, out_u + w (out_c - out_u)
  (Ho & Salimans 2022, eq. 6), so the student learns the guided DDIM trajectory itself and samples at
  guidance 1: one UNet call per step. This is Meng et al. 2023 ("On Distillation of Guided Diffusion
  Models", arXiv 2210.03142, §3.1-3.2) with w fixed instead of a w input, which keeps the UNet unchanged.
  Later rounds distil the (already guided) student unguided, as their stage two does.

The stage reuses the decoder stage's data, frozen encoder and conditioning (``DecoderStage``), and its
export is a normal decoder component with ``distilled`` and ``sample.steps = N_final`` in its component settings.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from unclip.checkpoint import load_model, read_metadata
from unclip.config import from_dict
from unclip.diffusion.gaussian import GaussianDiffusion, expand, output_to_x0_eps
from unclip.diffusion.guidance import classifier_free_guidance
from unclip.diffusion.samplers import ddim_step, predict
from unclip.diffusion.schedule import SPACINGS, DiffusionConfig, sampling_timesteps
from unclip.errors import UnclipError
from unclip.models.unet import UNet, UNetConfig, cfg_drop_masks
from unclip.train.config import TrainConfig
from unclip.train.stage import Stage
from unclip.components import COMPONENT_FILE, read_component_info, save_component
from unclip.train.stages.decoder import DecoderData, DecoderStage, DecoderStageConfig, SampleSettings

__all__ = ["DistillData", "DistillSettings", "DistillStageConfig", "DistillStage", "DistillPair",
           "nested_grids", "teacher_ddim_target", "find_teacher"]


@dataclass(frozen=True)
class DistillData:
    path: str = "data/shapes"    # the teacher's training data (a built dataset dir, folder or shards)
    encoder: str = ""            # frozen encoder dir; empty: the one recorded in the teacher's component settings
    val_split: str = "val"
    encoder_image_size: int = 0  # as the decoder stage's data.encoder_image_size (use the teacher's setting)


@dataclass(frozen=True)
class DistillSettings:
    teacher: str = ""            # exported decoder: component dir (model.safetensors) or run dir
    student_steps: int = 32      # N of the first round; its teacher takes 2N DDIM steps
    rounds: int = 3              # N, N/2, ..., N/2^(rounds-1) = the distilled decoder's steps
    steps_per_round: int = 500   # optimiser steps per round; train.steps must be rounds * steps_per_round
    clip_denoised: bool = True   # clip the teacher's x0 to [-1, 1] as the pipeline's sampler does
    guidance_scale: float = 0.0  # 0: distil both CFG branches; w >= 1: distil the teacher guided at w (Meng et al.)
    spacing: str = "trailing"    # timestep grid of teacher and student (must nest under halving; see nested_grids)

    def __post_init__(self):
        if self.spacing not in SPACINGS:
            raise ValueError(f"distill.spacing={self.spacing!r}: choose from {', '.join(SPACINGS)}")
        if self.student_steps < 1 or self.rounds < 1 or self.steps_per_round < 1:
            raise ValueError("distill.student_steps, distill.rounds and distill.steps_per_round must be >= 1")
        if self.guidance_scale != 0 and not 1 <= self.guidance_scale <= 30:
            raise ValueError(f"distill.guidance_scale={self.guidance_scale}: use 0 (distil both guidance branches) "
                             "or a guidance scale in [1, 30] to distil the guided teacher")
        if self.student_steps % 2 ** (self.rounds - 1):
            raise ValueError(f"student_steps={self.student_steps} cannot be halved {self.rounds - 1} times; "
                             f"use a multiple of {2 ** (self.rounds - 1)} or fewer rounds")

    @property
    def final_steps(self) -> int:
        return self.student_steps // 2 ** (self.rounds - 1)


@dataclass(frozen=True)
class DistillStageConfig:
    data: DistillData = field(default_factory=DistillData)
    distill: DistillSettings = field(default_factory=DistillSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    drop_image: float = 0.1      # CFG dropout, as the decoder stage (unCLIP §2.2)
    drop_text: float = 0.5

    def __post_init__(self):
        for name in ("drop_image", "drop_text"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        total = self.distill.rounds * self.distill.steps_per_round
        if self.train.steps != total:
            raise ValueError(f"train.steps={self.train.steps} must equal distill.rounds x distill.steps_per_round "
                             f"= {total}; set train.steps={total}")


def find_teacher(path: str | Path) -> Path:
    """The decoder component folder in ``path`` (itself, ``decoder/`` or ``final/decoder/``)."""
    if not str(path):
        raise UnclipError("distillation needs a teacher: set distill.teacher=PATH (an exported decoder, "
                          "e.g. runs/decoder-shapes32/final/decoder)")
    path = Path(path)
    for candidate in (path, path / "decoder", path / "final" / "decoder"):
        if (candidate / COMPONENT_FILE).is_file():
            return candidate
    raise UnclipError(f"no exported decoder at distill.teacher={path} (need model.safetensors in it, decoder/ or "
                      "final/decoder/); train one with 'unclip train decoder'")


def nested_grids(num_timesteps: int, steps: int, spacing: str = "trailing") -> tuple[list[int], list[int]]:
    """(student grid, teacher grid): the descending timesteps ``ddim`` visits with ``steps`` and 2 * ``steps``.

    Raises ``UnclipError`` unless the teacher grid holds the student grid at its even positions, so
    that two teacher steps from a student point land exactly on the next student point.
    """
    if 2 * steps > num_timesteps:
        raise UnclipError(f"distill.student_steps={steps} needs a teacher with 2x as many steps but the "
                          f"schedule has only {num_timesteps} timesteps; lower distill.student_steps")
    student = sampling_timesteps(num_timesteps, steps, spacing)
    teacher = sampling_timesteps(num_timesteps, 2 * steps, spacing)
    if teacher[0::2] != student:
        raise UnclipError(f"the {2 * steps}-step DDIM grid ({spacing} spacing) does not contain the {steps}-step "
                          f"grid on {num_timesteps} timesteps; use power-of-two distill.student_steps "
                          "(quadratic spacing: at most 32)")
    return student, teacher


def _ddim_step(model_fn, diffusion: GaussianDiffusion, z: torch.Tensor, t: torch.Tensor, a_t: torch.Tensor,
               a_next: torch.Tensor, model_kwargs: dict, clip_denoised: bool) -> torch.Tensor:
    """One deterministic DDIM step (the sampler's own ``predict`` + ``ddim_step``) with per-sample t [B]."""
    pred = predict(model_fn, diffusion, z, t, model_kwargs=model_kwargs, clip_denoised=clip_denoised)
    return ddim_step(pred, a_t, a_next)


@torch.no_grad()
def teacher_ddim_target(teacher_fn, diffusion: GaussianDiffusion, z_t: torch.Tensor, index: torch.Tensor,
                        student_grid: list[int], teacher_grid: list[int], *, model_kwargs: dict | None = None,
                        clip_denoised: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Alg. 2's target x̃ [B, C, H, W] and z_{t''} for samples z_t at student-grid positions ``index`` [B].

    Two teacher DDIM steps t = teacher_grid[2i] → t' = teacher_grid[2i+1] → t'' = student_grid[i+1]
    (alpha_bar = 1 after the last point), then x̃ solves z_{t''} = α'' x̃ + σ'' (z_t - α_t x̃) / σ_t.
    """
    kwargs = model_kwargs or {}
    acp = torch.cat([diffusion.alphas_cumprod, torch.ones(1, dtype=torch.float64)])   # [T + 1]; T = clean
    clean = diffusion.num_timesteps
    idx = index.detach().cpu().long()
    t = torch.tensor(teacher_grid)[2 * idx]
    t_mid = torch.tensor(teacher_grid)[2 * idx + 1]
    t_next = torch.tensor(student_grid + [clean])[idx + 1]
    a_t, a_mid, a_next = (expand(acp[s], z_t) for s in (t, t_mid, t_next))
    device = z_t.device
    z_mid = _ddim_step(teacher_fn, diffusion, z_t, t.to(device), a_t, a_mid, kwargs, clip_denoised)
    z_next = _ddim_step(teacher_fn, diffusion, z_mid, t_mid.to(device), a_mid, a_next, kwargs, clip_denoised)
    ratio = ((1 - a_next) / (1 - a_t)).sqrt()                                         # σ'' / σ_t
    x_target = (z_next - ratio * z_t) / (a_next.sqrt() - ratio * a_t.sqrt())
    return x_target, z_next


class DistillPair(torch.nn.Module):
    """What the engine trains: ``student`` (trainable UNet) and ``teacher`` (frozen UNet).

    Both, and the distillation position (``micro_steps`` = loss calls so far, ``round``), are in the
    state dict, so checkpoints resume mid-round with the right teacher. Only ``student`` is exported.
    """

    def __init__(self, student: UNet, teacher: UNet):
        super().__init__()
        self.student = student
        self.teacher = teacher.requires_grad_(False)
        self.register_buffer("micro_steps", torch.zeros(1, dtype=torch.long))
        self.register_buffer("round", torch.zeros(1, dtype=torch.long))

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x, t, **kwargs):
        return self.student(x, t, **kwargs)


class DistillStage(Stage):
    name = "distill"
    config_class = DistillStageConfig

    def __init__(self, config: DistillStageConfig):
        super().__init__(config)
        self.teacher_dir = find_teacher(config.distill.teacher)
        self.teacher_info = read_component_info(self.teacher_dir)
        if self.teacher_info.get("role", "decoder") != "decoder":
            raise UnclipError(f"{self.teacher_dir} is a {self.teacher_info['role']}, not a decoder; "
                              "set distill.teacher to a decoder component")
        self.diffusion = GaussianDiffusion(from_dict(DiffusionConfig, self.teacher_info.get("diffusion", {})))
        for r in range(config.distill.rounds):  # fail before training, not at round r
            nested_grids(self.diffusion.num_timesteps, config.distill.student_steps // 2 ** r, config.distill.spacing)
        self._decoder: DecoderStage | None = None

    @property
    def decoder(self) -> DecoderStage:
        """The teacher's decoder stage (data, frozen encoder, conditioning), built from its component settings."""
        if self._decoder is None:
            cfg, info = self.config, self.teacher_info
            meta = read_metadata(self.teacher_dir / "model.safetensors")
            teacher_config = from_dict(UNetConfig, json.loads(meta["config"]))
            data = DecoderData(path=cfg.data.path, encoder=cfg.data.encoder or str(info.get("encoder", "")),
                               image_size=int(info.get("image_size", teacher_config.image_size)),
                               val_split=cfg.data.val_split, encoder_image_size=cfg.data.encoder_image_size)
            sample = from_dict(SampleSettings, info.get("sample", {}))
            self._decoder = DecoderStage(DecoderStageConfig(
                data=data, model=teacher_config, diffusion=self.diffusion.config, train=cfg.train,
                conditioning=info.get("conditioning", "unclip"), text_tokens=teacher_config.text_token_dim > 0,
                drop_image=cfg.drop_image, drop_text=cfg.drop_text,
                sample=dataclasses.replace(sample, sampler="ddim", steps=cfg.distill.student_steps,
                                           spacing=cfg.distill.spacing)))
        return self._decoder

    def _load_teacher(self) -> UNet:
        return load_model(self.teacher_dir / "model.safetensors", expected=UNet, dtype=torch.float32)

    # --- what to train ----------------------------------------------------------
    def setup(self, device: torch.device) -> None:
        self.decoder.setup(device)

    def build_model(self) -> torch.nn.Module:
        teacher = self._load_teacher()
        return DistillPair(student=copy.deepcopy(teacher).train().requires_grad_(True), teacher=teacher)

    def build_dataset(self, split: str):
        return self.decoder.build_dataset(split)

    def collate(self, samples):
        return self.decoder.collate(samples)

    def round_steps(self, pair: DistillPair) -> int:
        """Student steps N of the round ``pair`` last trained (or is in)."""
        return self.config.distill.student_steps // 2 ** int(pair.round)

    def _advance(self, pair: DistillPair) -> int:
        """Count this loss call; at a round boundary the teacher becomes the student. Returns N."""
        d = self.config.distill
        per_round = d.steps_per_round * self.config.train.grad_accum
        current = min(int(pair.micro_steps) // per_round, d.rounds - 1)
        if current != int(pair.round):
            with torch.no_grad():
                pair.teacher.load_state_dict(pair.student.state_dict())
            pair.round.fill_(current)
        pair.micro_steps += 1
        return self.round_steps(pair)

    def loss(self, model: DistillPair, batch, generator):
        return self.distill_loss(model, batch, generator, self._advance(model))

    def distill_loss(self, model: DistillPair, batch, generator, steps: int):
        """Alg. 2 loss of ``model.student`` against ``model.teacher`` for an N = ``steps`` student."""
        student_grid, teacher_grid = nested_grids(self.diffusion.num_timesteps, steps, self.config.distill.spacing)
        param = next(model.student.parameters())
        full = batch["image"].to(param.device, param.dtype)
        cond = self.decoder.conditions(full, list(batch["caption"]))
        images = self.decoder.decoder_images(full)                                 # x: [B, 3, H, W]
        empty = cond.pop("empty_caption", None)
        drop_image, drop_text = cfg_drop_masks(images.shape[0], self.config.drop_image, self.config.drop_text,
                                               generator=generator, device=images.device)
        if empty is not None:
            drop_text = drop_text | empty
        kwargs = dict(cond, drop_image=drop_image, drop_text=drop_text)           # same for teacher and student
        index = torch.randint(0, steps, (images.shape[0],), generator=generator, device=images.device)
        t = torch.tensor(student_grid, device=images.device)[index]
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        z_t = self.diffusion.q_sample(images, t, noise)
        x_target, _ = teacher_ddim_target(self._teacher_fn(model, drop_image), self.diffusion, z_t, index,
                                          student_grid, teacher_grid, model_kwargs=kwargs,
                                          clip_denoised=self.config.distill.clip_denoised)
        mean_out, _ = self.diffusion.split_output(model.student(z_t, t, **kwargs))
        a_t = self.diffusion.alpha_bar(t, z_t)
        x_pred, _ = output_to_x0_eps(self.diffusion.config.prediction, mean_out, z_t, a_t)
        weight = torch.clamp(a_t / (1 - a_t), min=1.0)                            # max(SNR, 1)
        error = (x_pred - x_target.to(x_pred.dtype)) ** 2
        loss = (weight * error).mean()
        return loss, {"steps": float(steps), "x_mse": float(error.detach().mean())}

    def _teacher_fn(self, model: DistillPair, drop_image: torch.Tensor):
        """Round 1 with ``distill.guidance_scale = w``: the teacher guided at w, its unconditional branch
        built as the pipeline builds it (CLIP embedding and caption both dropped); otherwise the teacher."""
        scale = self.config.distill.guidance_scale
        if not scale or int(model.round) > 0:
            return model.teacher
        ones = torch.ones_like(drop_image)
        return classifier_free_guidance(model.teacher, scale, {"drop_image": ones, "drop_text": ones},
                                        learn_variance=self.diffusion.config.learn_variance)

    # --- evaluation and export ------------------------------------------------------
    def evaluate(self, model: DistillPair, out_dir: Path, step: int) -> dict[str, float]:
        """The decoder stage's grid and ``clip_sim`` with the student at the current round's N steps.

        With ``train.eval_every = distill.steps_per_round`` this runs at the end of every round; it also
        writes that round's student to ``out_dir/decoder`` (a decoder component for N steps), so every
        N of the run can be assembled and evaluated, not only the last.
        """
        steps = self.round_steps(model)
        inner = copy.copy(self.decoder)
        sample = dataclasses.replace(inner.config.sample, steps=steps)
        if self.config.distill.guidance_scale:  # the student is guided already
            sample = dataclasses.replace(sample, guidance_scale=1.0)
        inner.config = dataclasses.replace(inner.config, sample=sample)
        metrics = inner.evaluate(model.student, out_dir, step)
        _save_student(Path(out_dir) / "decoder", model.student, self._component_info(int(model.round) + 1))
        return {**metrics, "steps": float(steps)}

    def _component_info(self, rounds_done: int) -> dict:
        d = self.config.distill
        steps = d.student_steps // 2 ** (rounds_done - 1)
        info = dict(self.teacher_info)
        info["sample"] = {**info.get("sample", {}), "sampler": "ddim", "steps": steps, "spacing": d.spacing}
        info["distilled"] = {"steps": steps, "rounds": rounds_done, "teacher": str(d.teacher), "spacing": d.spacing,
                             "student_steps": d.student_steps, "steps_per_round": d.steps_per_round,
                             "method": "progressive distillation, Salimans & Ho 2022 (arXiv 2202.00512), Alg. 2"}
        if d.guidance_scale:  # guidance is inside the student: sample it unguided (one UNet call per step)
            info["sample"]["guidance_scale"] = 1.0
            info["distilled"].update(guidance_scale=d.guidance_scale,
                                     guidance="guided teacher, Meng et al. 2023 (arXiv 2210.03142), w fixed")
        return info

    def export(self, model: DistillPair, out_dir: Path) -> Path:
        """``out_dir/decoder``: the distilled student as a normal decoder component for N_final DDIM steps."""
        info = self._component_info(self.config.distill.rounds)
        return _save_student(Path(out_dir) / "decoder", model.student, info)


def _save_student(directory: Path, student, info: dict) -> Path:
    """The student as a decoder component with the teacher's settings (``info``) and its own sampling."""
    extra = {k: v for k, v in info.items() if k not in ("role", "diffusion", "sample")}
    return save_component(directory, student, role="decoder", diffusion=info.get("diffusion", {}),
                          sample_defaults=info.get("sample"), extra=extra)
