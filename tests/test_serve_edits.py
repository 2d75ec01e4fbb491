"""The img2img and inpaint endpoints: a test double for the checks, a tiny real pipeline for the pixels."""

from __future__ import annotations

import base64
import io
import shlex

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra (fastapi) is not installed")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from helpers.pipeline import tiny_pipeline  # noqa: E402
from test_serve_double import FakePipeline, _digest  # noqa: E402
from unclip.pipelines.edits import box_mask  # noqa: E402
from unclip.serve.app import create_app  # noqa: E402
from unclip.serve.config import ServeConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class FakeEditPipeline(FakePipeline):
    """The double plus the two edits."""

    def img2img(self, image, prompt=None, *, strength=0.6, num_images=1, seed=0, callback=None, progress=True,
                **settings):
        self._record("img2img", dict(size=image.size, prompt=prompt, strength=strength, num_images=num_images,
                                     seed=seed, **settings))
        return self._run([f"img2img|{_digest(image)}|{prompt}|{strength}"] * num_images, seed, callback, settings)

    def inpaint(self, image, mask, prompt=None, *, num_images=1, seed=0, callback=None, progress=True, **settings):
        self._record("inpaint", dict(size=image.size, mask=_digest(mask), prompt=prompt, num_images=num_images,
                                     seed=seed, **settings))
        return self._run([f"inpaint|{_digest(image)}|{_digest(mask)}|{prompt}"] * num_images, seed, callback, settings)


def _png(colour=(220, 30, 30), size=(24, 24), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _mask_png(size=24, box=(0, 0, 12, 12)) -> bytes:
    buffer = io.BytesIO()
    box_mask(box, size, size).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def fake():
    pipeline = FakeEditPipeline()
    with TestClient(create_app(pipeline, model_ref="tiny-model", config=ServeConfig())) as client:
        yield client, pipeline


def test_info_lists_the_edits(fake):
    client, _ = fake
    info = client.get("/api/info").json()
    assert info["operations"][-2:] == ["img2img", "inpaint"]
    assert info["edit_defaults"]["strength"] == 0.6 and info["edit_defaults"]["resample"] == 3
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/img2img" in paths and "/api/inpaint" in paths
    page = client.get("/").text
    assert 'id="strength"' in page and 'id="inpaint_canvas"' in page


def test_img2img_endpoint(fake):
    client, pipeline = fake
    response = client.post("/api/img2img", files={"image": ("apple.png", _png(), "image/png")},
                           data={"prompt": "a blue square", "strength": "0.35", "num_images": "2", "seed": "9",
                                 "prior_steps": "3", "decoder_steps": "2"})
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["seeds"] == [9, 10] and len(result["images"]) == 2
    name, call = pipeline.calls[-1]
    assert name == "img2img" and call["prompt"] == "a blue square" and call["strength"] == 0.35
    assert call["prior_steps"] == 3 and call["decoder_steps"] == 2
    assert result["command"] == ("unclip img2img apple.png 'a blue square' --model tiny-model --strength 0.35 "
                                 "--num-images 2 --seed 9 --prior-steps 3 --decoder-steps 2")
    # no caption: the image's own embedding, so the prior's settings are dropped
    response = client.post("/api/img2img", files={"image": ("a.png", _png(), "image/png")},
                           data={"prompt": " ", "prior_steps": "3", "seed": "1"})
    assert response.status_code == 200, response.text
    assert pipeline.calls[-1][1]["prompt"] is None and "prior_steps" not in pipeline.calls[-1][1]
    assert response.json()["result"]["command"].startswith("unclip img2img a.png --model tiny-model --strength 0.6")


@pytest.mark.parametrize("data,files,message", [
    ({"strength": "1.5"}, None, "strength"),
    ({"strength": "x"}, None, "strength"),
    ({"prompt": "x" * 301}, None, "prompt: 301 characters"),
    ({"num_images": "9"}, None, "num_images: 9"),
    ({}, {"image": ("t.png", b"not an image", "image/png")}, "image:"),
])
def test_img2img_refuses_bad_input(fake, data, files, message):
    client, pipeline = fake
    calls = len(pipeline.calls)
    files = files or {"image": ("a.png", _png(), "image/png")}
    response = client.post("/api/img2img", files=files, data=data)
    assert response.status_code == 422 and message in response.json()["error"], response.text
    assert len(pipeline.calls) == calls


def test_inpaint_endpoint(fake):
    client, pipeline = fake
    files = {"image": ("photo.png", _png(), "image/png"), "mask": ("brush.png", _mask_png(), "image/png")}
    response = client.post("/api/inpaint", files=files, data={"prompt": "a red heart", "resample": "2", "seed": "4"})
    assert response.status_code == 200, response.text
    name, call = pipeline.calls[-1]
    assert name == "inpaint" and call["resample"] == 2 and call["prompt"] == "a red heart"
    assert call["mask"] == _digest(Image.open(io.BytesIO(_mask_png())))
    assert response.json()["result"]["command"] == ("unclip inpaint photo.png 'a red heart' --mask brush.png "
                                                    "--model tiny-model --num-images 1 --resample 2 --seed 4")
    client.post("/api/inpaint", files=files, data={"seed": "4"})
    assert "resample" not in pipeline.calls[-1][1]                          # the library's default
    for data, extra, message in (({"resample": "0"}, {}, "resample"), ({"resample": "21"}, {}, "resample"),
                                 ({}, {"mask": ("m.png", _mask_png(20), "image/png")}, "mask: 20x20 pixels"),
                                 ({}, {"mask": ("m.png", b"", "image/png")}, "mask:")):
        response = client.post("/api/inpaint", files={**files, **extra}, data=data)
        assert response.status_code == 422 and message in response.json()["error"], response.text
    response = client.post("/api/inpaint", files={"image": files["image"]})
    assert response.status_code == 422 and "mask" in response.json()["error"]


def test_a_model_without_edits_says_so():
    with TestClient(create_app(FakePipeline(), model_ref="tiny")) as client:
        assert "img2img" not in client.get("/api/info").json()["operations"]
        response = client.post("/api/img2img", files={"image": ("a.png", _png(), "image/png")})
        assert response.status_code == 422 and "does not support img2img" in response.json()["error"]


def test_edits_on_a_real_pipeline_match_the_api_and_the_cli(tmp_path, monkeypatch):
    from unclip.cli import main

    pipe = tiny_pipeline("full", upsampler=True)
    model = pipe.save(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "image.png").write_bytes(_png())
    (tmp_path / "mask.png").write_bytes(_mask_png())
    with TestClient(create_app(pipe, model_ref=str(model))) as client:
        edited = client.post("/api/img2img", files={"image": ("image.png", _png(), "image/png")},
                             data={"prompt": "a blue square", "strength": "0.5", "seed": "5", "decoder_steps": "2",
                                   "upsampler_steps": "2", "prior_steps": "2"})
        painted = client.post("/api/inpaint", data={"prompt": "a blue square", "seed": "6", "resample": "2",
                                                    "decoder_steps": "2", "upsampler_steps": "2", "prior_steps": "2"},
                              files={"image": ("image.png", _png(), "image/png"),
                                     "mask": ("mask.png", _mask_png(), "image/png")})
    assert edited.status_code == 200 and painted.status_code == 200, (edited.text, painted.text)
    image, mask = Image.open(tmp_path / "image.png"), Image.open(tmp_path / "mask.png")
    kw = dict(decoder_steps=2, upsampler_steps=2, prior_steps=2, progress=False)
    direct = {"img2img": pipe.img2img(image, "a blue square", strength=0.5, seed=5, **kw),
              "inpaint": pipe.inpaint(image, mask, "a blue square", seed=6, resample=2, **kw)}
    for name, response in (("img2img", edited), ("inpaint", painted)):
        result = response.json()["result"]
        served = Image.open(io.BytesIO(base64.b64decode(result["images"][0]["png_base64"]))).convert("RGB")
        assert served.tobytes() == direct[name].images[0].tobytes()
        assert main(shlex.split(result["command"])[1:] + ["--out", f"{name}.png", "--quiet"]) == 0
        tile = Image.open(tmp_path / f"{name}.png").convert("RGB").crop((2, 2, 2 + served.width, 2 + served.height))
        assert tile.tobytes() == served.tobytes()
