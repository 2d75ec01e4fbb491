"""Progressive distillation (stage ``distill``): target algebra, grids, a tiny engine run, export, resume, errors."""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

from helpers.pipeline import _wake, circle_data
from unclip.config import from_dict
from unclip.diffusion.gaussian import GaussianDiffusion, output_to_x0_eps
from unclip.diffusion.samplers import ddim_sample
from unclip.diffusion.schedule import DiffusionConfig, sampling_timesteps
from unclip.errors import ConfigError, UnclipError
from unclip.train.stages import get_stage_class
from unclip.train.stages.decoder import DecoderStage, DecoderStageConfig
from unclip.train.stages.distill import DistillStage, DistillStageConfig, nested_grids, teacher_ddim_target
from unclip.components import read_component_info



pytestmark = pytest.mark.usefixtures("one_thread")


def _fake_teacher(x, t, **kwargs):
    """Any smooth function of (x, t) stands in for a network (house rule 2: the maths never looks inside)."""
    scale = (t.float() / 100).reshape(-1, 1, 1, 1).to(x.dtype)
    return torch.tanh(0.7 * x + scale) - 0.3 * x.roll(1, dims=-1) * scale


def _output_from_x0(prediction, x0, z, alpha_bar):
    """Inverse of ``output_to_x0_eps``: the raw output a network needs to predict ``x0`` at z."""
    eps = (z - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
    return {"eps": eps, "x0": x0, "v": alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0}[prediction]


@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
@pytest.mark.parametrize("clip", [False, True])
def test_target_in_one_student_step_reproduces_two_teacher_steps(prediction, clip):
    diffusion = GaussianDiffusion(DiffusionConfig(timesteps=100, prediction=prediction))
    steps = 4
    student_grid, teacher_grid = nested_grids(100, steps)
    z_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def student(z, t, **kwargs):  # a perfect student: predicts Alg. 2's target x̃ at its own input
        index = torch.tensor([student_grid.index(int(s)) for s in t])
        x_target, _ = teacher_ddim_target(_fake_teacher, diffusion, z, index, student_grid, teacher_grid,
                                          clip_denoised=clip)
        return _output_from_x0(prediction, x_target, z, diffusion.alpha_bar(t, z))

    # The library's own DDIM sampler: the perfect N-step student lands where the 2N-step teacher does.
    teacher_out = ddim_sample(_fake_teacher, z_T, diffusion, steps=2 * steps, clip_denoised=clip)
    student_out = ddim_sample(student, z_T, diffusion, steps=steps, clip_denoised=False)
    assert torch.allclose(student_out, teacher_out, atol=1e-9, rtol=0)
    # and step by step: plugging x̃ into one DDIM step from z_t gives the teacher's z_{t''}
    index = torch.tensor([1, 2])
    z_t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_target, z_next = teacher_ddim_target(_fake_teacher, diffusion, z_t, index, student_grid, teacher_grid,
                                           clip_denoised=clip)
    t = torch.tensor(student_grid)[index]
    a_t, a_next = diffusion.alpha_bar(t, z_t), diffusion.alpha_bar(torch.tensor(student_grid)[index + 1], z_t)
    _, eps = output_to_x0_eps("x0", x_target, z_t, a_t)
    assert torch.allclose(a_next.sqrt() * x_target + (1 - a_next).sqrt() * eps, z_next, atol=1e-10, rtol=0)
    assert not torch.allclose(x_target, output_to_x0_eps(prediction, _fake_teacher(z_t, t), z_t, a_t)[0])


def test_grids_are_the_ddim_sampler_grids_and_nest():
    for steps in (1, 2, 4, 8, 16, 32, 64, 128):
        student, teacher = nested_grids(1000, steps)
        assert student == sampling_timesteps(1000, steps) and teacher == sampling_timesteps(1000, 2 * steps)
        assert teacher[0::2] == student and len(set(teacher)) == 2 * steps
    assert nested_grids(1000, 4)[0] == [999, 749, 499, 249]
    with pytest.raises(UnclipError, match="does not contain"):
        nested_grids(1000, 48)  # trailing spacing rounds 1000/96 differently: not nested
    with pytest.raises(UnclipError, match="lower distill.student_steps"):
        nested_grids(100, 64)
    student, teacher = nested_grids(1000, 8, "quadratic")
    assert student == sampling_timesteps(1000, 8, "quadratic") and teacher[0::2] == student
    with pytest.raises(UnclipError, match="quadratic spacing: at most 32"):
        nested_grids(1000, 64, "quadratic")     # 128 quadratic points collide near t = 0 and are pushed apart


# --- the stage, on tiny data and a tiny (randomly initialised) teacher -------------------------------------

@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """An image folder with train/val splits and .txt captions, an encoder dir, and an exported decoder."""
    root, encoder_dir = circle_data(tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("enc") / "encoder")
    stage = DecoderStage(from_dict(DecoderStageConfig, {
        "data": {"path": str(root), "encoder": str(encoder_dir), "image_size": 16},
        "model": {"base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1,
                  "attention_resolutions": [8], "head_channels": 16, "context_dim": 16},
        "diffusion": {"timesteps": 100, "prediction": "v"}, "sample": {"steps": 10, "guidance_scale": 2.0}}))
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("teacher")
    stage.export(_wake(stage.build_model(), seed=3), out)
    return root, encoder_dir, out / "decoder"


def _config(root, teacher_dir, train=None, **distill):
    settings = {"teacher": str(teacher_dir), "student_steps": 4, "rounds": 2, "steps_per_round": 2, **distill}
    total = settings["rounds"] * settings["steps_per_round"]
    return from_dict(DistillStageConfig, {
        "data": {"path": str(root)}, "distill": settings,
        "train": {"steps": total, "batch_size": 4, "lr": 3e-4, "warmup_steps": 0, "ema_decay": 0.0,
                  "lr_schedule": "constant", "checkpoint_every": 1, "keep_checkpoints": 10, "log_every": 1,
                  "deterministic": True, **(train or {})}})


def _fixed_batch(stage):
    dataset = stage.build_dataset("train")
    return stage.collate([dataset[i] for i in range(8)])


def test_distill_run_lowers_the_loss(tmp_path, teacher):
    from unclip.checkpoint import load_model
    from unclip.train.engine import run_training

    root, _, teacher_dir = teacher
    config = _config(root, teacher_dir, rounds=1, steps_per_round=40, train={"batch_size": 8, "checkpoint_every": 40})
    stage = get_stage_class("distill")(config)
    assert isinstance(stage, DistillStage)
    pair, batch = stage.build_model(), _fixed_batch(stage)

    def mean_loss():  # Alg. 2 loss of the student against the original teacher, 4 fixed draws of t and noise
        with torch.no_grad():
            return sum(float(stage.distill_loss(pair, batch, torch.Generator().manual_seed(s), 4)[0])
                       for s in range(4)) / 4

    before = mean_loss()
    final = run_training(stage, tmp_path / "run")
    pair.student.load_state_dict(load_model(final / "decoder" / "model.safetensors").state_dict())
    assert mean_loss() < 0.9 * before


def test_distill_rounds_export_and_resume(tmp_path, teacher):
    from unclip.pipelines import assemble
    from unclip.train.engine import run_training
    from unclip.train.state import load_checkpoint

    root, encoder_dir, teacher_dir = teacher
    run = tmp_path / "run"
    final = run_training(DistillStage(_config(root, teacher_dir, train={"eval_every": 2})), run)
    first = read_component_info(run / "eval" / "step_00000002" / "decoder")
    assert first["sample"]["steps"] == 4 and first["distilled"] == {**first["distilled"], "steps": 4, "rounds": 1}
    # round 2's teacher is round 1's last student; the student is trained at N = 4 then N = 2
    ckpt = {p.name: load_checkpoint(p).model for p in sorted((run / "checkpoints").iterdir())}
    after_round_1, last = ckpt["step_00000002"], ckpt["step_00000004"]
    assert [int(c["round"]) for c in ckpt.values()] == [0, 0, 1, 1]
    for name, value in last.items():
        if name.startswith("teacher."):
            assert torch.equal(value, after_round_1["student." + name[len("teacher."):]])
    info = read_component_info(final / "decoder")
    assert info["distilled"]["steps"] == 2 and info["distilled"]["rounds"] == 2 and info["sample"]["steps"] == 2
    pipe = assemble(tmp_path / "pipe", encoder=encoder_dir, decoder=run)
    assert pipe.defaults["decoder"]["steps"] == 2 and pipe.defaults["decoder"]["sampler"] == "ddim"
    out = pipe.variations(Image.new("RGB", (16, 16), "red"), num_images=2, seed=0, progress=False)
    assert len(out.images) == 2 and pipe.resolve_settings()["decoder"]["steps"] == 2
    # resume mid-round 2 (teacher and position come from the checkpoint): same final weights
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step_00000004")
    run_training(DistillStage(_config(root, teacher_dir, train={"eval_every": 2})), resumed, resume=True)
    a = load_checkpoint(run / "checkpoints" / "step_00000004").model
    b = load_checkpoint(resumed / "checkpoints" / "step_00000004").model
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_configs_are_one_line_errors(tmp_path, teacher):
    root, _, teacher_dir = teacher
    with pytest.raises(ConfigError, match="multiple of 4") as err:
        _config(root, teacher_dir, student_steps=6, rounds=3)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="set train.steps=4"):
        from_dict(DistillStageConfig, {"distill": {"rounds": 2, "steps_per_round": 2}, "train": {"steps": 5}})
    with pytest.raises(UnclipError, match="distill.teacher=PATH") as err:
        DistillStage(_config(root, ""))
    with pytest.raises(UnclipError, match="no exported decoder") as err:
        DistillStage(_config(root, tmp_path / "nowhere"))
    assert "\n" not in str(err.value)
    with pytest.raises(UnclipError, match="power-of-two"):
        DistillStage(_config(root, teacher_dir, student_steps=48, rounds=1))


def test_guided_distillation_targets_the_guided_teacher_in_round_one(tmp_path, teacher):
    """distill.guidance_scale = w (Meng et al. 2023): round 1 distils out_u + w (out_c - out_u), later rounds
    the student as it is, and the export samples unguided (one UNet call per step)."""
    from unclip.pipelines import assemble
    from unclip.train.engine import run_training

    root, encoder_dir, teacher_dir = teacher
    guided = DistillStage(_config(root, teacher_dir, guidance_scale=3.0))
    plain = DistillStage(_config(root, teacher_dir))
    pair = guided.build_model()
    z = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([99, 70, 40, 10])
    kwargs = {"image_embed": torch.randn(4, 16, generator=torch.Generator().manual_seed(1)),
              "drop_image": torch.tensor([False, False, True, False]), "drop_text": torch.tensor([True] * 4)}
    ones = torch.ones(4, dtype=torch.bool)
    with torch.no_grad():
        out_c = pair.teacher(z, t, **kwargs)
        out_u = pair.teacher(z, t, **{**kwargs, "drop_image": ones, "drop_text": ones})
        want = out_u + 3.0 * (out_c - out_u)
        assert torch.allclose(guided._teacher_fn(pair, kwargs["drop_image"])(z, t, **kwargs), want, atol=1e-5)
        assert not torch.allclose(want, out_c, atol=1e-3)
        assert plain._teacher_fn(pair, kwargs["drop_image"]) is pair.teacher
        batch = _fixed_batch(guided)
        loss = lambda stage: float(stage.distill_loss(pair, batch, torch.Generator().manual_seed(0), 4)[0])
        assert abs(loss(guided) - loss(plain)) > 1e-6 * loss(plain)      # round 1: another target
        pair.round.fill_(1)
        assert guided._teacher_fn(pair, kwargs["drop_image"]) is pair.teacher
        assert loss(guided) == loss(plain)                                # round 2: the student's own trajectory
    final = run_training(guided, tmp_path / "run")
    info = read_component_info(final / "decoder")
    assert info["sample"]["guidance_scale"] == 1.0 and info["distilled"]["guidance_scale"] == 3.0
    pipe = assemble(tmp_path / "pipe", encoder=encoder_dir, decoder=tmp_path / "run")
    assert pipe.defaults["decoder"]["guidance_scale"] == 1.0 and pipe.defaults["decoder"]["steps"] == 2
    with pytest.raises(ConfigError, match="guidance_scale=0.5"):
        _config(root, teacher_dir, guidance_scale=0.5)


def test_quadratic_spacing_distils_on_its_grid_and_becomes_the_pipeline_default(tmp_path, teacher):
    """distill.spacing = quadratic: the loss draws t from the quadratic student grid, and the exported decoder
    records the spacing, which assembly turns into the pipeline's decoder default (and generation reports)."""
    from unclip.pipelines import assemble
    from unclip.train.engine import run_training

    root, encoder_dir, teacher_dir = teacher
    stage = DistillStage(_config(root, teacher_dir, spacing="quadratic"))
    plain = DistillStage(_config(root, teacher_dir))
    pair, batch = stage.build_model(), _fixed_batch(stage)
    with torch.no_grad():
        loss = lambda s: float(s.distill_loss(pair, batch, torch.Generator().manual_seed(0), 4)[0])  # noqa: E731
        assert loss(stage) != loss(plain)                  # other grid points, other targets
    final = run_training(stage, tmp_path / "run")
    info = read_component_info(final / "decoder")
    assert info["sample"]["spacing"] == "quadratic" and info["distilled"]["spacing"] == "quadratic"
    pipe = assemble(tmp_path / "pipe", encoder=encoder_dir, decoder=tmp_path / "run")
    assert pipe.defaults["decoder"]["spacing"] == "quadratic"
    assert pipe.resolve_settings()["decoder"]["spacing"] == "quadratic"
    assert pipe.resolve_settings(spacing="trailing")["decoder"]["spacing"] == "trailing"
    assert pipe.resolve_settings(spacing="linspace", decoder_spacing="leading")["decoder"]["spacing"] == "leading"
    with pytest.raises(UnclipError, match="unknown spacing 'cubic'"):
        pipe.resolve_settings(spacing="cubic")
    with pytest.raises(ConfigError, match="distill.spacing='cubic'"):
        _config(root, teacher_dir, spacing="cubic")
