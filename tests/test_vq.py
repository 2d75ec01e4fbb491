"""VQ tokenizer, its codebook and the EfficientNet-Lite0 perceptual features."""

import pytest
import torch

from unclip.checkpoint import load_model, save_model
from unclip.config import from_dict
from unclip.data.shapes import pil_to_tensor, render_shape
from unclip.errors import ConfigError
from unclip.models.vq import Codebook, VQConfig, VQModel, codebook_usage, psnr

SPECS = [("circle", "red", "top left", "large"), ("square", "blue", "center", "large"),
         ("triangle", "green", "bottom right", "large"), ("star", "black", "top right", "large")]


pytestmark = pytest.mark.usefixtures("one_thread")


def _shapes(size):
    return torch.stack([pil_to_tensor(render_shape(*s, image_size=size)) for s in SPECS])


def test_round_trip_shapes_and_factors(tmp_path):
    for mult, side in (((1, 2, 2), 8), ((1, 1, 2, 2), 4)):
        cfg = VQConfig(image_size=32, base_channels=8, channel_mult=mult, embed_dim=8, codebook_size=16)
        model = VQModel(cfg).eval()
        codes = model.encode(_shapes(32))
        assert codes.shape == (4, side, side) and codes.dtype == torch.long and codes.max() < 16
        assert model.decode(codes).shape == (4, 3, 32, 32)
        assert model.decode(codes.flatten(1)).shape == (4, 3, 32, 32)
    save_model(model, tmp_path / "vq.safetensors")
    again = load_model(tmp_path / "vq.safetensors")
    torch.testing.assert_close(again.decode(codes), model.decode(codes))


def test_bad_config_is_a_config_error():
    with pytest.raises(ConfigError, match="divisible"):
        from_dict(VQConfig, {"image_size": 30, "channel_mult": [1, 2, 2]})


def test_tiny_vq_overfits_shapes_above_20db():
    """150 Adam steps on four 16-px shape renders: mean PSNR > 20 dB, every image > 15 dB.
    (An all-white guess scores about 9.5 dB, an untrained VQ about 6 dB.)"""
    torch.manual_seed(0)
    images = _shapes(16)
    cfg = VQConfig(image_size=16, base_channels=16, channel_mult=(1, 2, 2), embed_dim=16,
                   codebook_size=64, dead_code_threshold=0.0)
    model = VQModel(cfg)
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    for _ in range(150):
        out = model(images)
        loss = (out["recon"] - images).abs().mean() + out["vq_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    scores = psnr(model.decode(model.encode(images)), images)
    assert scores.mean() > 20.0 and scores.min() > 15.0, scores


def test_codebook_kmeans_init_ema_and_dead_code_restart():
    torch.manual_seed(0)
    cfg = VQConfig(embed_dim=2, codebook_size=4, ema_decay=0.5, dead_code_threshold=0.2, kmeans_iters=5)
    book = Codebook(cfg).train()
    centres = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, -5.0]])
    z = (centres.repeat(16, 1) + 0.01 * torch.randn(64, 2)).view(4, 4, 4, 2).permute(0, 3, 1, 2)  # [B,D,h,w]
    z_q, codes, loss = book(z)
    assert bool(book.initialised)
    assert sorted(codes.unique().tolist()) == [0, 1, 2, 3]                # k-means found the 4 clusters
    assert torch.cdist(book.embed, centres).min(1).values.max() < 0.1
    # straight-through: gradient reaches z
    z.requires_grad_(True)
    book(z)[0].sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))
    # a code that is never used decays below the threshold and is restarted on a data vector
    unused = int(torch.cdist(centres[3:], book.embed).argmin())         # the code at (-5, -5)
    only_three = (centres[:3].repeat(22, 1)[:64]).view(4, 4, 4, 2).permute(0, 3, 1, 2)
    for _ in range(8):
        book(only_three)
    assert torch.cdist(book.embed[unused:unused + 1], centres[:3]).min() < 1.0


def test_codebook_usage_numbers():
    usage = codebook_usage(torch.tensor([0, 1, 2, 3]), 8)
    assert usage["perplexity"] == pytest.approx(4.0) and usage["codes_used"] == pytest.approx(0.5)


def test_efficientnet_features_and_perceptual_distance():
    from unclip.models.perceptual import load_efficientnet_features, perceptual_distance

    features = load_efficientnet_features("cpu", resize=64)
    images = _shapes(32)
    pooled, maps = features(images)
    assert pooled.shape == (4, 1280) and len(maps) == 5 and maps[-1].shape[1] == 1280
    assert not any(p.requires_grad for p in features.parameters())
    features.train()
    assert not features.net.training                                      # BatchNorm stays frozen
    same = perceptual_distance(features, images, images)
    other = perceptual_distance(features, images, images.flip(0))
    assert same.abs().max() < 1e-6 and (other > 0.01).all()


def test_vq_stage_loss_decreases_on_a_tiny_batch():
    from unclip.train.stages.vq import VQStage, VQStageConfig

    torch.manual_seed(0)
    cfg = from_dict(VQStageConfig, {
        "model": {"image_size": 16, "base_channels": 8, "embed_dim": 8, "codebook_size": 16},
        "loss": {"perceptual_weight": 0.1, "perceptual_resize": 32}})
    stage = VQStage(cfg)
    stage.setup(torch.device("cpu"))
    model = stage.build_model()
    batch = {"image": _shapes(16)[:2], "caption": ["", ""], "meta": [{}, {}]}
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    losses = []
    for _ in range(15):
        loss, logs = stage.loss(model, batch, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert {"recon", "vq", "perceptual", "psnr", "perplexity"} <= set(logs)
    assert losses[-1] < 0.7 * losses[0]


def test_normalized_codebook_lives_on_the_unit_sphere():
    torch.manual_seed(0)
    cfg = VQConfig(image_size=16, base_channels=8, embed_dim=8, codebook_size=16, normalize=True)
    model = VQModel(cfg).train()
    out = model(_shapes(16))
    assert out["recon"].shape == (4, 3, 16, 16)
    torch.testing.assert_close(model.codebook.embed.norm(dim=1), torch.ones(16))
    model.eval()
    torch.testing.assert_close(model.encode(_shapes(16)), out["codes"])
