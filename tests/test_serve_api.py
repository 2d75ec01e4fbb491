"""HTTP API of ``unclip serve`` on a test double of the pipeline: every endpoint, good and bad inputs."""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra (fastapi) is not installed")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from test_serve_double import FakePipeline, fake_image  # noqa: E402
from unclip.serve.app import create_app  # noqa: E402
from unclip.serve.config import ServeConfig  # noqa: E402


def make_client(pipeline=None, **limits):
    app = create_app(pipeline or FakePipeline(), model_ref="tiny-model", config=ServeConfig(**limits))
    return TestClient(app)


@pytest.fixture()
def client():
    with make_client() as client:
        yield client


def png(colour=(200, 30, 30), size=(20, 20), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width=40000, height=40000) -> bytes:
    """A ~100-byte PNG whose header claims width x height pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


# --- page, health, info ----------------------------------------------------------
def test_page_and_static_assets_are_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="prompt"' in page.text and 'id="generate"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, works offline
    for asset in ("/docs", "/static/app.js", "/static/api.js", "/static/style.css"):
        response = client.get(asset)
        assert response.status_code == 200 and "http" not in response.text.replace("HTTP ", "").lower()
    assert "/openapi.json" in client.get("/docs").text  # our offline API page, not the CDN Swagger UI
    assert client.get("/redoc").status_code == 404


def test_health_info_and_openapi(client):
    assert client.get("/api/health").json()["status"] == "ok"
    info = client.get("/api/info").json()
    assert info["model"] == "tiny-model" and info["stages"] == ["prior", "decoder", "upsampler"]
    assert info["operations"] == ["generate", "variations", "interpolate", "text-diff"]
    assert info["limits"]["max_images"] == 8
    assert info["defaults"] == {"prior_steps": 3, "prior_guidance": 4.0, "decoder_steps": 4, "decoder_guidance": 3.0,
                                "upsampler_steps": 2}
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/generate", "/api/variations", "/api/interpolate", "/api/text-diff", "/api/jobs/{job_id}"):
        assert path in paths


# --- generate -------------------------------------------------------------------
def test_generate_returns_pngs_seeds_and_a_reproducing_command(client):
    body = {"prompt": "a red circle", "num_images": 3, "seed": 11, "decoder_steps": 2, "prior_guidance": 2.5}
    response = client.post("/api/generate", json=body)
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["seed"] == 11 and result["seeds"] == [11, 12, 13]
    images = [decode(image["png_base64"]) for image in result["images"]]
    assert [im.size for im in images] == [(16, 16)] * 3
    assert images[1].tobytes() == fake_image("a red circle|", 12).tobytes()
    assert result["command"] == ("unclip generate 'a red circle' --model tiny-model --num-images 3 --seed 11 "
                                 "--decoder-steps 2 --prior-guidance 2.5")
    assert result["settings"]["decoder_steps"] == 2
    assert result["settings"]["stages"]["prior"]["steps"] == 3  # the pipeline's own defaults are reported too
    again = client.post("/api/generate", json=body).json()["result"]
    assert [i["png_base64"] for i in again["images"]] == [i["png_base64"] for i in result["images"]]
    url = result["images"][0]["url"]
    assert client.get(url).content == base64.b64decode(result["images"][0]["png_base64"])


def test_random_seed_is_reported_and_reproduces(client):
    first = client.post("/api/generate", json={"prompt": "a square", "seed": "random"}).json()["result"]
    repeat = client.post("/api/generate", json={"prompt": "a square", "seed": first["seed"]}).json()["result"]
    assert repeat["images"][0]["png_base64"] == first["images"][0]["png_base64"]


def test_negative_prompt_reaches_the_pipeline():
    pipeline = FakePipeline()
    with make_client(pipeline) as client:
        result = client.post("/api/generate", json={"prompt": "a circle", "negative_prompt": "blue", "seed": 1})
    assert result.status_code == 200
    assert pipeline.calls[-1][1]["negative_prompt"] == "blue"
    assert "--negative-prompt blue" in result.json()["result"]["command"]


def test_async_job_reports_progress_then_result():
    with make_client(FakePipeline(step_delay=0.01)) as client:
        accepted = client.post("/api/generate?wait=false", json={"prompt": "a star", "seed": 5})
        assert accepted.status_code == 202 and accepted.headers["location"] == accepted.json()["status_url"]
        seen = set()
        for _ in range(2000):
            job = client.get(accepted.json()["status_url"]).json()
            seen.add(job["status"])
            if job["status"] == "running" and job["progress"]["total"]:
                seen.add(job["progress"]["stage"])
            if job["status"] == "done":
                break
            time.sleep(0.01)
        assert job["status"] == "done" and len(job["result"]["images"]) == 1
        assert "running" in seen and seen & {"prior", "decoder", "upsampler"}


@pytest.mark.parametrize("body, message", [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt: is empty"),
    ({"prompt": "x" * 301}, "limit of 300"),
    ({"prompt": "ok", "num_images": 9}, "num_images: 9 is more than"),
    ({"prompt": "ok", "num_images": 0}, "num_images"),
    ({"prompt": "ok", "decoder_steps": 251}, "decoder_steps: 251"),
    ({"prompt": "ok", "prior_steps": 0}, "prior_steps"),
    ({"prompt": "ok", "decoder_guidance": 25}, "decoder_guidance: 25"),
    ({"prompt": "ok", "prior_guidance": -1}, "prior_guidance"),
    ({"prompt": "ok", "seed": -3}, "seed"),
    ({"prompt": "ok", "seed": "abc"}, "seed"),
    ({"prompt": "ok", "steps": 3}, "steps: Extra inputs are not permitted"),
    ({"num_images": 1}, "prompt: Field required"),
])
def test_generate_refuses_bad_inputs_with_one_line(client, body, message):
    response = client.post("/api/generate", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert message in error and "\n" not in error


def test_bodies_without_length_or_too_large_are_refused(client):
    huge = {"prompt": "x" * (70 * 1024)}
    assert client.post("/api/generate", json=huge).status_code == 413
    streamed = client.post("/api/generate", content=iter([b'{"prompt": "a"}']),
                           headers={"content-type": "application/json"})
    assert streamed.status_code == 411 and "Content-Length" in streamed.json()["error"]
    assert client.post("/api/generate", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422


# --- uploads ----------------------------------------------------------------------
def test_variations_of_an_upload(client):
    response = client.post("/api/variations", files={"image": ("in.png", png(), "image/png")},
                           data={"num_images": "2", "seed": "4", "decoder_steps": "3"})
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["seeds"] == [4, 5] and len(result["images"]) == 2
    assert result["command"] == "unclip vary in.png --model tiny-model --num-images 2 --seed 4 --decoder-steps 3"


def test_transparent_upload_becomes_rgb_on_white():
    pipeline = FakePipeline()
    with make_client(pipeline) as client:
        rgba = png((0, 0, 0, 0), mode="RGBA")
        assert client.post("/api/variations", files={"image": ("t.png", rgba, "image/png")}).status_code == 200
    assert pipeline.calls[-1][1]["size"] == (20, 20)


@pytest.mark.parametrize("data, status, message", [
    (b"this is not an image", 422, "not a readable image"),
    (b"", 422, "empty"),
    (png()[:60], 422, "corrupt or truncated"),
    (bomb_png(), 422, "decompression bomb"),
    (b"GIF89a" + b"\0" * 10, 422, "image"),
])
def test_bad_uploads_are_refused_clearly(client, data, status, message):
    response = client.post("/api/variations", files={"image": ("x.png", data, "image/png")})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_upload_size_and_pixel_limits():
    with make_client(max_upload_bytes=2000, max_image_pixels=32 * 32) as client:
        noisy = io.BytesIO()
        Image.frombytes("RGB", (30, 30), bytes(range(256)) * 10 + bytes(140)).save(noisy, format="BMP")
        too_big = client.post("/api/variations", files={"image": ("n.bmp", noisy.getvalue(), "image/bmp")})
        assert too_big.status_code == 413 and "2000 bytes" in too_big.json()["error"]
        wide = client.post("/api/variations", files={"image": ("w.png", png(size=(64, 64)), "image/png")})
        assert wide.status_code == 422 and "64x64" in wide.json()["error"]
        body = client.post("/api/variations", files={"image": ("b.png", b"\0" * 10_000, "image/png")})
        assert body.status_code == 413


def test_large_uploads_are_downscaled_before_queueing():
    pipeline = FakePipeline()
    with make_client(pipeline, max_image_side=64) as client:
        response = client.post("/api/variations", files={"image": ("big.png", png(size=(300, 150)), "image/png")})
    assert response.status_code == 200
    assert pipeline.calls[-1][1]["size"] == (64, 32)


def test_upload_form_fields_are_validated(client):
    files = {"image": ("in.png", png(), "image/png")}
    assert client.post("/api/variations", files=files, data={"seed": "soon"}).status_code == 422
    assert client.post("/api/variations", files=files, data={"num_images": "100"}).status_code == 422
    assert client.post("/api/variations", files=files, data={"decoder_guidance": "50"}).status_code == 422
    assert client.post("/api/variations", data={"num_images": "1"}).status_code == 422  # no file


def test_interpolate_returns_frames_gif_and_strip(client):
    files = {"image_a": ("a.png", png((255, 0, 0)), "image/png"), "image_b": ("b.png", png((0, 0, 255)), "image/png")}
    response = client.post("/api/interpolate", files=files, data={"num_frames": "4", "seed": "9"})
    assert response.status_code == 200, response.text
    job = response.json()
    result = job["result"]
    assert len(result["images"]) == 4 and result["seeds"] == [9] * 4
    gif = decode(result["gif_base64"])
    assert gif.format == "GIF" and gif.n_frames == 6  # ping-pong: 4 forward, 2 back
    assert decode(result["strip_png_base64"]).size == (64, 16)
    assert client.get(result["animation_url"]).headers["content-type"] == "image/gif"
    assert result["command"] == "unclip interpolate a.png b.png --model tiny-model --frames 4 --seed 9"
    one = {"image_a": files["image_a"]}
    assert client.post("/api/interpolate", files=one).status_code == 422
    assert client.post("/api/interpolate", files=files, data={"num_frames": "1"}).status_code == 422
    assert client.post("/api/interpolate", files=files, data={"num_frames": "13"}).status_code == 422


def test_text_diff(client):
    files = {"image": ("in.png", png(), "image/png")}
    data = {"from_caption": "a red circle", "to_caption": "a blue square", "num_frames": "3", "seed": "2"}
    response = client.post("/api/text-diff", files=files, data=data)
    assert response.status_code == 200, response.text
    assert len(response.json()["result"]["images"]) == 3
    assert response.json()["result"]["command"] == ("unclip textdiff in.png --from 'a red circle' --to 'a blue square' "
                                                    "--model tiny-model --frames 3 --seed 2")
    empty = client.post("/api/text-diff", files=files, data={**data, "to_caption": " "})
    assert empty.status_code == 422 and "to_caption" in empty.json()["error"]
    assert client.post("/api/text-diff", files=files, data={"from_caption": "a"}).status_code == 422


def test_one_stage_model_with_flat_defaults():
    class OneStage(FakePipeline):  # shaped like unclip.pipelines.clip_vq.ClipVQPipeline
        kind, stages = "clipvq", ("decoder",)
        defaults = {"steps": 5, "guidance_scale": 3.0, "truncation": 0.9}
        variations = interpolate = text_diff = None
    with make_client(OneStage()) as client:
        info = client.get("/api/info").json()
        assert info["defaults"] == {"decoder_steps": 5, "decoder_guidance": 3.0}
        assert info["operations"] == ["generate"]
        response = client.post("/api/generate", json={"prompt": "a", "seed": 1, "decoder_steps": 2,
                                                      "prior_steps": 4})
    assert response.status_code == 200, response.text
    assert response.json()["result"]["command"].endswith("--seed 1 --decoder-steps 2")


def test_operations_the_model_lacks_are_refused():
    class TextOnly(FakePipeline):
        variations = None
    with make_client(TextOnly()) as client:
        assert "variations" not in client.get("/api/info").json()["operations"]
        response = client.post("/api/variations", files={"image": ("in.png", png(), "image/png")})
    assert response.status_code == 422 and "does not support variations" in response.json()["error"]


# --- jobs, queue, limits ----------------------------------------------------------
def test_full_queue_answers_429_at_once_and_cancel_works():
    # the first job is slow (60 steps of 0.1 s) so it is still running when the queue fills; it is
    # cancelled at the end, which stops it at its next step
    with make_client(FakePipeline(step_delay=0.1), max_queue=1) as client:
        running = client.post("/api/generate?wait=false", json={"prompt": "a", "decoder_steps": 60}).json()
        for _ in range(1000):  # wait until the worker picked it up
            if client.get(running["status_url"]).json()["status"] == "running":
                break
            time.sleep(0.01)
        waiting = client.post("/api/generate?wait=false", json={"prompt": "b"})
        assert waiting.status_code == 202 and waiting.json()["position"] == 1
        start = time.perf_counter()
        refused = client.post("/api/generate", json={"prompt": "c"})
        assert refused.status_code == 429 and time.perf_counter() - start < 1.0
        assert "queue is full" in refused.json()["error"] and refused.headers["retry-after"] == "2"
        upload = client.post("/api/variations", files={"image": ("x.png", b"not decoded at all", "image/png")})
        assert upload.status_code == 429  # refused before the upload is decoded
        cancelled = client.delete(waiting.json()["status_url"]).json()
        assert cancelled["status"] == "cancelled"
        client.delete(running["status_url"])
        for _ in range(200):
            job = client.get(running["status_url"]).json()
            if job["status"] != "running":
                break
            time.sleep(0.01)
        assert job["status"] == "cancelled"
        assert client.get(f"{running['status_url']}/images/0.png").status_code == 409


def test_time_limit_stops_a_slow_job():
    with make_client(FakePipeline(step_delay=0.1), time_limit_s=0.3) as client:
        response = client.post("/api/generate", json={"prompt": "slow"})
        assert response.status_code == 504 and "time limit" in response.json()["error"]
        assert client.get("/api/health").json()["queue"]["running"] == 0


def test_unknown_jobs_and_images(client):
    assert client.get("/api/jobs/nope").status_code == 404
    assert client.delete("/api/jobs/nope").status_code == 404
    job = client.post("/api/generate", json={"prompt": "a"}).json()
    assert client.get(f"/api/jobs/{job['job_id']}/images/5.png").status_code == 404
    assert client.get(f"/api/jobs/{job['job_id']}/animation.gif").status_code == 404
    assert client.get("/api/nothing-here").json()["status"] == 404


def test_pipeline_bug_gives_500_and_the_server_keeps_serving():
    pipeline = FakePipeline(fail=RuntimeError("boom"))
    with make_client(pipeline) as client:
        broken = client.post("/api/generate", json={"prompt": "a"})
        assert broken.status_code == 500 and "RuntimeError: boom" in broken.json()["error"]
        pipeline.fail = None
        assert client.post("/api/generate", json={"prompt": "a"}).status_code == 200


def test_concurrent_requests_get_their_own_results():
    pipeline = FakePipeline(step_delay=0.001)
    with make_client(pipeline, max_queue=16) as client:
        answers = {}

        def ask(n):
            body = {"prompt": f"prompt {n}", "num_images": 1 + n % 3, "seed": 100 + n}
            answers[n] = client.post("/api/generate", json=body)

        threads = [threading.Thread(target=ask, args=(n,)) for n in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert pipeline.max_active == 1  # one job at a time on the shared model
    for n, response in answers.items():
        assert response.status_code == 200, response.text
        result = response.json()["result"]
        assert result["seed"] == 100 + n and len(result["images"]) == 1 + n % 3
        expected = fake_image(f"prompt {n}|", 100 + n).tobytes()
        assert decode(result["images"][0]["png_base64"]).convert("RGB").tobytes() == expected


def test_finished_jobs_are_dropped_beyond_keep_results():
    with make_client(keep_results=2) as client:
        ids = [client.post("/api/generate", json={"prompt": "a"}).json()["job_id"] for _ in range(4)]
        assert client.get(f"/api/jobs/{ids[0]}").status_code == 404
        assert client.get(f"/api/jobs/{ids[-1]}").status_code == 200


# --- issue 22: strict numbers, clear messages for bad JSON, settings for missing stages ----------
@pytest.mark.parametrize("value", ["2", True, 2.0])
def test_num_images_must_be_a_json_integer(client, value):
    response = client.post("/api/generate", json={"prompt": "ok", "num_images": value})
    assert response.status_code == 422 and response.json()["error"].startswith("num_images: ")


@pytest.mark.parametrize("body", [{"decoder_steps": "3"}, {"seed": "7"}, {"prior_guidance": True}])
def test_other_numbers_are_strict_too(client, body):
    assert client.post("/api/generate", json={"prompt": "ok", **body}).status_code == 422


def test_malformed_json_gets_a_sentence_not_a_position(client):
    response = client.post("/api/generate", content=b'{"prompt": ', headers={"content-type": "application/json"})
    error = response.json()["error"]
    assert response.status_code == 422 and error.startswith("the request body is not valid JSON")
    assert "JSON decode error" not in error and not error.startswith("11")


def test_a_large_json_body_is_not_told_to_send_smaller_images(client):
    response = client.post("/api/generate", json={"prompt": "x" * (70 * 1024)})
    assert response.status_code == 413
    error = response.json()["error"]
    assert "images" not in error and "shorter" in error and "300 characters" in error


def test_upsampler_steps_on_a_model_without_an_upsampler_is_refused():
    class TwoStages(FakePipeline):
        stages = ("prior", "decoder")

    with make_client(TwoStages()) as client:
        response = client.post("/api/generate", json={"prompt": "ok", "upsampler_steps": 3})
        assert response.status_code == 422 and "no upsampler" in response.json()["error"]
        upload = client.post("/api/variations", files={"image": ("in.png", png(), "image/png")},
                             data={"upsampler_steps": "3"})
        assert upload.status_code == 422 and "no upsampler" in upload.json()["error"]
        assert client.post("/api/generate", json={"prompt": "ok", "decoder_steps": 3}).status_code == 200
