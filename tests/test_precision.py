"""Inference precision (``unclip.precision``): auto/fp32/bf16 in the pipelines and the CLI, and the
channels-last sampling layout: same images up to float error, fp32 diffusion arithmetic, settings recorded."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.pipeline import tiny_pipeline
from unclip.cli import main
from unclip.diffusion.samplers import ddim_sample
from unclip.errors import UnclipError
from unclip.pipelines.sampling import sample_decoder, sample_upsampler
from unclip.precision import autocast, native_bf16, resolve_precision

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def full():
    return tiny_pipeline("full")


def test_resolve_precision():
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16("cpu") else "fp32")
    assert not native_bf16("meta")
    with pytest.raises(UnclipError, match="precision must be one of auto, fp32, bf16"):
        resolve_precision("fp16", "cpu")
    with autocast("bf16", "cpu"):
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.float32


def test_bf16_pipeline_is_close_to_fp32_deterministic_and_recorded(full):
    run = lambda p: full(["a red circle", "a blue square"], seed=3, progress=False, output_type="pt", precision=p)  # noqa: E731
    fp32, bf16 = run("fp32"), run("bf16")
    assert bf16.images.dtype == torch.float32
    assert torch.equal(run("bf16").images, bf16.images)                       # deterministic per seed
    diff = (bf16.images - fp32.images).abs()  # random tiny nets saturate, so a few pixels flip sign
    assert 0 < diff.mean() < 0.1 and diff.median() < 0.01, (diff.mean(), diff.median())
    assert {s["precision"] for s in bf16.settings["stages"].values()} == {"bf16"}
    auto = full(["a red circle"], seed=3, progress=False, output_type="pt").settings["stages"]
    assert {s["precision"] for s in auto.values()} == {resolve_precision("auto", "cpu")}
    with pytest.raises(UnclipError, match="precision must be one of"):
        run("half")


def test_samplers_keep_the_input_dtype_under_autocast(full):
    """Network outputs are bf16 under autocast; the sampler's arithmetic must stay in x_T's dtype."""
    model, diffusion = full.upsampler.model, full.upsampler.diffusion
    x_T, low = torch.randn(2, 3, 32, 32), torch.rand(2, 3, 16, 16) * 2 - 1
    seen = []
    with torch.no_grad(), autocast("bf16", "cpu"):
        out = ddim_sample(model, x_T, diffusion, steps=3, model_kwargs={"low_res": low},
                          callback=lambda i, n, x, x0: seen.append((x.dtype, x0.dtype)))
    assert out.dtype == torch.float32 and set(seen) == {(torch.float32, torch.float32)}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def test_one_decoder_forward_in_bf16_and_channels_last(full):
    model, text = full.decoder.model, full.encoder.encode_text(["a red circle", "a shape"])
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([500, 20])
    kw = dict(image_embed=text.embed, text_tokens=text.tokens, text_mask=text.mask)
    fp32 = model(x, t, **kw)
    with autocast("bf16", "cpu"):
        assert _relative(model(x, t, **kw).float(), fp32) < 0.05
    assert _relative(model(x.contiguous(memory_format=torch.channels_last), t, **kw), fp32) < 1e-5


@torch.no_grad()
def test_channels_last_sampling_gives_the_same_images(full):
    text = full.encoder.encode_text(["a red circle", "a shape"])
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    kw = dict(image_embed=text.embed, text=text, guidance_scale=1.0, steps=3)
    nchw = sample_decoder(full.decoder.model, full.decoder.diffusion, x_T, **kw)
    nhwc = sample_decoder(full.decoder.model, full.decoder.diffusion, x_T, channels_last=True, **kw)
    assert nhwc.is_contiguous() and _relative(nhwc, nchw) < 1e-3
    up_T = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    a = sample_upsampler(full.upsampler.model, full.upsampler.diffusion, nchw, up_T, steps=3)
    b = sample_upsampler(full.upsampler.model, full.upsampler.diffusion, nchw, up_T, steps=3, channels_last=True)
    assert b.is_contiguous() and _relative(b, a) < 1e-3


def test_cli_precision_flag(tmp_path, capsys):
    model = tiny_pipeline("full").save(tmp_path / "pipe")
    out = tmp_path / "out"
    assert main(["generate", "a red circle", "-n", "1", "--seed", "0", "--model", str(model), "--quiet",
                 "--precision", "fp32", "--out-dir", str(out)]) == 0
    record = json.loads((out / "generation.json").read_text())
    assert {s["precision"] for s in record["settings"]["stages"].values()} == {"fp32"}
    with pytest.raises(SystemExit) as exc:
        main(["generate", "a red circle", "--model", str(model), "--precision", "fp16"])
    assert exc.value.code != 0
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
