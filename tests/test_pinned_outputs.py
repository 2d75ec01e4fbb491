"""Pinned outputs: fixed seeds on tiny random models give these numbers, before and after any refactor.

Each case records checksums of a sample (its sum and a sum weighted by a fixed ramp, which sees where
the values sit), so a changed step, grid, noise draw or guidance shows up. The numbers were recorded on
main before the sampler registry and typed settings (issue #19); a change to them must name the bug it
fixes in its commit. Run ``python tests/test_pinned_outputs.py`` to print the current values.

The sampler cases run on a smooth stand-in network in float64 (exact to ~1e-12 on any CPU); the pipeline
cases run the tiny float32 pipelines of ``tests/helpers``. Their tolerance scales with the number of values
summed: ``PIXEL_TOL`` per value. Recorded on an AVX512 host, an AVX2-only host drifts by at most 1e-6 per value
(0.0056 on a sum of 6144); a 1% change of decoder guidance moves the same sum by 3.9, eta 0 -> 0.01 by 10.
"""

from __future__ import annotations


import pytest
import torch
from PIL import Image

from helpers.pipeline import tiny_clipvq, tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def checksums(x: torch.Tensor) -> tuple[float, float]:
    x = x.double().flatten()
    ramp = torch.linspace(-1, 1, x.numel(), dtype=torch.float64)
    return float(x.sum()), float((x * ramp).sum())


# --- samplers on a stand-in network (float64) -----------------------------------------------------
def _net(x, t, scale=0.5):
    """Any smooth function of (x, t) stands in for a network (house rule 2)."""
    s = (t.double() / 100).reshape(-1, *([1] * (x.ndim - 1)))
    return scale * torch.tanh(0.8 * x + s) - 0.2 * x.roll(1, dims=-1) * s


def _diffusion(prediction="eps"):
    from unclip.diffusion import DiffusionConfig, GaussianDiffusion

    return GaussianDiffusion(DiffusionConfig(timesteps=100, prediction=prediction))


def _x(seed=0, shape=(2, 3, 4, 4)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def sampler_cases() -> dict[str, torch.Tensor]:
    from unclip.diffusion.samplers import ddim_invert, inpaint, sample, sdedit_start
    from unclip.train.stages.distill import nested_grids, teacher_ddim_target

    out = {}
    d = _diffusion("v")
    for name, kwargs in [("ddim", {}), ("ddim", {"eta": 0.7}), ("ddpm", {}), ("dpm++2m", {}),
                         ("dpm++2m", {"spacing": "quadratic"}), ("ddim", {"clip_denoised": True}),
                         ("ddpm", {"dynamic_threshold": 0.9})]:
        key = name + "".join(f"-{k}={v}" for k, v in kwargs.items())
        out[key] = sample(name, _net, _x(), d, steps=6, generator=torch.Generator().manual_seed(1), **kwargs)
    out["ddim_invert"] = ddim_invert(_net, _x(), d, steps=6)
    x_start, start = sdedit_start(_x(2), _x(3), d, steps=6, strength=0.5)
    out["sdedit-ddim"] = sample("ddim", _net, x_start, d, steps=6, start_step=start)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    mask[..., 1:3, 1:3] = 1
    for name in ("ddim", "ddpm"):
        out[f"repaint-{name}"] = inpaint(name, _net, _x(), d, known=_x(4), mask=mask, resample=2, steps=5,
                                         generator=torch.Generator().manual_seed(5))
    student, teacher = nested_grids(100, 4)
    out["distill-target"], _ = teacher_ddim_target(_net, _diffusion("eps"), _x(6), torch.tensor([0, 2]),
                                                   student, teacher, clip_denoised=True)
    return out


SAMPLER_PINS = {
    'ddim': (-22.098337748350417, 6.832659863047823),
    'ddim-clip_denoised=True': (-20.951099126980118, 6.586777868658304),
    'ddim-eta=0.7': (-13.462589248247436, 3.050603698440735),
    'ddim_invert': (10.376223264150415, 16.37076033278447),
    'ddpm': (-9.904801981274709, -0.38078276974077285),
    'ddpm-dynamic_threshold=0.9': (-8.956636650900336, -0.20469989210049966),
    'distill-target': (-23.876424057495182, -0.8166890309406718),
    'dpm++2m': (-21.37348535755594, 7.676830999209745),
    'dpm++2m-spacing=quadratic': (-21.8447390581803, 7.592975757247543),
    'repaint-ddim': (0.1868917534688599, 4.713463036437534),
    'repaint-ddpm': (-2.4303018162067835, 6.068878974891844),
    'sdedit-ddim': (-22.681334387935223, -3.1995852242480525),
}


@pytest.mark.parametrize("case", sorted(SAMPLER_PINS))
def test_sampler_outputs_are_pinned(case, sampler_outputs):
    assert checksums(sampler_outputs[case]) == pytest.approx(SAMPLER_PINS[case], abs=1e-9)


def test_every_sampler_case_is_pinned(sampler_outputs):
    assert sorted(sampler_outputs) == sorted(SAMPLER_PINS)


@pytest.fixture(scope="module")
def sampler_outputs():
    return sampler_cases()


# --- the tiny pipelines (float32) -------------------------------------------------------------------
FAST = dict(progress=False, precision="fp32", output_type="pt")


def _red():
    return Image.new("RGB", (16, 16), (220, 30, 30))


def _box_mask():
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (4, 4, 12, 12))
    return mask


PIPELINE_CASES = {
    "unclip-ddim": lambda p: p("a red circle", num_images_per_prompt=2, seed=3, sampler="ddim", **FAST),
    "unclip-ddpm": lambda p: p("a red circle", num_images_per_prompt=2, seed=3, sampler="ddpm", **FAST),
    "unclip-dpm++2m": lambda p: p("a red circle", num_images_per_prompt=2, seed=3, sampler="dpm++2m", **FAST),
    "unclip-ddim-eta": lambda p: p("a red circle", num_images_per_prompt=2, seed=3, eta=0.5, **FAST),
    "unclip-mixed": lambda p: p("a blue square", seed=7, prior_sampler="dpm++2m", decoder_sampler="ddpm",
                                prior_steps=3, decoder_guidance=5.0, spacing="quadratic", **FAST),
    "unclip-invert": lambda p: p.variations(_red(), num_images=2, seed=4, from_inversion=True, eta=0.0, **FAST),
    "unclip-inpaint": lambda p: p.inpaint(_red(), _box_mask(), "a blue square", seed=5, resample=2, **FAST),
    "unclip-img2img": lambda p: p.img2img(_red(), "a blue square", strength=0.5, seed=6, **FAST),
}
CLIPVQ_SAMPLERS = ("ancestral", "purity")
PIPELINE_PINS = {
    'unclip-ddim': (498.0702, -96.1901),
    'unclip-ddim-eta': (575.8758, -105.3112),
    'unclip-ddpm': (780.8469, -116.5521),
    'unclip-dpm++2m': (503.1238, -96.6066),
    'unclip-img2img': (-207.0165, -643.107),
    'unclip-inpaint': (-765.4199, -763.0297),
    'unclip-invert': (599.3157, -63.3079),
    'unclip-mixed': (367.0908, -113.3527),
}
CODE_PINS = {
    'ancestral': [0, 11, 10, 10, 1, 1, 15, 5, 13, 3, 9, 2, 5, 1, 2, 9, 13, 4, 6, 10, 5, 10, 1, 5, 1, 2, 3, 11, 14, 7, 0, 3],
    'purity': [0, 7, 5, 13, 10, 1, 2, 7, 13, 2, 9, 14, 0, 5, 13, 13, 13, 13, 7, 13, 10, 5, 1, 0, 0, 5, 10, 13, 9, 5, 1, 14],
}


PIXEL_TOL = 5e-6  # per summed value: ~5x the worst cross-CPU drift seen, ~1000x below a 1% guidance change


@pytest.fixture(scope="module")
def full():
    return tiny_pipeline("full")


@pytest.mark.parametrize("case", sorted(PIPELINE_CASES))
def test_unclip_pipeline_outputs_are_pinned(case, full):
    images = PIPELINE_CASES[case](full).images
    assert checksums(images) == pytest.approx(PIPELINE_PINS[case], abs=PIXEL_TOL * images.numel())


@pytest.mark.parametrize("sampler", CLIPVQ_SAMPLERS)
def test_clipvq_codes_are_pinned(sampler):
    codes = tiny_clipvq()("a red circle", num_images_per_prompt=2, seed=3, sampler=sampler, output_type="latent",
                      progress=False, precision="fp32").images
    assert codes.flatten().tolist() == CODE_PINS[sampler]


if __name__ == "__main__":
    torch.set_num_threads(1)
    print("SAMPLER_PINS = {")
    for key, value in sorted(sampler_cases().items()):
        print(f"    {key!r}: {checksums(value)!r},")
    print("}")
    pipe = tiny_pipeline("full")
    print("PIPELINE_PINS = {")
    for key in sorted(PIPELINE_CASES):
        print(f"    {key!r}: {tuple(round(v, 4) for v in checksums(PIPELINE_CASES[key](pipe).images))!r},")
    print("}")
    print("CODE_PINS = {")
    for sampler in CLIPVQ_SAMPLERS:
        codes = tiny_clipvq()("a red circle", num_images_per_prompt=2, seed=3, sampler=sampler, output_type="latent",
                          progress=False, precision="fp32").images
        print(f"    {sampler!r}: {codes.flatten().tolist()!r},")
    print("}")
