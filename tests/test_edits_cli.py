"""``unclip img2img`` / ``inpaint`` / ``restyle`` on tiny pipelines: outputs match the Python API; one-line errors."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from helpers.pipeline import tiny_pipeline
from unclip.cli import main
from unclip.pipelines import load_pipeline
from unclip.pipelines.edits import box_mask
from unclip.pipelines.images import image_to_tensor

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--quiet", "--decoder-steps", "2", "--prior-steps", "2", "--precision", "fp32"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("edits")
    model = tiny_pipeline("full", upsampler=False).save(root / "model")
    image = root / "red.png"
    Image.new("RGB", (16, 16), (220, 30, 30)).save(image)
    box_mask((0, 0, 8, 8), 16, 16).save(root / "mask.png")
    box_mask((0, 0, 8, 8), 20, 20).save(root / "wrong-size.png")
    return {"model": str(model), "image": str(image), "mask": str(root / "mask.png"),
            "wrong": str(root / "wrong-size.png")}


def _run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _pixels(path):
    return image_to_tensor(Image.open(path).convert("RGB"))


def test_img2img_cli_matches_the_api(tmp_path, files, capsys):
    out = tmp_path / "x.png"
    code, stdout, err = _run(["img2img", files["image"], "a blue square", "--strength", "0.5", "--seed", "3",
                              "--model", files["model"], "--out", out, *FAST], capsys)
    assert code == 0, err
    assert str(out) in stdout and "strength 0.5" in stdout
    pipe = load_pipeline(files["model"])
    direct = pipe.img2img(Image.open(files["image"]), "a blue square", strength=0.5, seed=3, decoder_steps=2,
                          prior_steps=2, precision="fp32", progress=False)
    grid = Image.open(out).convert("RGB").crop((2, 2, 18, 18))              # image_grid pads by 2 px
    assert grid.tobytes() == direct.images[0].tobytes()
    kept = tmp_path / "same.png"
    assert _run(["img2img", files["image"], "--strength", "0", "--model", files["model"], "--out", kept,
                 *FAST], capsys)[0] == 0
    assert torch.equal(_pixels(kept)[:, 2:18, 2:18], _pixels(files["image"]))


def test_inpaint_cli_mask_and_box_agree(tmp_path, files, capsys):
    outs = []
    for i, where in enumerate((["--mask", files["mask"]], ["--box", "0,0,0.5,0.5"])):
        out = tmp_path / f"in{i}.png"
        code, _, err = _run(["inpaint", files["image"], "a blue square", *where, "--seed", "1", "--resample", "2",
                             "--model", files["model"], "--out", out, *FAST], capsys)
        assert code == 0, err
        outs.append(_pixels(out)[:, 2:18, 2:18])
    assert torch.equal(outs[0], outs[1])
    original = _pixels(files["image"])
    assert torch.equal(outs[0][:, 8:], original[:, 8:]) and torch.equal(outs[0][:, :, 8:], original[:, :, 8:])


@pytest.mark.parametrize("args,message", [
    (["inpaint", "{image}", "--model", "{model}"], "one of the arguments --mask --box is required"),
    (["inpaint", "{image}", "--box", "1,2,3", "--model", "{model}"], "x0,y0,x1,y1"),
    (["inpaint", "{image}", "--box", "10,10,5,5", "--model", "{model}"], "outside"),
    (["inpaint", "{image}", "--mask", "{wrong}", "--model", "{model}"], "20x20 pixels but the image is 16x16"),
    (["inpaint", "{image}", "--mask", "{image}.missing", "--model", "{model}"], "not found"),
    (["img2img", "{image}", "x", "--strength", "1.5", "--model", "{model}"], "out of range"),
    (["img2img", "{image}", "", "--model", "{model}"], "empty"),
    (["img2img", "{image}.missing", "x", "--model", "{model}"], "not found"),
    (["inpaint", "{image}", "x", "--box", "0,0,8,8", "--sampler", "dpm++2m", "--model", "{model}"], "dpm"),
])
def test_edit_errors_are_one_line(args, message, files, capsys, tmp_path):
    args = [a.format(**files) for a in args] + ["--out", str(tmp_path / "o.png"), "--quiet"]
    try:
        code = main(args)
    except SystemExit as exc:                                               # argparse: usage + one error line
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("error:") == 1 and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()
