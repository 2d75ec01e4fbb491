"""`unclip eval` and `unclip models` end to end on a tiny random pipeline."""

from __future__ import annotations

import json

import pytest

from unclip.cli import main
from unclip.data.shapes import build_shapes

from helpers.pipeline import tiny_pipeline


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    build_shapes(root / "shapes", image_size=32, count=200, seed=0)
    tiny_pipeline("glide", upsampler=False).save(root / "pipe")
    return root


def test_eval_writes_report_with_baseline_and_shapes_accuracy(tiny_setup, capsys):
    out = tiny_setup / "report"
    code = main(["eval", "--model", str(tiny_setup / "pipe"), "--data", str(tiny_setup / "shapes"),
                 "--out", str(out), "--num-prompts", "4", "--images-per-prompt", "2", "--set", "decoder_steps=2"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())["results"][0]
    assert metrics["n_generated"] == 8 and metrics["n_prompts"] == 4
    # the real reference is drawn per prompt: as many real images as generated ones, of the same captions
    assert metrics["reference"] == "per prompt" and metrics["n_real"] == 8 and 4 <= metrics["n_real_distinct"] <= 8
    assert metrics["baseline_split"] == "test" and 0.0 <= metrics["baseline_same_caption"] <= 1.0
    for key in ("fid", "kid", "baseline_fid", "precision", "coverage", "diversity", "shapes_exact"):
        assert key in metrics, key
    # an untrained decoder draws noise: far from real shapes, unlike a second real sample
    assert metrics["fid"] > metrics["baseline_fid"]
    assert metrics["shapes_exact"] == 0.0
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    assert (out / "samples.png").stat().st_size > 0
    assert "real vs real" in capsys.readouterr().out


def test_eval_clip_scores_beside_the_real_images_of_the_same_prompts(tiny_setup):
    import torch
    import torch.nn.functional as F

    from helpers.pipeline import tiny_encoder
    from unclip.data import open_dataset
    from unclip.eval.clip_metrics import clip_score
    from unclip.eval.evaluate import choose_prompts, split_captions

    tiny_encoder().save(tiny_setup / "evalclip")
    out = tiny_setup / "clip-report"
    assert main(["eval", "--model", str(tiny_setup / "pipe"), "--data", str(tiny_setup / "shapes"),
                 "--out", str(out), "--num-prompts", "3", "--images-per-prompt", "1", "--set", "decoder_steps=2",
                 "--eval-encoder", str(tiny_setup / "evalclip")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["results"][0]
    assert 0.0 <= metrics["r_precision"] <= 1.0 and 0.0 <= metrics["real_r_precision"] <= 1.0
    # the real column by hand: the first test image of each prompt, scored by the same encoder
    prompts = choose_prompts(split_captions(tiny_setup / "shapes", "test"), 3, metrics["seed"])
    dataset = open_dataset(tiny_setup / "shapes", split="test")
    firsts: dict[str, torch.Tensor] = {}
    for i in range(len(dataset)):
        firsts.setdefault(dataset[i]["caption"], dataset[i]["image"])
    encoder = tiny_encoder()
    images = F.interpolate(torch.stack([firsts[p] for p in prompts]), size=(encoder.image_size,) * 2,
                           mode="bilinear", align_corners=False)
    with torch.no_grad():
        expected = clip_score(encoder.encode_image(images), encoder.encode_text(prompts).embed)
    assert abs(metrics["real_clip_score"] - expected) < 1e-3
    # R-precision of the same real images by hand: the split has fewer than 100 captions, so each image is
    # ranked among all of them, and the report says how many
    from unclip.eval.clip_metrics import r_precision

    pool = sorted(set(split_captions(tiny_setup / "shapes", "test")))
    assert len(pool) < 100 and metrics["r_precision_pool"] == len(pool)
    with torch.no_grad():
        expected = r_precision(encoder.encode_image(images), prompts, pool, encoder.encode_text(pool).embed,
                               pool=100, seed=metrics["seed"])
    assert metrics["real_r_precision"] == pytest.approx(expected)
    assert "R-precision pool" in (out / "report.md").read_text()
    assert "the real images of the same prompts" in (out / "report.md").read_text()


def test_eval_sweep_plots_each_value(tiny_setup):
    out = tiny_setup / "sweep"
    code = main(["eval", "--model", str(tiny_setup / "pipe"), "--data", str(tiny_setup / "shapes"),
                 "--out", str(out), "--num-prompts", "3", "--images-per-prompt", "1",
                 "--set", "decoder_steps=2", "--sweep", "decoder_guidance=1,3"])
    assert code == 0
    payload = json.loads((out / "metrics.json").read_text())
    assert [r["decoder_guidance"] for r in payload["results"]] == [1, 3]
    assert (out / "sweep.png").stat().st_size > 0
    assert "![sweep samples](sweep-samples.png)" in (out / "report.md").read_text()
    from PIL import Image

    with Image.open(out / "sweep-samples.png") as grid:  # one row per guidance value, one column per image
        assert grid.width < grid.height


def test_eval_bad_input_is_one_line(tiny_setup, capsys):
    assert main(["eval", "--model", str(tiny_setup / "pipe"), "--data", str(tiny_setup / "missing"),
                 "--out", str(tiny_setup / "x")]) == 2
    assert main(["eval", "--model", str(tiny_setup / "pipe"), "--data", str(tiny_setup / "shapes"),
                 "--out", str(tiny_setup / "x"), "--num-prompts", "2", "--set", "bogus_setting=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: dataset not found") and err[-1].startswith("error: unknown pipeline setting")
    assert not (tiny_setup / "x").exists()


def test_models_lists_local_pipelines(tiny_setup, capsys):
    assert main(["models", "--search", str(tiny_setup)]) == 0
    out = capsys.readouterr().out
    assert "shipped models" in out and str(tiny_setup / "pipe") in out and "tiny-glide" in out


def test_eval_recognisability_scores_samples_and_variations(tiny_setup):
    """--recognisability on an unCLIP pipeline: samples, their variations, ceiling and chance, by Lite1."""
    from helpers.pipeline import tiny_pipeline as make

    make("full", upsampler=False).save(tiny_setup / "full")
    out = tiny_setup / "recog-report"
    assert main(["eval", "--model", str(tiny_setup / "full"), "--data", str(tiny_setup / "shapes"), "--out", str(out),
                 "--num-prompts", "4", "--images-per-prompt", "1", "--split", "train", "--recognisability",
                 "--set", "decoder_steps=2", "--set", "prior_steps=2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["results"][0]
    # the ceiling: the 32 px references themselves at the model's 16 px, read by Lite1 (clean shapes survive it)
    assert 0.5 <= metrics["recognised_ceiling"] <= 1.0 and metrics["recognised_n"] == 4
    for key in ("recognised", "recognised_chance", "variation_recognised"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert "recognised" in (out / "report.md").read_text()
    assert main(["eval", "--model", str(tiny_setup / "full"), "--data", str(tiny_setup / "shapes"),
                 "--out", str(out / "bad"), "--num-prompts", "2", "--reference-data", str(tiny_setup / "pipe"),
                 "--set", "decoder_steps=2", "--set", "prior_steps=2"]) == 2
