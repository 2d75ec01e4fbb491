"""CLIP-VQDiffusion: noise trick, token transformer, clipvq stage, pipeline and CLI (tiny, CPU)."""

import json
import math
from pathlib import Path

import pytest
import torch

from unclip.checkpoint import save_model
from unclip.config import from_dict
from unclip.errors import ConfigError, UnclipError
from unclip.models.token_transformer import TokenTransformer, TokenTransformerConfig
from unclip.models.vq import VQConfig, VQModel
from unclip.train.stages.clipvq import ClipVQStage, ClipVQStageConfig, perturb_embedding

SPECS = [("circle", "red", "top left", "large"), ("square", "blue", "center", "large"),
         ("triangle", "green", "bottom right", "small"), ("star", "black", "top right", "large")]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0])
def test_perturbation_is_unit_norm_at_the_right_angle(alpha):
    c = torch.randn(256, 512) * 3
    out = perturb_embedding(c, alpha, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(256))
    angle = torch.acos((out * torch.nn.functional.normalize(c, dim=-1)).sum(-1).clamp(-1, 1))
    assert angle.mean().item() == pytest.approx(math.atan(alpha), abs=0.01)
    assert angle.std().item() < 0.05


@pytest.mark.parametrize("mode", ["adaln", "cross_attn"])
def test_transformer_shapes_and_null_condition(mode):
    torch.manual_seed(0)
    cfg = TokenTransformerConfig(num_codes=16, grid_size=(2, 3), cond_dim=8, cond_mode=mode, width=32, depth=2, heads=2)
    net = TokenTransformer(cfg).eval()
    for block in net.blocks:            # AdaLN starts at zero; wake it so the condition matters
        torch.nn.init.normal_(block.norm1.to_scale_shift.weight, std=0.5)
    x = torch.randint(0, 17, (3, 6))
    t = torch.tensor([1, 50, 100])
    c = torch.randn(3, 8)
    out = net(x, t, cond_embed=c)
    assert out.shape == (3, 16, 6)
    dropped = net(x, t, cond_embed=c, drop_cond=torch.tensor([True, False, True]))
    null = net(x, t, cond_embed=None)
    torch.testing.assert_close(dropped[[0, 2]], null[[0, 2]])
    torch.testing.assert_close(dropped[1], out[1])
    assert not torch.allclose(out, null)
    uncond = TokenTransformer(TokenTransformerConfig(num_codes=16, grid_size=(2, 3), width=32, depth=1, heads=2))
    assert uncond(x, t).shape == (3, 16, 6)


def test_text_condition_with_image_only_is_a_config_error():
    with pytest.raises(ConfigError, match="image_only"):
        from_dict(ClipVQStageConfig, {"condition": "text", "data": {"image_only": True}})


def _tiny_setup(tmp_path):
    """A caption-free folder of 4 shape images, a tiny encoder dir and a tiny VQ file."""
    from unclip.data.shapes import render_shape
    from helpers.pipeline import tiny_encoder

    folder = tmp_path / "images"
    folder.mkdir()
    for i, spec in enumerate(SPECS):
        render_shape(*spec, image_size=16).save(folder / f"{i}.png")
    tiny_encoder().save(tmp_path / "encoder")
    torch.manual_seed(0)
    vq = VQModel(VQConfig(image_size=16, base_channels=8, embed_dim=8, codebook_size=16, kmeans_init=False))
    save_model(vq, tmp_path / "vq" / "model.safetensors")
    return folder


def _stage(tmp_path, folder, **extra):
    data = {"data": {"path": str(folder), "encoder": str(tmp_path / "encoder"), "image_only": True},
            "model": {"vq": str(tmp_path / "vq"), "transformer": {"width": 32, "depth": 1, "heads": 2}},
            "diffusion": {"num_steps": 10},
            "sample": {"prompts": ["a red circle"], "images_per_prompt": 1, "steps": 5},
            "train": {"steps": 3, "batch_size": 4, "warmup_steps": 1, "ema_decay": 0.0, "log_every": 1,
                      "checkpoint_every": 100}}
    data.update(extra)
    return ClipVQStage(from_dict(ClipVQStageConfig, data))


def test_stage_loss_decreases_on_a_tiny_batch(tmp_path):
    folder = _tiny_setup(tmp_path)
    stage = _stage(tmp_path, folder, noise_alpha=0.5)
    stage.setup(torch.device("cpu"))
    dataset = stage.build_dataset("train")
    assert len(dataset) == 4 and set(dataset[0]) == {"codes", "image_embed"}
    batch = stage.collate([dataset[i] for i in range(4)])
    model = stage.build_model()
    assert model.config.num_codes == 16 and model.config.grid_size == (4, 4) and model.config.cond_dim == 16
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    losses = []
    for step in range(40):
        loss, logs = stage.loss(model, batch, torch.Generator().manual_seed(step % 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert {"vlb", "aux_nll"} <= set(logs)
    assert sum(losses[-4:]) < 0.6 * sum(losses[:4])


def test_train_export_generate_round_trip(tmp_path, capsys):
    from unclip.cli import main
    from unclip.pipelines import PipelineOutput, load_pipeline
    from unclip.train.engine import run_training

    folder = _tiny_setup(tmp_path)
    final = run_training(_stage(tmp_path, folder), tmp_path / "run")
    info = json.loads((final / "pipeline.json").read_text())
    assert info["kind"] == "clipvq" and info["info"]["image_only"] is True
    pipe = load_pipeline(str(final))
    out = pipe(["a red circle", "a blue square"], num_images_per_prompt=2, seed=7, progress=False, steps=4)
    assert isinstance(out, PipelineOutput) and len(out.images) == 4 and out.images[0].size == (16, 16)
    again = pipe(["a blue square"], num_images_per_prompt=1, seed=out.seeds[3], progress=False, steps=4,
                 output_type="pt")
    torch.testing.assert_close(again.images[0], pipe(["a red circle", "a blue square"], num_images_per_prompt=2,
                               seed=7, progress=False, steps=4, output_type="pt").images[3])
    purity = pipe("a red circle", seed=1, progress=False, sampler="purity", steps=4, guidance_scale=1.0,
                  output_type="pt")
    assert purity.images.shape == (1, 3, 16, 16)
    code = main(["generate", "a red circle", "--model", str(final), "--out", str(tmp_path / "g.png"), "-n", "2",
                 "--seed", "0", "--quiet"])
    assert code == 0 and (tmp_path / "g.png").is_file()
    assert main(["generate", "a red circle", "--model", str(final), "--out", str(tmp_path / "h.png"),
                 "--sampler", "ddim", "--quiet"]) == 2
    assert "does not apply to CLIP-VQDiffusion" in capsys.readouterr().err
    assert main(["generate", "a red circle", "--model", str(final), "--out", str(tmp_path / "h.png"),
                 "--spacing", "quadratic", "--quiet"]) == 2
    assert "drop --spacing" in capsys.readouterr().err and not (tmp_path / "h.png").exists()
    # the experiment script runs end to end on it (scores are meaningless for random weights)
    from unclip.eval.clipvq_experiment import main as experiment

    assert experiment(["--run", f"tiny={final}", "--prompts", "3", "--steps", "2", "--eval-encoder",
                       str(tmp_path / "encoder"), "--out", str(tmp_path / "exp.json")]) == 0
    record = json.loads((tmp_path / "exp.json").read_text())
    assert record["results"]["tiny"]["n"] == 3 and "r_precision" in record["results"]["tiny"]
    real = record["results"]["real renders"]
    assert real["color_acc"] == 1.0 and real["position_acc"] == 1.0
    assert 0.0 <= real["r_precision"] <= 1.0 and "clip_score" in record["results"]["VQ reconstructions"]
    assert experiment(["--merge", str(tmp_path / "exp.json"), "--plot", str(tmp_path / "bars.png")]) == 0
    assert (tmp_path / "bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| tiny |" in capsys.readouterr().out
    # --vq alone: the tokenizer's round-trip ceiling, from its run directory
    vq_dir = Path(pipe.save(tmp_path / "copy")) / "vq"
    assert experiment(["--vq", str(vq_dir), "--prompts", "3", "--out", str(tmp_path / "vq.json")]) == 0
    rows = json.loads((tmp_path / "vq.json").read_text())["results"]
    assert set(rows) == {"real renders", "VQ reconstructions"} and rows["VQ reconstructions"]["n"] == 3
    with pytest.raises(UnclipError, match="no VQ tokenizer"):
        (tmp_path / "empty").mkdir()
        experiment(["--vq", str(tmp_path / "empty"), "--prompts", "3", "--out", str(tmp_path / "none.json")])
