"""The latent decoder path: autoencoder stage, latent unCLIP decoder, crop-trained upsampler, min-SNR-γ."""

from __future__ import annotations


import pytest
import torch
from PIL import Image

from helpers.pipeline import circle_data
from unclip.checkpoint import load_model
from unclip.config import from_dict, load_config
from unclip.diffusion.gaussian import GaussianDiffusion, min_snr_weight
from unclip.diffusion.schedule import DiffusionConfig
from unclip.models.autoencoder import Autoencoder, AutoencoderConfig
from unclip.train.stages.autoencoder import AutoencoderStage, AutoencoderStageConfig
from unclip.train.stages.decoder import DecoderStage, DecoderStageConfig
from unclip.train.stages.upsampler import UpsamplerStage, UpsamplerStageConfig
from unclip.components import read_component_info

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = dict(steps=30, batch_size=4, lr=3e-3, warmup_steps=1, ema_decay=0.0, checkpoint_every=30, log_every=5)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return circle_data(tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("enc") / "encoder")


@pytest.fixture(scope="module")
def autoencoder_run(tiny_data, tmp_path_factory):
    from unclip.train.engine import run_training

    root, _ = tiny_data
    cfg = from_dict(AutoencoderStageConfig, {
        "data": {"path": str(root), "eval_split": "val", "eval_items": 4, "scale_items": 8},
        "model": {"image_size": 16, "base_channels": 8, "channel_mult": [1, 2], "latent_channels": 2},
        "loss": {"perceptual_weight": 0.0}, "train": TRAIN})
    out = tmp_path_factory.mktemp("ae") / "run"
    run_training(AutoencoderStage(cfg), out)
    return out


@torch.no_grad()
def test_autoencoder_round_trip_learns_and_saves(autoencoder_run, tiny_data):
    from unclip.data import open_dataset

    model = load_model(autoencoder_run / "final" / "model.safetensors", expected=Autoencoder)
    images = torch.stack([s["image"] for s in open_dataset(tiny_data[0], "train", image_size=16)])
    latents = model.encode(images)
    assert latents.shape == (8, 2, 8, 8)
    # latent_scale makes the training latents unit-variance (LDM §4.3.2)
    assert abs(float(latents.std()) - 1.0) < 0.05 and float(model.latent_scale) != 1.0
    recon = model.decode(latents)
    fresh = Autoencoder(model.config).eval()
    error = (recon - images).abs().mean()
    assert error < 0.5 * (fresh.decode(fresh.encode(images)) - images).abs().mean()   # it learned something
    assert recon.min() >= -1 and recon.max() <= 1
    assert "psnr" in (autoencoder_run / "eval.csv").read_text()


def test_autoencoder_config_checks():
    with pytest.raises(ValueError, match="divisible"):
        AutoencoderConfig(image_size=18, channel_mult=(1, 2, 2))
    assert AutoencoderConfig(image_size=64, channel_mult=(1, 2, 4)).latent_size == 16


def _latent_decoder_config(root, encoder_dir, autoencoder):
    return from_dict(DecoderStageConfig, {
        "data": {"path": str(root), "encoder": str(encoder_dir), "image_size": 16, "autoencoder": str(autoencoder)},
        "model": {"base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4],
                  "head_channels": 16, "context_dim": 16},
        "diffusion": {"timesteps": 100, "prediction": "v", "min_snr_gamma": 5.0},
        "sample": {"num_images": 2, "steps": 2, "recognisability_items": 3},
        "train": dict(TRAIN, steps=3, checkpoint_every=3)})


def test_latent_decoder_trains_on_latents_exports_and_samples_pixels(tmp_path, tiny_data, autoencoder_run):
    from unclip.pipelines import assemble, load_pipeline
    from unclip.train.engine import run_training

    root, encoder_dir = tiny_data
    stage = DecoderStage(_latent_decoder_config(root, encoder_dir, autoencoder_run))
    cfg = stage.build_model().config
    assert (cfg.image_size, cfg.in_channels, cfg.out_channels) == (8, 2, 2)   # 16 px images as 8x8x2 latents
    target = stage.decoder_images(torch.zeros(2, 3, 32, 32))
    assert target.shape == (2, 2, 8, 8)
    final = run_training(stage, tmp_path / "run")
    info = read_component_info(final / "decoder")
    assert info["autoencoder"] == "autoencoder.safetensors" and info["diffusion"]["min_snr_gamma"] == 5.0
    assert (final / "decoder" / "autoencoder.safetensors").is_file()
    assert list((tmp_path / "run" / "eval").rglob("decoder_samples_*.png"))
    logged = (tmp_path / "run" / "eval.csv").read_text()
    assert "variation_recognised" in logged and "clip_sim" in logged   # the recognisability training curve
    pipe = assemble(tmp_path / "pipe", encoder=encoder_dir, decoder=tmp_path / "run")
    pipe = load_pipeline(tmp_path / "pipe")   # the autoencoder travels with the decoder component
    assert pipe.decoder.latent and pipe.decoder_size == 16 and pipe.decoder.sample_shape == (2, 8, 8)
    image = Image.new("RGB", (16, 16), "red")
    out = pipe.variations(image, num_images=2, seed=0, progress=False, decoder_steps=2, output_type="pt")
    assert out.images.shape == (2, 3, 16, 16) and out.images.abs().max() <= 1
    again = pipe.variations(image, num_images=2, seed=0, progress=False, decoder_steps=2, output_type="pt")
    assert torch.equal(out.images, again.images)
    inverted = pipe.variations(image, num_images=1, seed=0, progress=False, decoder_steps=4, from_inversion=True,
                               eta=0.0, output_type="pt")
    assert inverted.images.shape == (1, 3, 16, 16)


def test_latent_decoder_rejects_a_mismatched_autoencoder(tiny_data, autoencoder_run):
    from unclip.errors import UnclipError

    root, encoder_dir = tiny_data
    cfg = _latent_decoder_config(root, encoder_dir, autoencoder_run)
    import dataclasses

    bad = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_size=32))
    with pytest.raises(UnclipError, match="16 px"):
        DecoderStage(bad).build_model()
    missing = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, autoencoder=str(root / "nothing")))
    with pytest.raises(UnclipError, match="no trained autoencoder"):
        DecoderStage(missing).build_model()


def test_min_snr_weight_by_hand():
    a = torch.tensor([0.5, 0.9, 0.999])            # SNR = 1, 9, 999
    snr = a / (1 - a)
    clipped = torch.tensor([1.0, 5.0, 5.0])
    assert torch.allclose(min_snr_weight("x0", a, 5.0), clipped)
    assert torch.allclose(min_snr_weight("eps", a, 5.0), clipped / snr)
    assert torch.allclose(min_snr_weight("v", a, 5.0), clipped / (snr + 1))
    # the weighted loss is the weight times the plain MSE, per sample
    diffusion = GaussianDiffusion(DiffusionConfig(timesteps=100, prediction="v", min_snr_gamma=5.0))
    plain = GaussianDiffusion(DiffusionConfig(timesteps=100, prediction="v"))
    x0, noise, t = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.tensor([1, 50, 99])
    model = lambda x, t: x * 0.3  # noqa: E731
    weighted = diffusion.training_losses(model, x0, t, noise=noise)
    unweighted = plain.training_losses(model, x0, t, noise=noise)
    w = min_snr_weight("v", diffusion.alphas_cumprod[t].float(), 5.0)
    assert torch.allclose(weighted["loss"], unweighted["loss"] * w, rtol=1e-5)
    assert torch.equal(weighted["mse"], unweighted["mse"])
    with pytest.raises(ValueError, match="min_snr_gamma"):
        DiffusionConfig(min_snr_gamma=-1)


def _upsampler_stage(root, crop_size):
    return UpsamplerStage(from_dict(UpsamplerStageConfig, {
        "data": {"path": str(root), "image_size": 32, "low_res_size": 8, "crop_size": crop_size},
        "model": {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_resolutions": []},
        "diffusion": {"timesteps": 100}, "degrade": {"kind": "none"},
        "sample": {"num_images": 2, "steps": 2}, "train": dict(TRAIN, steps=3, checkpoint_every=3)}))


def test_upsampler_trains_on_aligned_crops_and_runs_at_full_size(tmp_path, tiny_data):
    from unclip.models.degrade import make_low_res
    from unclip.train.engine import run_training

    root, _ = tiny_data
    stage = _upsampler_stage(root, 16)
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    crops = stage.random_crops(images, torch.Generator().manual_seed(0))
    assert crops.shape == (5, 3, 16, 16) and stage.low_res_size(crops) == 4
    for crop, image in zip(crops, images):   # each crop is a window of its image at a multiple of 4 (32/8)
        hits = [(y, x) for y in range(0, 17, 4) for x in range(0, 17, 4)
                if torch.equal(image[:, y:y + 16, x:x + 16], crop)]
        assert hits
    low, _ = stage.conditioning(crops, torch.Generator().manual_seed(0))
    assert low.shape == (5, 3, 4, 4) and torch.allclose(low, make_low_res(crops, 4))
    assert torch.equal(_upsampler_stage(root, 0).random_crops(images, None), images)
    final = run_training(stage, tmp_path / "run")
    info = read_component_info(final / "upsampler")
    assert info["crop_size"] == 16 and info["low_res_size"] == 8 and info["image_size"] == 32
    with pytest.raises(Exception, match="crop_size"):
        _upsampler_stage(root, 18)


@pytest.mark.parametrize("name", ["emoji64"])
def test_autoencoder_presets_parse(name):
    cfg = load_config(AutoencoderStageConfig, f"configs/autoencoder/{name}.yaml")
    assert cfg.model.latent_size == 16


def test_shipped_emoji_presets_parse():
    decoder = load_config(DecoderStageConfig, "configs/decoder/emoji64-latent.yaml")
    assert decoder.data.autoencoder and decoder.data.image_size == 64
    upsampler = load_config(UpsamplerStageConfig, "configs/upsampler/emoji64to256.yaml")
    assert upsampler.data.crop_size * 4 == upsampler.data.image_size


def test_cached_conditions_give_the_same_loss(tiny_data, autoencoder_run):
    import dataclasses

    root, encoder_dir = tiny_data
    cfg = _latent_decoder_config(root, encoder_dir, autoencoder_run)
    plain = DecoderStage(cfg)
    cached = DecoderStage(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_conditions=True)))
    cached.setup(torch.device("cpu"))
    dataset = cached.build_dataset("train")
    batch = cached.collate([dataset[i] for i in (5, 0, 3)])
    assert batch["index"].tolist() == [5, 0, 3]
    model = plain.build_model()
    losses = [stage.loss(model, batch, torch.Generator().manual_seed(0))[0] for stage in (plain, cached)]
    assert torch.allclose(losses[0], losses[1], rtol=1e-3, atol=1e-5)   # tokens are cached in fp16
    cond, target = cached._cache.batch([5, 0, 3], "cpu")
    assert target.shape == (3, 2, 8, 8) and cond["text_tokens"].shape[0] == 3 and cond["text_mask"].dtype == torch.bool


def test_cached_conditions_are_saved_in_the_run_and_read_back_on_resume(tmp_path, tiny_data, autoencoder_run,
                                                                         monkeypatch):
    import dataclasses
    import os
    from pathlib import Path

    from unclip.train import cond_cache

    root, encoder_dir = tiny_data
    cfg = _latent_decoder_config(root, encoder_dir, autoencoder_run)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_conditions=True))
    run_dir = tmp_path / "run"
    first = DecoderStage(cfg)
    first.run_dir = run_dir                      # not created yet: the engine makes it after setup
    first.setup(torch.device("cpu"))
    run_dir.mkdir()
    first.started(run_dir)
    assert (run_dir / cond_cache.ConditionCache.FILE).is_file()

    computed = []
    real_init = cond_cache.ConditionCache.__init__

    def counting_init(self, dataset, *args, **kwargs):
        computed.append(dataset is not None)
        real_init(self, dataset, *args, **kwargs)

    monkeypatch.setattr(cond_cache.ConditionCache, "__init__", counting_init)
    resumed = DecoderStage(cfg)
    resumed.run_dir = run_dir
    resumed.setup(torch.device("cpu"))
    assert computed == [False]                   # read back, not recomputed
    for index in ([5, 0, 3], [1]):
        (c1, t1), (c2, t2) = first._cache.batch(index, "cpu"), resumed._cache.batch(index, "cpu")
        assert torch.equal(t1, t2) and c1.keys() == c2.keys()
        assert all(torch.equal(c1[k], c2[k]) for k in c1)

    touched = sorted(Path(root).rglob("*.png"))[0]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))  # one image edited
    changed = DecoderStage(cfg)                  # the data changed: the stale cache is not used
    changed.run_dir = run_dir
    changed.setup(torch.device("cpu"))
    assert computed == [False, True]


def test_init_starts_from_the_weights_and_checks_shapes(tmp_path, autoencoder_run, tiny_data, capsys):
    """--init: step 0 holds the loaded weights (lr ~0 keeps them); a decoder-only fine-tune keeps the encoder."""
    from unclip.checkpoint import load_tensors
    from unclip.cli import main
    from unclip.train.engine import run_training
    from unclip.train.init import find_weights

    root, _ = tiny_data
    source = load_tensors(find_weights(autoencoder_run, "autoencoder"))
    cfg = {"data": {"path": str(root), "eval_split": "val", "eval_items": 4, "scale_items": 8},
           "model": {"image_size": 16, "base_channels": 8, "channel_mult": [1, 2], "latent_channels": 2},
           "loss": {"perceptual_weight": 0.0},
           "train": dict(TRAIN, steps=1, lr=1e-12, checkpoint_every=1, init=str(autoencoder_run))}
    run_training(AutoencoderStage(from_dict(AutoencoderStageConfig, cfg)), tmp_path / "same")
    after = load_tensors(tmp_path / "same" / "final" / "model.safetensors")
    assert all(torch.allclose(after[k], v, atol=1e-6) for k, v in source.items() if k != "latent_scale")
    # the decoder-only fine-tune changes the decoder, never the encoder or latent_scale
    ft = dict(cfg, train_encoder=False, train=dict(cfg["train"], steps=4, lr=3e-3))
    run_training(AutoencoderStage(from_dict(AutoencoderStageConfig, ft)), tmp_path / "ft")
    tuned = load_tensors(tmp_path / "ft" / "final" / "model.safetensors")
    assert all(torch.equal(tuned[k], v) for k, v in source.items() if not k.startswith("decoder."))
    assert any(not torch.equal(tuned[k], v) for k, v in source.items() if k.startswith("decoder."))
    with pytest.raises(Exception, match="--init"):
        from_dict(AutoencoderStageConfig, dict(ft, train=dict(TRAIN)))
    # a model of another shape: one line before step 0, nothing written
    bad = dict(cfg, model=dict(cfg["model"], base_channels=16))
    from unclip.errors import UnclipError

    with pytest.raises(UnclipError, match="do not fit"):
        run_training(AutoencoderStage(from_dict(AutoencoderStageConfig, bad)), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert main(["train", "autoencoder", "--config", "configs/autoencoder/tiny.yaml", "--init", str(tmp_path / "no"),
                 "--out", str(tmp_path / "cli")]) == 2
    assert "no weights found" in capsys.readouterr().err


def test_anchor_to_low_res_keeps_the_input_colours():
    import torch.nn.functional as F

    from unclip.pipelines.sampling import anchor_to_low_res

    g = torch.Generator().manual_seed(0)
    low = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    drifted = F.interpolate(low, size=32, mode="bicubic", align_corners=False) + 0.3   # a tinted upsampling
    drifted = drifted + 0.05 * torch.randn(drifted.shape, generator=g)                 # plus detail
    fixed = anchor_to_low_res(drifted, low)
    error = (F.interpolate(fixed, size=8, mode="area") - low).abs().mean()            # colours are the input's
    assert error < 0.2 * (F.interpolate(drifted, size=8, mode="area") - low).abs().mean()
    detail = fixed - F.interpolate(F.interpolate(fixed, size=8, mode="area"), size=32, mode="bicubic")
    assert detail.std() > 0.03                                                          # the detail stays


def test_channel_norm_is_per_pixel_layer_norm_and_blind_to_other_pixels():
    """ChannelNorm by hand; unlike GroupNorm, a spike at one pixel leaves every other pixel's output unchanged."""
    from unclip.models.vq import ChannelNorm, _norm

    torch.manual_seed(0)
    norm = ChannelNorm(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 8, 5, 5)
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    by_hand = (x - mean) / (var + 1e-6).sqrt() * norm.weight[:, None, None] + norm.bias[:, None, None]
    assert torch.allclose(norm(x), by_hand, atol=1e-5)
    spiked = x.clone()
    spiked[:, :, 4, 4] += 50.0
    others = torch.ones(5, 5, dtype=torch.bool)
    others[4, 4] = False
    assert torch.equal(norm(spiked)[..., others], norm(x)[..., others])
    group = _norm(8)                                    # GroupNorm: the spike moves the whole image
    assert (group(spiked) - group(x))[..., others].abs().max() > 0.1
    assert set(dict(norm.named_parameters())) == set(dict(group.named_parameters()))   # --init carries over


def test_a_channel_norm_decoder_fine_tunes_from_a_group_norm_autoencoder(tmp_path, autoencoder_run, tiny_data):
    """decoder_norm: channel builds ChannelNorm layers in the decoder only, starts from a GroupNorm run's weights
    (--init, strict by name and shape), keeps the encoder, and reloads with its norm from the saved config."""
    from unclip.checkpoint import load_tensors
    from unclip.models.vq import ChannelNorm
    from unclip.train.engine import run_training
    from unclip.train.init import find_weights

    root, _ = tiny_data
    source = load_tensors(find_weights(autoencoder_run, "autoencoder"))
    cfg = {"data": {"path": str(root), "eval_split": "val", "eval_items": 4, "scale_items": 8},
           "model": {"image_size": 16, "base_channels": 8, "channel_mult": [1, 2], "latent_channels": 2,
                     "decoder_norm": "channel"},
           "loss": {"perceptual_weight": 0.0}, "train_encoder": False,
           "train": dict(TRAIN, steps=4, checkpoint_every=4, init=str(autoencoder_run))}
    run_training(AutoencoderStage(from_dict(AutoencoderStageConfig, cfg)), tmp_path / "cn")
    tuned_file = tmp_path / "cn" / "final" / "model.safetensors"
    tuned = load_tensors(tuned_file)
    assert set(tuned) == set(source)
    assert all(torch.equal(tuned[k], v) for k, v in source.items() if not k.startswith("decoder."))
    model = load_model(tuned_file, expected=Autoencoder)
    assert model.config.decoder_norm == "channel"
    assert any(isinstance(m, ChannelNorm) for m in model.decoder.modules())
    assert not any(isinstance(m, ChannelNorm) for m in model.encoder.modules())
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in model.decoder.modules())
    with pytest.raises(ValueError, match="decoder_norm"):
        AutoencoderConfig(decoder_norm="batch")
