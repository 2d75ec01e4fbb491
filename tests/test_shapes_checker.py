"""The independent shapes judge reads real renders correctly and is not fooled by blanks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from unclip.data.shapes import all_combinations, render_shape, sample_specs, render_spec
from unclip.eval.shapes_checker import judge_image, score_images


@pytest.mark.parametrize("side", [32, 64])
def test_every_combination_is_read_back_exactly(side):
    specs = all_combinations()
    images = [render_shape(s.shape, s.color, s.position, s.size, side) for s in specs]
    result = score_images(images, [s.caption for s in specs])
    assert result["n"] == 480 and result["n_withheld"] == 6 * 10
    assert result["exact"] == 1.0, result


def test_jittered_and_noisy_renders_are_mostly_right():
    rng = np.random.default_rng(0)
    specs = sample_specs(240, seed=3, jitter=0.02)
    images = []
    for spec in specs:
        pixels = np.asarray(render_spec(spec, 32), dtype=np.float64)
        pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
    result = score_images(images, [s.caption for s in specs])
    assert result["color_acc"] == 1.0 and result["position_acc"] == 1.0
    assert result["size_acc"] >= 0.98 and result["shape_acc"] >= 0.9, result


def test_wrong_attributes_and_blank_images_score_zero():
    image = render_shape("star", "red", "top left", "large", 32)
    judged = judge_image(image)
    assert (judged.shape, judged.color, judged.position, judged.size) == ("star", "red", "top left", "large")
    result = score_images([image], ["a small blue circle in the bottom right"])
    assert result["exact"] == 0.0 and result["color_acc"] == 0.0 and result["size_acc"] == 0.0
    blank = Image.new("RGB", (32, 32), "white")
    assert judge_image(blank).shape is None
    assert score_images([blank], ["a small red circle in the center"])["exact"] == 0.0
