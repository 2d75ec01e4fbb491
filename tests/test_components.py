"""One self-describing file per component, old layouts, the converter and the upsampler cascade (issue #19)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from helpers.pipeline import edit_component, tiny_component, tiny_encoder, tiny_pipeline
from unclip.checkpoint import read_metadata
from unclip.components import load_component, read_component_info, save_component
from unclip.diffusion.schedule import DiffusionConfig
from unclip.errors import CheckpointError
from unclip.models.unet import UNet, UNetConfig
from unclip.pipelines import load_pipeline
from unclip.pipelines.convert import convert
from unclip.pipelines.decoder import Component

pytestmark = pytest.mark.usefixtures("one_thread")

KW = dict(progress=False, output_type="pt")
SRC = Path(__file__).resolve().parents[1] / "src" / "unclip"


def test_a_component_is_one_file_with_config_noise_process_and_defaults(tmp_path):
    model = UNet(UNetConfig(image_size=8, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                            attention_resolutions=(), head_channels=8))
    path = save_component(tmp_path / "up", model, role="upsampler", diffusion=DiffusionConfig(timesteps=50),
                          sample_defaults={"steps": 3}, extra={"low_res_size": 4, "noise_level": 0})
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.safetensors"]
    meta = read_metadata(path)
    assert json.loads(meta["config"])["image_size"] == 8
    info = json.loads(meta["component"])
    assert info["diffusion"]["timesteps"] == 50 and info["sample"] == {"steps": 3} and info["low_res_size"] == 4
    stored = load_component(tmp_path / "up", roles=("upsampler",), expected=UNet)
    assert stored.diffusion.timesteps == 50 and stored.sample_defaults == {"steps": 3}
    assert torch.equal(next(stored.model.parameters()), next(model.parameters()))
    with pytest.raises(CheckpointError, match="unknown key 'low_res'"):
        save_component(tmp_path / "bad", model, role="upsampler", extra={"low_res": 4})
    with pytest.raises(CheckpointError, match="'role' is"):
        load_component(tmp_path / "up", roles=("decoder",))


def test_the_prior_keeps_one_noise_process(tmp_path):
    prior = tiny_pipeline("full").prior
    prior.save(tmp_path / "prior")
    stored = load_component(tmp_path / "prior", roles=("prior",))
    assert "diffusion" not in stored.info and stored.diffusion == prior.model.config.diffusion
    with pytest.raises(CheckpointError, match="model config"):
        save_component(tmp_path / "p2", prior.model, role="prior", diffusion=DiffusionConfig(timesteps=7))


def _make_old(directory: Path, *, strip_metadata: tuple[str, ...] = ()) -> None:
    """Rewrite a saved unCLIP pipeline in the layout unclip wrote before issue #19: component.json beside every
    model file and pipeline.json version 1 with components.upsampler (``strip_metadata``: folders whose file
    predates the settings in the metadata too)."""
    info = json.loads((directory / "pipeline.json").read_text())
    folders = info.pop("upsamplers")
    for folder in [*info["components"].values(), *folders]:
        if folder == "encoder":
            continue
        component = json.loads(read_metadata(directory / folder / "model.safetensors")["component"])
        (directory / folder / "component.json").write_text(json.dumps(component, indent=2))
        if folder in strip_metadata:
            edit_component(directory / folder, lambda i: ...)
    info["components"]["upsampler"] = folders[0] if folders else None
    info["version"] = 1
    (directory / "pipeline.json").write_text(json.dumps(info))


def test_old_unclip_layout_loads_and_converts(tmp_path):
    pipe = tiny_pipeline("full")
    expected = pipe(["a red circle"], seed=1, **KW).images
    old = pipe.save(tmp_path / "old")
    _make_old(old, strip_metadata=("decoder",))
    assert read_component_info(old / "decoder")["role"] == "decoder"  # read from component.json
    assert torch.equal(load_pipeline(old)(["a red circle"], seed=1, **KW).images, expected)
    changed = convert(old)
    assert any("pipeline.json" in line for line in changed) and not list(old.rglob("component.json"))
    info = json.loads((old / "pipeline.json").read_text())
    assert info["version"] == 2 and info["upsamplers"] == ["upsampler"] and "upsampler" not in info["components"]
    assert torch.equal(load_pipeline(old)(["a red circle"], seed=1, **KW).images, expected)
    assert convert(old) == []  # converting twice changes nothing


def test_old_clipvq_layout_loads_and_converts(tmp_path):
    import test_pinned_cascade as pinned

    pipe = pinned._clipvq()
    expected = pipe(["a red circle"], seed=3, **KW).images
    old = pipe.save(tmp_path / "old")
    info = json.loads((old / "pipeline.json").read_text())
    stored = read_component_info(old / "transformer")
    edit_component(old / "transformer", lambda i: ...)
    (old / "pipeline.json").write_text(json.dumps({**info, "version": 1, "diffusion": stored["diffusion"],
                                                   "defaults": stored["sample"]}))
    assert torch.equal(load_pipeline(old)(["a red circle"], seed=3, **KW).images, expected)
    convert(old)
    assert "diffusion" not in json.loads((old / "pipeline.json").read_text())
    assert read_component_info(old / "transformer")["diffusion"] == stored["diffusion"]
    assert torch.equal(load_pipeline(old)(["a red circle"], seed=3, **KW).images, expected)


def test_convert_command_and_a_cascade_assembled_from_runs(tmp_path, capsys):
    from unclip.cli import main

    pipe = tiny_pipeline("full")
    old = pipe.save(tmp_path / "old")
    _make_old(old)
    assert main(["convert", str(old)]) == 0 and "converted" in capsys.readouterr().out
    assert main(["convert", str(old)]) == 0 and "already" in capsys.readouterr().out
    pipe.encoder.save(tmp_path / "enc")
    pipe.decoder.save(tmp_path / "dec")
    pipe.upsampler.save(tmp_path / "up1")
    _second_upsampler().save(tmp_path / "up2")
    assert main(["assemble", "--out", str(tmp_path / "pipe"), "--encoder", str(tmp_path / "enc"), "--decoder",
                 str(tmp_path / "dec"), "--upsampler", str(tmp_path / "up1"), "--upsampler", str(tmp_path / "up2")]) == 0
    assert load_pipeline(tmp_path / "pipe").image_size == 64


def test_a_component_without_settings_names_the_way_out(tmp_path):
    tiny_component("decoder", tiny_encoder()).save(tmp_path / "decoder")
    edit_component(tmp_path / "decoder", lambda i: ...)
    with pytest.raises(CheckpointError, match="unclip convert"):
        Component.load(tmp_path / "decoder", "cpu")


def _second_upsampler(seed: int = 5) -> Component:
    """A tiny 32 → 64 upsampler after the helpers' 16 → 32 one."""
    from helpers.pipeline import _wake

    torch.manual_seed(seed)
    cfg = UNetConfig(image_size=64, attention_resolutions=(), low_res_channels=3, base_channels=8,
                     channel_mults=(1, 2), num_res_blocks=1, head_channels=8)
    info = {"role": "upsampler", "diffusion": {"timesteps": 100}, "low_res_size": 32, "noise_level": 0}
    return Component(_wake(UNet(cfg), seed), info)


def test_an_upsampler_stage_is_appended_saved_and_loaded(tmp_path):
    pipe = tiny_pipeline("full")
    base = pipe(["a red circle"], seed=2, **KW).images
    pipe.upsamplers.append(_second_upsampler())
    assert pipe.image_size == 64 and pipe.stages == ("prior", "decoder", "upsampler")
    out = pipe(["a red circle"], seed=2, **KW)
    assert out.images.shape == (1, 3, 64, 64)
    # The first stages draw the same noise from the seed: stopping after the decoder is unchanged.
    assert torch.equal(pipe(["a red circle"], seed=2, upsample=False, **KW).images,
                       tiny_pipeline("full")(["a red circle"], seed=2, upsample=False, **KW).images)
    assert base.shape[-1] == 32
    path = pipe.save(tmp_path / "cascade")
    assert json.loads((path / "pipeline.json").read_text())["upsamplers"] == ["upsampler", "upsampler_2"]
    loaded = load_pipeline(path)
    assert len(loaded.upsamplers) == 2 and loaded.image_size == 64
    assert torch.equal(loaded(["a red circle"], seed=2, **KW).images, out.images)
    variations = loaded.variations(-torch.ones(3, 16, 16), num_images=1, seed=0, **KW).images
    assert variations.shape == (1, 3, 64, 64)
    loaded.upsamplers.insert(0, _second_upsampler())  # 32 → 64 cannot follow the 16 px decoder
    with pytest.raises(CheckpointError, match="expects 32 px"):
        loaded(["a red circle"], seed=2, **KW)


def test_the_halves_compose_into_text_to_image():
    pipe = tiny_pipeline("full")
    whole = pipe(["a red circle", "a blue square"], seed=4, **KW)
    z = pipe.embed(["a red circle", "a blue square"], seed=4, progress=False)
    assert z.images.shape == (2, pipe.encoder.embed_dim)
    halves = pipe.decode(z.images, ["a red circle", "a blue square"], seed=4, **KW)
    assert torch.allclose(halves.images, whole.images, atol=1e-5)


def test_pipelines_import_no_training_code():
    for path in sorted((SRC / "pipelines").glob("*.py")) + [SRC / "components.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "unclip.train" or n.startswith("unclip.train.") for n in names), path.name
