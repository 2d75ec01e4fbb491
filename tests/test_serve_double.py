"""A TEST DOUBLE of the unCLIP pipeline for the server tests (not a model).

``FakePipeline`` has the call signatures the server uses and is deterministic
in (prompt or input image, seed, image index): each image is a flat colour
drawn from a fresh ``torch.Generator`` seeded per call, with a bar whose
width encodes the prompt length. It reports progress through the callback
at every step of every stage, and can be slowed down or made to fail.
The tests at the bottom check the double itself.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field

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
        return self._run([f"{p}|{negative_prompt or ''}" for p in prompts for _ in range(num_images_per_prompt)],
                         seed, callback, settings)

    def variations(self, image, *, num_images=1, seed=0, callback=None, progress=True, **settings):
        self._record("variations", dict(size=image.size, num_images=num_images, seed=seed, **settings))
        return self._run([f"variation|{_digest(image)}"] * num_images, seed, callback, settings)

    def interpolate(self, image_a, image_b, *, num_frames=5, seed=0, callback=None, progress=True, **settings):
        self._record("interpolate", dict(num_frames=num_frames, seed=seed, **settings))
        keys = [f"interp|{_digest(image_a)}|{_digest(image_b)}|{i}" for i in range(num_frames)]
        return self._run(keys, seed, callback, settings, same_seed=True)

    def text_diff(self, image, from_caption, to_caption, *, num_frames=5, seed=0, callback=None, progress=True, **settings):
        self._record("text_diff", dict(from_caption=from_caption, to_caption=to_caption, num_frames=num_frames,
                                       seed=seed, **settings))
        keys = [f"diff|{_digest(image)}|{from_caption}|{to_caption}|{i}" for i in range(num_frames)]
        return self._run(keys, seed, callback, settings, same_seed=True)

    # --- internals -------------------------------------------------------------
    def _record(self, name, kwargs):
        self.calls.append((name, kwargs))

    def _run(self, keys, seed, callback, settings, same_seed=False):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            for stage in self.stages:
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
                              prompts=keys, settings={"stages": self.defaults, **settings})
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


# --- the double's own checks ----------------------------------------------------
def test_double_is_deterministic_per_seed_and_reports_every_step():
    pipe = FakePipeline()
    steps = []
    first = pipe(["a red circle"], num_images_per_prompt=2, seed=7, callback=lambda *a: steps.append(a))
    again = pipe(["a red circle"], num_images_per_prompt=2, seed=7)
    other = pipe(["a red circle"], num_images_per_prompt=2, seed=8)
    assert [im.tobytes() for im in first.images] == [im.tobytes() for im in again.images]
    assert [im.tobytes() for im in first.images] != [im.tobytes() for im in other.images]
    assert first.seeds == [7, 8]
    assert steps[0] == ("prior", 1, 3, None) and steps[-1] == ("upsampler", 2, 2, None) and len(steps) == 9
