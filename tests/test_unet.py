"""UNet contract: shapes under every conditioning combination, CFG dropout, upsampler, degradations."""

from __future__ import annotations

import itertools

import pytest
import torch

from unclip.checkpoint import load_model, save_model
from unclip.config import from_dict
from unclip.errors import ConfigError
from unclip.models.degrade import DegradeConfig, degrade, gaussian_blur, jpeg, make_low_res, noise_augment
from unclip.models.unet import UNet, UNetConfig, cfg_drop_masks

B, D, DT, L = 2, 8, 6, 5


def tiny(**kw) -> UNetConfig:
    base = dict(image_size=16, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                attention_resolutions=(8,), head_channels=16, context_dim=16)
    base.update(kw)
    return UNetConfig(**base)


def _inputs():
    torch.manual_seed(0)
    return dict(
        x=torch.randn(B, 3, 16, 16), t=torch.tensor([3, 70]),
        image_embed=torch.randn(B, D), text_tokens=torch.randn(B, L, DT),
        text_mask=torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool),
        text_embed=torch.randn(B, DT))


def _perturb_last_layers(model: UNet) -> None:
    """Zero-init output layers make a fresh UNet ignore everything; give them weights."""
    torch.manual_seed(1)
    for p in model.parameters():
        if p.abs().sum() == 0:
            p.data.normal_(0, 0.2)


@pytest.mark.parametrize("use_image,use_tokens,use_pooled,num_image_tokens",
                         [c for c in itertools.product([0, 1], [0, 1], [0, 1], [0, 4])
                          if not (c[0] == 0 and c[3] == 4)])
def test_shapes_every_conditioning(use_image, use_tokens, use_pooled, num_image_tokens):
    cfg = tiny(image_embed_dim=D * use_image, text_token_dim=DT * use_tokens, text_embed_dim=DT * use_pooled,
               num_image_tokens=num_image_tokens)
    model = UNet(cfg)
    _perturb_last_layers(model)
    inp = _inputs()
    kwargs = {}
    if use_image:
        kwargs["image_embed"] = inp["image_embed"]
    if use_tokens:
        kwargs.update(text_tokens=inp["text_tokens"], text_mask=inp["text_mask"])
    if use_pooled:
        kwargs["text_embed"] = inp["text_embed"]
    out = model(inp["x"], inp["t"], **kwargs)
    assert out.shape == (B, 3, 16, 16) and torch.isfinite(out).all()
    # Every condition must change the output (it is really wired in) ...
    for key in kwargs:
        if key == "text_mask":
            continue
        changed = dict(kwargs, **{key: kwargs[key] + 1.0})
        assert not torch.allclose(model(inp["x"], inp["t"], **changed), out), key
    # ... and channels-last input gives the same result.
    out_cl = model(inp["x"].to(memory_format=torch.channels_last), inp["t"], **kwargs)
    assert torch.allclose(out_cl, out, atol=1e-4, rtol=1e-4)  # kernels differ by thread count; a layout bug is O(1)


def test_text_mask_hides_padding_tokens():
    model = UNet(tiny(image_embed_dim=D, text_token_dim=DT))
    _perturb_last_layers(model)
    inp = _inputs()
    out = model(inp["x"], inp["t"], image_embed=inp["image_embed"], text_tokens=inp["text_tokens"],
                text_mask=inp["text_mask"])
    tokens = inp["text_tokens"].clone()
    tokens[0, 2:] = 100.0  # padding of sample 0
    out2 = model(inp["x"], inp["t"], image_embed=inp["image_embed"], text_tokens=tokens, text_mask=inp["text_mask"])
    assert torch.allclose(out[0], out2[0], atol=1e-5)


def test_cfg_dropout_uses_null_embeddings():
    model = UNet(tiny(image_embed_dim=D, text_token_dim=DT))
    _perturb_last_layers(model)
    inp = _inputs()
    x, t = inp["x"], inp["t"]
    cond = dict(image_embed=inp["image_embed"], text_tokens=inp["text_tokens"], text_mask=inp["text_mask"])
    all_drop = torch.ones(B, dtype=torch.bool)
    dropped = model(x, t, **cond, drop_image=all_drop, drop_text=all_drop)
    unconditional = model(x, t)  # None conditions = null embeddings
    assert torch.allclose(dropped, unconditional, atol=1e-5)
    # Dropping only sample 1 leaves sample 0 as conditioned.
    mask = torch.tensor([False, True])
    mixed = model(x, t, **cond, drop_image=mask, drop_text=mask)
    full = model(x, t, **cond)
    assert torch.allclose(mixed[0], full[0], atol=1e-5)
    assert torch.allclose(mixed[1], unconditional[1], atol=1e-5)
    # The null embeddings are learned parameters that receive gradients.
    model(x, t, **cond, drop_image=all_drop, drop_text=all_drop).pow(2).mean().backward()
    assert model.null_image_embed.grad is not None and model.null_image_embed.grad.abs().sum() > 0
    assert model.null_text_token.grad is not None and model.null_text_token.grad.abs().sum() > 0


def test_cfg_drop_masks_rates():
    g = torch.Generator().manual_seed(0)
    drop_image, drop_text = cfg_drop_masks(20000, 0.1, 0.5, generator=g)
    assert abs(drop_image.float().mean().item() - 0.1) < 0.01
    assert abs(drop_text.float().mean().item() - 0.5) < 0.02
    assert drop_image.dtype == torch.bool and drop_image.shape == (20000,)


def test_upsampler_shapes_and_noise_level():
    cfg = UNetConfig(image_size=32, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                     attention_resolutions=(), low_res_channels=3, noise_level_cond=True)
    model = UNet(cfg)
    _perturb_last_layers(model)
    assert not any("attn" in n or isinstance(m, torch.nn.MultiheadAttention) for n, m in model.named_modules())
    x, low = torch.randn(B, 3, 32, 32), torch.randn(B, 3, 16, 16)
    out = model(x, torch.tensor([1, 2]), low_res=low, noise_level=torch.tensor([0, 0]))
    assert out.shape == (B, 3, 32, 32)
    out2 = model(x, torch.tensor([1, 2]), low_res=low, noise_level=torch.tensor([5, 5]))
    assert not torch.allclose(out, out2)
    with pytest.raises(ValueError):
        model(x, torch.tensor([1, 2]))


def test_config_validation_and_round_trip(tmp_path):
    with pytest.raises(ConfigError):
        from_dict(UNetConfig, {"image_size": 30, "channel_mults": [1, 2, 4]})
    with pytest.raises(ConfigError):
        from_dict(UNetConfig, {"no_such_key": 1})
    model = UNet(tiny(image_embed_dim=D, text_token_dim=DT))
    _perturb_last_layers(model)
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    inp = _inputs()
    a = model.eval()(inp["x"], inp["t"], image_embed=inp["image_embed"])
    b = loaded(inp["x"], inp["t"], image_embed=inp["image_embed"])
    assert loaded.config == model.config and torch.allclose(a, b)


def test_degradations():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    assert torch.equal(degrade(images, DegradeConfig(kind="none"), g), images)
    blurred = degrade(images, DegradeConfig(kind="blur"), g)
    assert blurred.shape == images.shape and blurred.std() < images.std()
    constant = torch.full((1, 3, 9, 9), 0.5)
    assert torch.allclose(gaussian_blur(constant, torch.tensor([1.5])), constant, atol=1e-5)
    bsr = DegradeConfig(kind="bsr", blur_prob=1, resize_prob=1, noise_prob=1, jpeg_prob=1)
    out = degrade(images, bsr, g)
    assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1 and not torch.allclose(out, images)
    # Re-seeded and replayed (the blur above drew from g first), the chain repeats exactly; another seed
    # draws other degradations.
    replay = torch.Generator().manual_seed(0)
    degrade(images, DegradeConfig(kind="blur"), replay)
    assert torch.equal(degrade(images, bsr, replay), out)
    assert not torch.allclose(degrade(images, bsr, torch.Generator().manual_seed(1)), out)
    smooth = make_low_res(torch.zeros(1, 3, 16, 16), 8)
    assert torch.allclose(jpeg(smooth[0], 90), smooth[0], atol=0.02)
    assert make_low_res(images, 8).shape == (3, 3, 8, 8)
    aug = DegradeConfig(noise_levels=10)
    level = torch.tensor([0, 5, 9])
    noisy = noise_augment(images, level, aug, g)
    assert torch.equal(noisy[0], images[0]) and not torch.allclose(noisy[2], images[2])
    with pytest.raises(ConfigError):
        from_dict(DegradeConfig, {"jpeg_quality": [0, 200]})


def test_degradation_deterministic_by_generator():
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    cfg = DegradeConfig(kind="bsr")
    a = degrade(images, cfg, torch.Generator().manual_seed(3))
    b = degrade(images, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
