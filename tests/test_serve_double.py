"""A TEST DOUBLE of the unCLIP pipeline for the server tests (not a model).

``FakePipeline`` has the call signatures the server uses and is deterministic
in (prompt or input image, seed, image index): each image is a flat colour
drawn from a fresh ``torch.Generator`` seeded per call, with a bar whose
width encodes the prompt length. It reports progress through the callback
at every step of every stage, and can be slowed down or made to fail.
The tests at the bottom hold the double to the real pipeline (tiny random components) on everything
the server reads, so the server tests that use it stay meaningful when the pipeline changes.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field

import pytest
import torch
from PIL import Image, ImageDraw


@dataclass
class FakeOutput:
    images: list
    seeds: list
    prompts: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)


class FakePipeline:
    """Stand-in for unclip.pipelines.UnCLIPPipeline; records the calls it gets."""

    kind = "fake-unclip"
    stages = ("prior", "decoder", "upsampler")
    image_size = 16
    defaults = {"prior": {"steps": 3, "guidance_scale": 4.0}, "decoder": {"steps": 4, "guidance_scale": 3.0},
                "upsampler": {"steps": 2, "guidance_scale": 1.0}}

    def __init__(self, *, step_delay: float = 0.0, fail: Exception | None = None):
        self.step_delay = step_delay
        self.fail = fail
        self.calls: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0  # how many calls ran at the same time (the server must keep this at 1)

    # --- the operations the server calls ------------------------------------
    def __call__(self, prompts, *, negative_prompt=None, num_images_per_prompt=1, seed=0, callback=None, progress=True, **settings):
        self._record("generate", dict(prompts=list(prompts), negative_prompt=negative_prompt,
                                      num_images_per_prompt=num_images_per_prompt, seed=seed, **settings))
        labels = [p for p in prompts for _ in range(num_images_per_prompt)]  # as the real pipeline's prompts
        return self._run([f"{p}|{negative_prompt or ''}" for p in labels], seed, callback, settings, labels=labels)

    def variations(self, image, *, num_images=1, seed=0, callback=None, progress=True, **settings):
        self._record("variations", dict(size=image.size, num_images=num_images, seed=seed, **settings))
        return self._run([f"variation|{_digest(image)}"] * num_images, seed, callback, settings, prior=False)

    def interpolate(self, image_a, image_b, *, num_frames=5, seed=0, callback=None, progress=True, **settings):
        self._record("interpolate", dict(num_frames=num_frames, seed=seed, **settings))
        keys = [f"interp|{_digest(image_a)}|{_digest(image_b)}|{i}" for i in range(num_frames)]
        return self._run(keys, seed, callback, settings, same_seed=True, prior=False)

    def text_diff(self, image, from_caption, to_caption, *, num_frames=5, seed=0, callback=None, progress=True, **settings):
        self._record("text_diff", dict(from_caption=from_caption, to_caption=to_caption, num_frames=num_frames,
                                       seed=seed, **settings))
        keys = [f"diff|{_digest(image)}|{from_caption}|{to_caption}|{i}" for i in range(num_frames)]
        return self._run(keys, seed, callback, settings, same_seed=True, prior=False)

    # --- internals -------------------------------------------------------------
    def _record(self, name, kwargs):
        self.calls.append((name, kwargs))

    def _run(self, keys, seed, callback, settings, same_seed=False, labels=None, prior=True):
        """Images for ``keys``; manipulations start from an image's CLIP embedding, so no prior steps."""
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            for stage in (s for s in self.stages if prior or s != "prior"):
                total = settings.get(f"{stage}_steps", self.defaults.get(stage, self.defaults)["steps"])
                for step in range(1, total + 1):
                    if self.step_delay:
                        time.sleep(self.step_delay)
                    if callback is not None:
                        callback(stage, step, total, None)  # the real pipeline also passes x_t
            if self.fail is not None:
                raise self.fail
            seeds = [seed if same_seed else seed + i for i in range(len(keys))]
            return FakeOutput(images=[fake_image(key, s) for key, s in zip(keys, seeds)], seeds=seeds,
                              prompts=labels or keys, settings={"stages": self.defaults, **settings})
        finally:
            with self.lock:
                self.active -= 1


def fake_image(key: str, seed: int, size: int = 16) -> Image.Image:
    """The image the double makes for ``key`` and ``seed`` (a per-call generator, never global RNG)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + int(hashlib.sha1(key.encode()).hexdigest()[:8], 16))
    colour = tuple(int(v) for v in torch.randint(0, 256, (3,), generator=generator))
    image = Image.new("RGB", (size, size), colour)
    ImageDraw.Draw(image).rectangle((0, size - 3, min(size - 1, len(key) % size), size - 1), fill=(0, 0, 0))
    return image


def _digest(image: Image.Image) -> str:
    return hashlib.sha1(image.convert("RGB").tobytes()).hexdigest()[:12]


# --- the double against the real pipeline ---------------------------------------
# The server tests trust this double; here it is held to the real UnCLIPPipeline (tiny random
# components) on everything the server reads (unclip.serve.backend): the attributes, the keyword
# arguments it passes, the callback sequence, and the output's images, seeds, labels and settings.
OPERATIONS = {  # operation: (method, positional arguments, keyword arguments) as the backend calls them
    "generate": ("__call__", lambda: (["a red circle"],), dict(negative_prompt="a blue square", num_images_per_prompt=2)),
    "variations": ("variations", lambda: (_red(),), dict(num_images=2)),
    "interpolate": ("interpolate", lambda: (_red(), _blue()), dict(num_frames=3)),
    "text-diff": ("text_diff", lambda: (_red(), "a red circle", "a blue square"), dict(num_frames=3)),
}
STEPS = {"prior_steps": 3, "decoder_steps": 4, "upsampler_steps": 2, "decoder_guidance": 3.0}


def _red():
    return Image.new("RGB", (16, 16), (220, 30, 30))


def _blue():
    return Image.new("RGB", (16, 16), (30, 40, 220))


def _call(pipe, operation: str):
    method, args, kwargs = OPERATIONS[operation]
    steps = STEPS if operation == "generate" else {k: v for k, v in STEPS.items() if not k.startswith("prior")}
    calls = []
    out = getattr(pipe, method)(*args(), seed=7, callback=lambda *a: calls.append(tuple(a[:3])), progress=False,
                                **kwargs, **steps)
    return out, calls


@pytest.fixture(scope="module")
def real():
    from helpers.pipeline import tiny_pipeline

    torch.set_num_threads(1)
    return tiny_pipeline("full")


def test_double_has_the_attributes_the_server_reads(real):
    double = FakePipeline()
    assert double.stages == real.stages
    assert set(double.defaults) == set(real.defaults) and all("steps" in v for v in real.defaults.values())
    assert isinstance(real.image_size, int) and isinstance(double.image_size, int)
    assert isinstance(real.kind, str) and isinstance(double.kind, str)


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_double_answers_each_operation_like_the_real_pipeline(real, operation):
    expected, expected_calls = _call(real, operation)
    got, got_calls = _call(FakePipeline(), operation)
    # the same progress reports (stage, step, total), in the same order
    assert got_calls == expected_calls and expected_calls
    # as many images, PIL images of the pipeline's size, with the same seeds and one label each
    assert len(got.images) == len(expected.images) and got.seeds == expected.seeds
    assert all(im.size == (FakePipeline.image_size,) * 2 for im in got.images)
    assert all(im.size == (real.image_size,) * 2 for im in expected.images)
    assert len(got.prompts) == len(expected.prompts) == len(expected.images)
    assert isinstance(got.settings, dict) and isinstance(expected.settings, dict) and "stages" in expected.settings
    if operation == "generate":  # labels are the prompts
        assert got.prompts == expected.prompts == ["a red circle"] * 2


def test_double_is_deterministic_per_seed_and_can_fail():
    pipe = FakePipeline()
    first = pipe(["a red circle"], num_images_per_prompt=2, seed=7)
    again = pipe(["a red circle"], num_images_per_prompt=2, seed=7)
    other = pipe(["a red circle"], num_images_per_prompt=2, seed=8)
    assert [im.tobytes() for im in first.images] == [im.tobytes() for im in again.images]
    assert [im.tobytes() for im in first.images] != [im.tobytes() for im in other.images]
    with pytest.raises(RuntimeError, match="boom"):
        FakePipeline(fail=RuntimeError("boom"))(["a red circle"], seed=0)
