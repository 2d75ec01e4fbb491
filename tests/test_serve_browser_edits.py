"""The edit tabs in headless Chromium: paint a mask with the brush and inpaint; img2img with the slider.

Skipped, with the reason, where Chromium, chromedriver or selenium are missing (scripts/install_browser.sh).
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra (fastapi) is not installed")
pytest.importorskip("uvicorn", reason="the 'serve' extra (uvicorn) is not installed")

from browser.chromium import chromium, find_chromium, serve_in_thread, write_png  # noqa: E402
from test_serve_browser import _images_loaded, _wait  # noqa: E402
from test_serve_edits import FakeEditPipeline  # noqa: E402
from unclip.serve.app import create_app  # noqa: E402

_, _, MISSING = find_chromium()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(MISSING), reason=MISSING or "browser available")]


def test_brush_mask_inpaint_and_strength_slider(tmp_path):
    pipeline = FakeEditPipeline()
    masks = []
    original = pipeline.inpaint

    def inpaint(image, mask, prompt=None, **kwargs):
        masks.append(mask.copy())
        return original(image, mask, prompt, **kwargs)

    pipeline.inpaint = inpaint
    with serve_in_thread(create_app(pipeline, model_ref="tiny-model")) as url, chromium() as driver:
        from selenium.webdriver.common.action_chains import ActionChains

        driver.get(url)
        _wait(driver, lambda d: "tiny-model" in d.find_element("id", "model-info").text)
        driver.find_element("css selector", "[data-op=inpaint]").click()
        driver.find_element("id", "generate").click()                      # nothing chosen yet: a page error
        _wait(driver, lambda d: "choose an image" in d.find_element("id", "error").text)
        driver.find_element("id", "inpaint_image").send_keys(str(write_png(tmp_path / "red.png", (220, 30, 30))))
        canvas = driver.find_element("id", "inpaint_canvas")
        _wait(driver, lambda d: canvas.is_displayed() and canvas.get_attribute("width") == "32")
        driver.find_element("id", "generate").click()                      # an unpainted mask: a page error
        _wait(driver, lambda d: "paint the region" in d.find_element("id", "error").text)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)  # offsets from its centre
        width = canvas.size["width"]
        ActionChains(driver).move_to_element_with_offset(canvas, -width // 4, -width // 4).click_and_hold() \
            .move_by_offset(4, 4).release().perform()                      # a stroke in the top-left quarter
        driver.find_element("id", "inpaint_prompt").send_keys("a blue heart")
        driver.find_element("id", "generate").click()
        _wait(driver, lambda d: _images_loaded(d, 1))
        assert pipeline.calls[-1][0] == "inpaint" and pipeline.calls[-1][1]["prompt"] == "a blue heart"
        mask = masks[-1].convert("L")
        assert mask.size == (32, 32)                                       # the image's own size
        assert mask.getpixel((8, 8)) > 200 and mask.getpixel((28, 28)) < 50  # painted where the brush went
        assert "unclip inpaint red.png 'a blue heart' --mask mask.png" in driver.find_element("id", "command").text

        driver.find_element("css selector", "[data-op=img2img]").click()
        driver.find_element("id", "img2img_image").send_keys(str(tmp_path / "red.png"))
        slider = driver.find_element("id", "strength")
        driver.execute_script("arguments[0].value = 0.3; arguments[0].dispatchEvent(new Event('input'))", slider)
        assert driver.find_element("id", "strength_value").text == "0.30"
        driver.find_element("id", "generate").click()
        _wait(driver, lambda d: pipeline.calls[-1][0] == "img2img" and _images_loaded(d, 1))
        assert pipeline.calls[-1][1]["strength"] == 0.3 and pipeline.calls[-1][1]["prompt"] is None
