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
    for key in ("fid", "kid", "baseline_fid", "precision", "coverage", "diversity", "shapes_exact"):
        assert key in metrics, key
    # an untrained decoder draws noise: far from real shapes, unlike a second real sample
    assert metrics["fid"] > metrics["baseline_fid"]
    assert metrics["shapes_exact"] == 0.0
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    assert (out / "samples.png").stat().st_size > 0
    assert "real vs real" in capsys.readouterr().out


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
