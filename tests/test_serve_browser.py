"""The page in headless Chromium: type a prompt, press Generate, see the images appear.

Needs Debian's chromium + chromium-driver and selenium (scripts/install_browser.sh
installs them); skipped, with the reason shown, only where they cannot be found.
The server runs on a loopback port with the pipeline test double.
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra (fastapi) is not installed")
pytest.importorskip("uvicorn", reason="the 'serve' extra (uvicorn) is not installed")

from browser.chromium import chromium, find_chromium, serve_in_thread, write_png  # noqa: E402
from test_serve_double import FakePipeline  # noqa: E402
from unclip.serve.app import create_app  # noqa: E402
from unclip.serve.config import ServeConfig  # noqa: E402

_, _, MISSING = find_chromium()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(MISSING), reason=MISSING or "browser available")]


@pytest.fixture(scope="module")
def page():
    pipeline = FakePipeline(step_delay=0.02)
    app = create_app(pipeline, model_ref="tiny-model", config=ServeConfig(max_queue=4))
    with serve_in_thread(app) as url, chromium() as driver:
        driver.get(url)
        yield driver, pipeline


def _wait(driver, condition, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def _images_loaded(driver, count):
    images = driver.find_elements("css selector", "#gallery img")
    loaded = driver.execute_script("return [...document.querySelectorAll('#gallery img')]"
                                   ".filter(im => im.complete && im.naturalWidth > 0).length")
    return len(images) == count and loaded == count


def test_type_prompt_press_generate_and_see_images(page):
    driver, pipeline = page
    _wait(driver, lambda d: "tiny-model" in d.find_element("id", "model-info").text)
    prompt = driver.find_element("id", "prompt")
    prompt.clear()
    prompt.send_keys("a large red circle in the center")
    count = driver.find_element("id", "num_images")
    count.clear()
    count.send_keys("3")
    seed = driver.find_element("id", "seed")
    seed.clear()
    seed.send_keys("42")
    driver.find_element("id", "generate").click()
    _wait(driver, lambda d: "step" in d.find_element("id", "status").text or _images_loaded(d, 3))
    _wait(driver, lambda d: _images_loaded(d, 3))
    command = driver.find_element("id", "command").text
    assert "unclip generate" in command and "--seed 42" in command and "--num-images 3" in command
    assert pipeline.calls[-1][1]["prompts"] == ["a large red circle in the center"]
    captions = [c.text for c in driver.find_elements("css selector", "#gallery figcaption")]
    assert captions[0].startswith("a large red circle in the center") and "seed 42" in captions[0]
    assert driver.find_element("id", "generate").is_enabled()


def test_empty_prompt_shows_an_error_not_a_request(page):
    driver, pipeline = page
    calls = len(pipeline.calls)
    driver.find_element("id", "prompt").clear()
    driver.find_element("id", "generate").click()
    _wait(driver, lambda d: d.find_element("id", "error").is_displayed())
    assert "prompt" in driver.find_element("id", "error").text
    assert len(pipeline.calls) == calls


def test_bad_seed_is_caught_in_the_page(page):
    driver, pipeline = page
    calls = len(pipeline.calls)
    driver.find_element("id", "prompt").send_keys("a circle")
    seed = driver.find_element("id", "seed")
    seed.clear()
    seed.send_keys("12abc")
    driver.find_element("id", "generate").click()
    _wait(driver, lambda d: "seed must be a whole number" in d.find_element("id", "error").text)
    assert len(pipeline.calls) == calls
    driver.find_element("id", "seed-random").click()
    assert seed.get_attribute("value") == "random"


def test_upload_for_variations(page, tmp_path):
    driver, pipeline = page
    driver.find_element("css selector", "[data-op=variations]").click()
    driver.find_element("id", "variation_image").send_keys(str(write_png(tmp_path / "red.png", (220, 30, 30))))
    count = driver.find_element("id", "num_variations")
    count.clear()
    count.send_keys("2")
    driver.find_element("id", "generate").click()
    _wait(driver, lambda d: _images_loaded(d, 2))
    assert pipeline.calls[-1][0] == "variations" and pipeline.calls[-1][1]["size"] == (32, 32)


def test_gallery_images_feed_an_interpolation(page):
    """Two gallery images become the interpolation's A and B; frames, GIF and strip appear."""
    driver, pipeline = page
    driver.find_element("css selector", "[data-op=generate]").click()
    prompt = driver.find_element("id", "prompt")
    prompt.clear()
    prompt.send_keys("a blue square")
    count = driver.find_element("id", "num_images")
    count.clear()
    count.send_keys("2")
    driver.find_element("id", "generate").click()
    _wait(driver, lambda d: _images_loaded(d, 2))
    buttons_a = driver.find_elements("css selector", "#gallery [data-reuse=image_a]")
    buttons_b = driver.find_elements("css selector", "#gallery [data-reuse=image_b]")
    buttons_a[0].click()
    _wait(driver, lambda d: d.execute_script("return document.getElementById('image_a').files.length") == 1)
    buttons_b[1].click()
    _wait(driver, lambda d: d.execute_script("return document.getElementById('image_b').files.length") == 1)
    assert driver.find_element("css selector", "[data-panel=interpolate]").is_displayed()
    frames = driver.find_element("id", "interp_frames")
    frames.clear()
    frames.send_keys("3")
    driver.find_element("id", "generate").click()
    _wait(driver, lambda d: _images_loaded(d, 3))
    assert driver.find_element("css selector", "#animation img.gif").is_displayed()
    assert pipeline.calls[-1][0] == "interpolate" and pipeline.calls[-1][1]["num_frames"] == 3
    assert "unclip interpolate unclip-seed" in driver.find_element("id", "command").text


def test_api_reference_page_renders_offline(page):
    driver, _ = page
    assert driver.find_element("css selector", "a.api-link").get_attribute("href").endswith("/docs")
    driver.get(driver.current_url.rstrip("/") + "/docs")
    _wait(driver, lambda d: len(d.find_elements("css selector", "section.endpoint")) >= 8)
    text = driver.find_element("id", "api").text
    assert "/api/generate" in text and "num_images" in text and "429" in text
