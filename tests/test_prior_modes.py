"""Where the decoder's CLIP image embedding comes from (unCLIP §5.1 "Importance of the prior"):
``image_embed_source`` = prior / text / none on tiny pipelines, the AR prior end to end, CLI and eval --set."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers.pipeline import tiny_component, tiny_encoder, tiny_pipeline
from unclip.cli import main
from unclip.cli.eval import _parse_setting
from unclip.errors import UnclipError
from unclip.pipelines.sampling import fast_layout, sample_decoder, sample_upsampler
from unclip.pipelines.unclip import UnCLIPPipeline

MODES = ("prior", "text", "none")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def full():
    return tiny_pipeline("full")


def _pt(pipe, prompts, **kw):
    return pipe(prompts, progress=False, output_type="pt", **kw)


def _reference(pipe, prompt: str, seed: int, z_from) -> torch.Tensor:
    """One image built by hand from the samplers, as the pipeline did before the option existed."""
    g = torch.Generator().manual_seed(seed)
    prior_noise = pipe.prior.noise(1, generator=g, device="cpu")
    dec_noise = torch.randn(1, 3, 16, 16, generator=g)
    up_noise = torch.randn(1, 3, 32, 32, generator=g)
    text = pipe.encoder.encode_text([prompt])
    z = z_from(pipe, text, prior_noise)
    x = sample_decoder(pipe.decoder.model, pipe.decoder.diffusion, dec_noise, image_embed=z, text=text,
                       guidance_scale=3.0, sampler="ddim", steps=4, channels_last=fast_layout("decoder", "fp32", "cpu"))
    return sample_upsampler(pipe.upsampler.model, pipe.upsampler.diffusion, x, up_noise, sampler="ddim", steps=4,
                            channels_last=fast_layout("upsampler", "fp32", "cpu"))


def _from_prior(pipe, text, noise):
    return pipe.prior.sample(text, noise=noise, steps=4, sampler="ddim", guidance_scale=2.0)


@torch.no_grad()
@pytest.mark.parametrize("mode", MODES)
def test_each_mode_matches_a_hand_built_reference(full, mode):
    """'prior' gives the same pixels as before; 'text' uses z_t as z_i; 'none' the learned null z_i."""
    z_from = {"prior": _from_prior, "text": lambda p, t, n: t.embed,
              "none": lambda p, t, n: p.decoder.model.null_image_embed[None]}[mode]
    # One image per call: batched encoder/UNet numerics differ at 1e-3 on these random tiny nets.
    for seed in (5, 6):
        out = _pt(full, ["a red circle"], seed=seed, image_embed_source=mode, precision="fp32")
        assert torch.allclose(out.images, _reference(full, "a red circle", seed, z_from), atol=1e-6)
    assert out.settings["image_embed_source"] == mode
    assert ("prior" in out.settings["stages"]) == (mode == "prior")


def test_default_is_prior_and_modes_differ(full):
    images = {m: _pt(full, ["a red circle", "a blue square"], seed=1, image_embed_source=m).images for m in MODES}
    assert torch.equal(_pt(full, ["a red circle", "a blue square"], seed=1).images, images["prior"])
    for a, b in (("prior", "text"), ("prior", "none"), ("text", "none")):
        assert (images[a] - images[b]).abs().max() > 1e-3, (a, b)
    # "none" ignores z_i, so only the caption tokens separate the two prompts.
    none_again = _pt(full, ["a red circle", "a blue square"], seed=1, image_embed_source="none").images
    assert torch.equal(none_again, images["none"])


@torch.no_grad()
def test_null_embedding_is_the_dropped_condition(full):
    """Passing the null embedding as z_i equals the decoder's own CFG drop of z_i."""
    model = full.decoder.model
    text = full.encoder.encode_text(["a red circle", "a shape"])
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 60])
    common = dict(text_tokens=text.tokens, text_mask=text.mask, drop_text=torch.zeros(2, dtype=torch.bool))
    dropped = model(x, t, image_embed=torch.randn(2, 16), drop_image=torch.ones(2, dtype=torch.bool), **common)
    null = model(x, t, image_embed=model.null_image_embed[None].expand(2, -1),
                 drop_image=torch.zeros(2, dtype=torch.bool), **common)
    assert torch.allclose(dropped, null, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_guidance_keeps_the_unconditional_branch(full, mode, monkeypatch):
    """Every guided decoder call: conditional half keeps z_i and caption, unconditional half drops both."""
    model = full.decoder.model
    seen = []
    original = type(model).forward

    def spy(self, x, t, **kw):
        if self is model:
            seen.append((kw["drop_image"].tolist(), kw["drop_text"].tolist()))
        return original(self, x, t, **kw)

    monkeypatch.setattr(type(model), "forward", spy)
    _pt(full, ["a red circle"], seed=0, num_images_per_prompt=2, image_embed_source=mode, decoder_guidance=3.0)
    assert len(seen) == 4  # one batched call per decoder step
    half = [False, False]
    assert all(drop_image == half + [True, True] and drop_text == half + [True, True] for drop_image, drop_text in seen)


def test_prior_free_modes_work_without_a_prior_and_bad_values_fail():
    pipe = tiny_pipeline("unclip", upsampler=False)
    for mode in ("text", "none"):
        assert _pt(pipe, ["a red circle"], seed=0, image_embed_source=mode).images.shape == (1, 3, 16, 16)
    with pytest.raises(UnclipError, match="no prior") as err:
        _pt(pipe, ["a red circle"], seed=0)
    assert "\n" not in str(err.value)
    for bad, hint in (("clip", "got 'clip'"), (None, "image_embed_source=none"), ("Text", "'Text'")):
        with pytest.raises(UnclipError, match="image_embed_source must be") as err:
            _pt(pipe, ["a red circle"], seed=0, image_embed_source=bad)
        assert hint in str(err.value) and "\n" not in str(err.value)
    glide = tiny_pipeline("glide", upsampler=False)
    with pytest.raises(UnclipError, match="text-only"):
        _pt(glide, ["a red circle"], seed=0, image_embed_source="text")


def _tiny_ar_component(encoder):
    from unclip.models.ar_prior import ARPrior, ARPriorConfig
    from unclip.pipelines.prior_adapter import PriorComponent

    torch.manual_seed(0)
    config = ARPriorConfig(embed_dim=encoder.embed_dim, token_dim=encoder.token_dim, max_text_len=encoder.max_len,
                           pca_dims=6, num_buckets=16, width=32, layers=1, heads=2)
    prior = ARPrior(config).eval()
    embeds = F.normalize(torch.randn(200, encoder.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    prior.fit_codebook(embeds, embeds)
    return PriorComponent(prior, {"role": "prior", "kind": "autoregressive", "sample": {"num_candidates": 2}})


def test_autoregressive_prior_pipeline_end_to_end(tmp_path, capsys):
    """An AR-prior pipeline saves, loads and generates (seeded) in every mode, through the CLI too."""
    encoder = tiny_encoder()
    pipe = UnCLIPPipeline(encoder, tiny_component("decoder", encoder), prior=_tiny_ar_component(encoder),
                          defaults={s: {"steps": 3} for s in ("prior", "decoder")}, name="tiny-ar")
    pipe.save(tmp_path / "ar")
    loaded = UnCLIPPipeline.load(tmp_path / "ar")
    a = _pt(loaded, ["a red circle"], seed=2, num_images_per_prompt=2)
    assert torch.equal(a.images, _pt(pipe, ["a red circle"], seed=2, num_images_per_prompt=2).images)
    assert not torch.allclose(a.images[0], a.images[1])
    z_a = loaded.prior.sample(encoder.encode_text(["a red circle"]), noise=torch.randn(1, 16), steps=1,
                              sampler="ddim", guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert z_a.shape == (1, 16) and torch.isfinite(z_a).all()
    assert not torch.equal(_pt(loaded, ["a red circle"], seed=2, image_embed_source="text").images, a.images[:1])
    out = tmp_path / "g.png"
    assert main(["generate", "a red circle", "--model", str(tmp_path / "ar"), "-n", "1", "--seed", "0", "--quiet",
                 "--image-embed-source", "none", "--out", str(out)]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out


def test_cli_flag_and_eval_set(tmp_path, capsys):
    model = tiny_pipeline("unclip", upsampler=False).save(tmp_path / "unclip")
    out_dir = tmp_path / "text"
    assert main(["generate", "a red circle", "--model", str(model), "-n", "1", "--seed", "0", "--quiet",
                 "--image-embed-source", "text", "--out-dir", str(out_dir)]) == 0
    assert '"image_embed_source": "text"' in (out_dir / "generation.json").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit):  # argparse rejects it before the model loads
        main(["generate", "a red circle", "--model", str(model), "--image-embed-source", "clip"])
    assert "invalid choice: 'clip'" in capsys.readouterr().err
    # `unclip eval --set image_embed_source=text` reaches the pipeline as the string.
    assert _parse_setting("image_embed_source=text") == ("image_embed_source", "text")
    assert _parse_setting("image_embed_source=none") == ("image_embed_source", "none")


def test_eval_sweeps_the_source(tmp_path):
    """`unclip eval --sweep image_embed_source=text,none` (a string-valued sweep) writes one result per mode."""
    import json

    from unclip.data.shapes import build_shapes

    build_shapes(tmp_path / "shapes", image_size=32, count=120, seed=0)
    tiny_pipeline("unclip", upsampler=False).save(tmp_path / "pipe")
    out = tmp_path / "report"
    assert main(["eval", "--model", str(tmp_path / "pipe"), "--data", str(tmp_path / "shapes"), "--out", str(out),
                 "--num-prompts", "3", "--images-per-prompt", "1", "--set", "decoder_steps=2",
                 "--sweep", "image_embed_source=text,none"]) == 0
    results = json.loads((out / "metrics.json").read_text())["results"]
    assert [r["image_embed_source"] for r in results] == ["text", "none"]
    assert main(["eval", "--model", str(tmp_path / "pipe"), "--data", str(tmp_path / "shapes"), "--out", str(out),
                 "--num-prompts", "3", "--set", "image_embed_source=null"]) == 2  # YAML null: a one-line error


def test_prior_eval_reports_cpu_time_per_embedding():
    from types import SimpleNamespace

    from unclip.eval.prior_eval import evaluate_prior, format_table
    from helpers.pipeline import tiny_prior

    encoder = tiny_encoder()
    text = encoder.encode_text(["a red circle", "a blue square", "a shape", "a big purple star"])
    image = F.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    rows = SimpleNamespace(tensors={"image_embed": image, "text_embed": text.embed, "text_tokens": text.tokens,
                                    "text_mask": text.mask})
    result = evaluate_prior(tiny_prior(encoder).model, rows, steps=2)
    assert result["items"] == 4 and 0 < result["cpu_seconds_per_embedding"] < 10
    assert "ms CPU per embedding" in format_table(result)
