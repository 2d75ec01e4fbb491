"""How far image i sampled alone is from image i of a batch (same seed): the float-rounding spread.

    PYTHONPATH=src:tests python scripts/batch_spread.py --threads 1 [--shipped shapes]

For the tiny random pipelines of the tests (``tests/helpers/pipeline.py``) and, with ``--shipped``, a
shipped model at its default settings, each image of a batch is sampled again alone from its recorded
seed. Printed per pipeline and sampler: the worst mean |difference| in [-1, 1] units, the nearest other
image of the batch (what a wrong seed would give), and the worst uint8 difference with the fraction of
pixels that differ at all. ``tests/test_pipeline.py`` sets its tolerance from these numbers.
"""

from __future__ import annotations

import argparse
import time

import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().int()


def spread(pipe, prompts: list[str], sampler: str | None, per_prompt: int) -> dict:
    kw = {"sampler": sampler} if sampler else {}
    out = pipe(prompts, num_images_per_prompt=per_prompt, seed=11, progress=False, output_type="pt", **kw)
    own, nearest, u8_max, u8_frac = [], [], 0, 0.0
    for i, seed in enumerate(out.seeds):
        alone = pipe([out.prompts[i]], seed=seed, progress=False, output_type="pt", **kw).images[0]
        own.append((alone - out.images[i]).abs().mean().item())
        nearest.append(min((alone - other).abs().mean().item() for j, other in enumerate(out.images) if j != i))
        diff = (to_uint8(alone) - to_uint8(out.images[i])).abs()
        u8_max, u8_frac = max(u8_max, diff.max().item()), max(u8_frac, (diff > 0).float().mean().item())
    return {"own": max(own), "nearest_other": min(nearest), "uint8_max": u8_max, "uint8_frac": u8_frac}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shipped", default=None, help="also measure this shipped model (e.g. shapes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from helpers.pipeline import tiny_pipeline

    cases = [(kind, tiny_pipeline(kind), ["a red circle"], s, 6) for kind in ("full", "glide")
             for s in ("ddim", "dpm++2m")]
    if args.shipped:
        from unclip.pipelines import load_pipeline

        prompts = ["a large red circle in the center", "a small blue square at the top left"]
        cases.append((args.shipped, load_pipeline(args.shipped), prompts, None, 2))
    print(f"threads {args.threads}, cpu capability {torch.backends.cpu.get_cpu_capability()}")
    for name, pipe, prompts, sampler, per_prompt in cases:
        start = time.perf_counter()
        r = spread(pipe, prompts, sampler, per_prompt)
        print(f"{name:8s} {sampler or 'default':8s} own mean|d| {r['own']:.2e}  nearest other {r['nearest_other']:.2e}"
              f"  uint8 max {r['uint8_max']} ({r['uint8_frac']:.1%} of values)  {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
