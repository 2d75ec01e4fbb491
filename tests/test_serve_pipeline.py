"""``unclip serve`` on a real (tiny, randomly initialised) UnCLIPPipeline: what the server
returns is exactly what the pipeline gives for the same seed, for every operation."""

from __future__ import annotations

import base64
import io

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra (fastapi) is not installed")
from helpers import pipeline as pipeline_helpers  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from unclip.serve.app import create_app  # noqa: E402


def _pixels(b64: str) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB").tobytes()


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def text_pipeline():
    return pipeline_helpers.tiny_pipeline("full", upsampler=True)  # prior + decoder + upsampler


@pytest.fixture(scope="module")
def image_pipeline():
    return pipeline_helpers.tiny_pipeline("unclip", upsampler=False)


def test_generate_matches_the_pipeline_for_the_returned_seed(text_pipeline):
    import torch

    rng_before = torch.get_rng_state()
    with TestClient(create_app(text_pipeline, model_ref="tiny")) as client:
        info = client.get("/api/info").json()
        assert info["stages"] == ["prior", "decoder", "upsampler"] and info["defaults"]["prior_steps"] == 4
        response = client.post("/api/generate", json={"prompt": "a red circle", "num_images": 2, "seed": 5,
                                                      "decoder_steps": 3, "upsampler_steps": 2, "prior_steps": 3,
                                                      "prior_guidance": 1.5})
        assert response.status_code == 200, response.text
        job = response.json()
    assert torch.equal(torch.get_rng_state(), rng_before)  # per-request generators only, never the global RNG
    result = job["result"]
    assert result["seeds"] == [5, 6] and job["progress"] == {"stage": "upsampler", "step": 2, "total": 2}
    assert result["command"].endswith("--seed 5 --prior-steps 3 --decoder-steps 3 --upsampler-steps 2 "
                                      "--prior-guidance 1.5")
    direct = text_pipeline(["a red circle"], num_images_per_prompt=2, seed=5, decoder_steps=3, upsampler_steps=2,
                           prior_steps=3, prior_guidance=1.5, progress=False)
    assert [_pixels(image["png_base64"]) for image in result["images"]] == [im.tobytes() for im in direct.images]
    assert Image.open(io.BytesIO(base64.b64decode(result["images"][0]["png_base64"]))).size == (32, 32)


def test_image_operations_on_a_real_pipeline(image_pipeline):
    with TestClient(create_app(image_pipeline, model_ref="tiny")) as client:
        red, blue = _png((220, 30, 30)), _png((30, 30, 220))
        variations = client.post("/api/variations", files={"image": ("r.png", red, "image/png")},
                                 data={"num_images": "2", "seed": "3", "decoder_steps": "2"})
        assert variations.status_code == 200, variations.text
        assert variations.json()["result"]["seeds"] == [3, 4]
        frames = client.post("/api/interpolate", data={"num_frames": "3", "seed": "1", "decoder_steps": "2"},
                             files={"image_a": ("a.png", red, "image/png"), "image_b": ("b.png", blue, "image/png")})
        assert frames.status_code == 200, frames.text
        assert len(frames.json()["result"]["images"]) == 3 and frames.json()["result"]["gif_base64"]
        diff = client.post("/api/text-diff", files={"image": ("r.png", red, "image/png")},
                           data={"from_caption": "a red circle", "to_caption": "a blue square", "num_frames": "2",
                                 "seed": "1", "decoder_steps": "2"})
        assert diff.status_code == 200, diff.text
        assert [im["label"] for im in diff.json()["result"]["images"]] == ["theta=0.00", "theta=0.50"]
        no_prior = client.post("/api/generate", json={"prompt": "a red circle"})
        assert no_prior.status_code == 422 and "prior" in no_prior.json()["error"]


def test_the_returned_command_reproduces_the_images(text_pipeline, image_pipeline, tmp_path, monkeypatch):
    """Run each result's 'unclip ...' command with the real CLI and compare pixels."""
    import shlex

    from unclip.cli import main

    text_dir = text_pipeline.save(tmp_path / "text-model")
    image_dir = image_pipeline.save(tmp_path / "image-model")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "red.png").write_bytes(_png((220, 30, 30)))
    with TestClient(create_app(text_pipeline, model_ref=str(text_dir))) as client:
        body = {"prompt": "a blue square", "num_images": 2, "seed": 21, "decoder_steps": 2, "upsampler_steps": 2,
                "decoder_guidance": 2.5, "prior_steps": 2, "prior_guidance": 3.5, "negative_prompt": "a circle"}
        generated = client.post("/api/generate", json=body).json()["result"]
    with TestClient(create_app(image_pipeline, model_ref=str(image_dir))) as client:
        varied = client.post("/api/variations", files={"image": ("red.png", _png((220, 30, 30)), "image/png")},
                             data={"num_images": "2", "seed": "8", "decoder_steps": "2"}).json()["result"]
    assert main(shlex.split(generated["command"])[1:] + ["--out-dir", "gen", "--quiet"]) == 0
    files = sorted((tmp_path / "gen").glob("*.png"))
    assert [Image.open(f).convert("RGB").tobytes() for f in files] == [_pixels(i["png_base64"]) for i in generated["images"]]
    assert main(shlex.split(varied["command"])[1:] + ["--out", "vary.png", "--quiet"]) == 0
    grid = Image.open(tmp_path / "vary.png").convert("RGB")
    first = Image.open(io.BytesIO(base64.b64decode(varied["images"][0]["png_base64"]))).convert("RGB")
    # the CLI writes a padded grid; the first tile starts at the padding offset (2 px)
    tile = grid.crop((2, 2, 2 + first.width, 2 + first.height))
    assert tile.tobytes() == first.tobytes()
