"""``unclip generate / vary / interpolate / textdiff`` on tiny pipelines: outputs, records and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.pipeline import tiny_pipeline
from unclip.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    glide = tiny_pipeline("glide", upsampler=False).save(root / "glide")
    unclip = tiny_pipeline("unclip").save(root / "unclip")
    red = root / "red.png"
    Image.new("RGB", (24, 24), (220, 30, 30)).save(red)
    blue = root / "blue.png"
    Image.new("RGB", (24, 24), (30, 30, 220)).save(blue)
    corrupt = root / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return {"glide": str(glide), "unclip": str(unclip), "red": str(red), "blue": str(blue), "corrupt": str(corrupt)}


def _run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_grid_and_out_dir(tmp_path, models, capsys):
    out = tmp_path / "grid.png"
    code, stdout, _ = _run(["generate", "a red circle", "-n", "3", "--seed", "0", "--out", str(out),
                            "--model", models["glide"], "--quiet", "--decoder-steps", "2"], capsys)
    assert code == 0 and out.is_file() and str(out) in stdout
    grid = Image.open(out)
    assert grid.size[0] > 3 * 16
    zoomed = tmp_path / "zoomed.png"
    code, _, _ = _run(["generate", "a red circle", "-n", "3", "--seed", "0", "--out", str(zoomed), "--zoom", "3",
                       "--model", models["glide"], "--quiet", "--decoder-steps", "2"], capsys)
    big = Image.open(zoomed)
    assert code == 0 and big.size == (grid.size[0] * 3 - 4 * 2 * 2, grid.size[1] * 3 - 2 * 2 * 2)
    # nearest-neighbour: each sampled pixel becomes a 3x3 block identical to the unzoomed grid
    assert big.getpixel((2 + 4, 2 + 7)) == grid.getpixel((2 + 1, 2 + 2))
    out_dir = tmp_path / "samples"
    code, stdout, _ = _run(["generate", "a red circle", "-n", "2", "--seed", "5", "--out-dir", str(out_dir),
                            "--model", models["glide"], "--quiet", "--decoder-steps", "2"], capsys)
    assert code == 0
    record = json.loads((out_dir / "generation.json").read_text())
    assert [im["seed"] for im in record["images"]] == [5, 6]
    assert record["settings"]["stages"]["decoder"]["steps"] == 2 and record["prompts"] == ["a red circle"]
    first = out_dir / record["images"][1]["file"]
    assert first.is_file()
    # Image 1 is reproduced alone from its recorded seed.
    again = tmp_path / "again"
    _run(["generate", "a red circle", "-n", "1", "--seed", "6", "--out-dir", str(again), "--model", models["glide"],
          "--quiet", "--decoder-steps", "2"], capsys)
    redo = json.loads((again / "generation.json").read_text())["images"][0]["file"]
    a = torch.from_numpy(np.asarray(Image.open(first), dtype=np.float32))
    b = torch.from_numpy(np.asarray(Image.open(again / redo), dtype=np.float32))
    # The same image up to float rounding, which these random tiny nets amplify (see ROUNDING in
    # tests/test_pipeline.py): a mean within 0.1 of the [-1, 1] range, i.e. 12.75 uint8 levels.
    assert (a - b).abs().mean() < 0.1 * 127.5
    # --spacing: recorded per stage, and another grid is another image from the same seed
    quad = tmp_path / "quadratic"
    code, _, _ = _run(["generate", "a red circle", "-n", "1", "--seed", "6", "--out-dir", str(quad), "--model",
                       models["glide"], "--quiet", "--decoder-steps", "2", "--spacing", "quadratic"], capsys)
    record = json.loads((quad / "generation.json").read_text())
    assert code == 0 and record["settings"]["stages"]["decoder"]["spacing"] == "quadratic"
    c = torch.from_numpy(np.asarray(Image.open(quad / record["images"][0]["file"]), dtype=np.float32))
    assert (c - b).abs().max() > 1


def test_default_model_is_a_shipped_one(tmp_path, capsys):
    from unclip.pipelines.registry import default_model, shipped_models

    assert default_model() in shipped_models()
    out_dir = tmp_path / "default"
    code, stdout, _ = _run(["generate", "a large red circle in the center", "-n", "1", "--seed", "0", "--quiet",
                            "--prior-steps", "2", "--decoder-steps", "2", "--out-dir", str(out_dir)], capsys)
    assert code == 0, stdout
    assert json.loads((out_dir / "generation.json").read_text())["model"] == default_model()


def test_emoji_is_the_default_and_every_shipped_model_generates(tmp_path, capsys):
    from unclip.pipelines.registry import default_model, shipped_models

    assert default_model() == "emoji" and {"emoji", "shapes"} <= set(shipped_models())
    fast = ["--prior-steps", "2", "--decoder-steps", "2"]
    # emoji: 256 px through its upsampler, 64 px from the latent decoder alone; shapes: 32 px, no upsampler
    for name, prompt, size, extra in (("emoji", "a Noto-style emoji of red apple", 256, ["--upsampler-steps", "2"]),
                                      ("emoji", "a Noto-style emoji of red apple", 64, ["--base-only"]),
                                      ("shapes", "a large red circle in the center", 32, [])):
        out = tmp_path / f"{name}-{size}.png"
        zoom = 1 if size > 64 else 2
        code, stdout, _ = _run(["generate", prompt, "--model", name, "-n", "2", "--seed", "0", "--quiet", "--zoom",
                                str(zoom), *fast, *extra, "--out", str(out)], capsys)
        assert code == 0, stdout
        with Image.open(out) as grid:  # two images side by side, enlarged ``zoom`` times, 2 px gaps and borders
            assert grid.size == (2 * zoom * size + 3 * 2, zoom * size + 2 * 2), (name, size)
    code, _, err = _run(["generate", "a large red circle", "--model", "shapes", "--base-only", "--quiet"], capsys)
    assert code == 2 and "no upsampler" in err


def test_generate_errors_are_one_line(tmp_path, models, capsys):
    cases = [
        (["generate", "", "--model", models["glide"]], "empty prompt"),
        (["generate", "a red circle", "--model", "no-such-model"], "--model PATH"),
        (["generate", "a red circle", "--model", str(tmp_path / "nope")], "not found"),
        (["generate", "a red circle", "--model", models["glide"], "--out", str(tmp_path / "x.jpg")], ".png"),
        (["generate", "a red circle", "--model", models["glide"], "--out", str(tmp_path / "no" / "x.png")],
         "does not exist"),
        (["generate", "a red circle", "--model", models["unclip"], "--quiet"], "no prior"),
        (["generate", "a red circle", "--model", models["glide"], "--sampler", "euler", "--quiet"], "unknown sampler"),
        (["vary", models["corrupt"], "--model", models["unclip"]], "cannot read image"),
        (["vary", str(tmp_path / "missing.png"), "--model", models["unclip"]], "image not found"),
        (["vary", models["red"], "--model", models["glide"], "--quiet"], "text-only"),
        (["textdiff", models["red"], "--from", " ", "--to", "x", "--model", models["unclip"]], "non-empty"),
    ]
    for args, message in cases:
        code, stdout, err = _run(args, capsys)
        assert code == 2, args
        lines = [line for line in err.strip().splitlines() if line]
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, err)
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.jpg"))
    with pytest.raises(SystemExit) as exc:  # argparse range checks exit 2 too
        main(["generate", "a red circle", "-n", "0"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["interpolate", models["red"], models["blue"], "--frames", "1"])
    capsys.readouterr()


def test_vary_interpolate_textdiff_write_files(tmp_path, models, capsys):
    common = ["--model", models["unclip"], "--quiet", "--seed", "0", "--decoder-steps", "2", "--upsampler-steps", "2"]
    out = tmp_path / "vary.png"
    code, stdout, _ = _run(["vary", models["red"], "-n", "2", "--out", str(out), *common], capsys)
    assert code == 0 and out.is_file() and str(out) in stdout
    out = tmp_path / "vary-inv.png"
    assert _run(["vary", models["red"], "-n", "2", "--invert", "--eta", "0.5", "--out", str(out), *common], capsys)[0] == 0
    out = tmp_path / "interp.png"
    code, stdout, _ = _run(["interpolate", models["red"], models["blue"], "--frames", "3", "--out", str(out),
                            *common], capsys)
    assert code == 0 and out.is_file() and out.with_suffix(".gif").is_file()
    gif = Image.open(out.with_suffix(".gif"))
    assert gif.n_frames >= 3
    out = tmp_path / "diff.png"
    code, stdout, _ = _run(["textdiff", models["red"], "--from", "a red circle", "--to", "a blue square",
                            "--frames", "3", "--out", str(out), *common], capsys)
    assert code == 0 and out.is_file() and out.with_suffix(".gif").is_file()


def test_shipped_models_fit_the_budget():
    from unclip.pipelines.registry import models_root

    total = sum(f.stat().st_size for f in models_root().rglob("*") if f.is_file())
    assert total <= 80e6, f"shipped models take {total / 1e6:.1f} MB; the budget is 80 MB"


def test_base_only_stops_after_the_decoder(tmp_path, models, capsys):
    """`vary --base-only` on a pipeline with an upsampler: the decoder's 16 px image, not the 32 px one."""
    from PIL import Image as PILImage

    red = tmp_path / "red.png"
    PILImage.new("RGB", (16, 16), "red").save(red)
    for extra, size in (([], 32), (["--base-only"], 16)):
        out = tmp_path / f"v{size}.png"
        code, stdout, _ = _run(["vary", str(red), "--model", models["unclip"], "-n", "1", "--seed", "0", "--quiet",
                                "--decoder-steps", "2", "--out", str(out), *extra], capsys)
        assert code == 0, stdout
        with Image.open(out) as grid:
            assert grid.size == (size + 2 * 2, size + 2 * 2)
    code, _, err = _run(["vary", str(red), "--model", models["unclip"], "--base-only", "--upsampler-steps", "2",
                         "--quiet"], capsys)
    assert code == 2 and "--base-only" in err
