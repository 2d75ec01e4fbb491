"""The real reference of FID/KID follows the prompts: drawn per chosen prompt (issue 23)."""

from __future__ import annotations

from collections import Counter

import pytest

from unclip.eval.evaluate import choose_prompts
from unclip.eval.reference import select_reference


def _shapes_like_split():
    """Like the shapes test split: few captions with 10 images each ("withheld"), most with one."""
    captions = [f"withheld {c}" for c in range(12) for _ in range(10)]
    captions += [f"seen {c}" for c in range(36)] + [f"pair {c}" for c in range(6) for _ in range(2)]
    order = list(range(len(captions)))
    import random

    random.Random(0).shuffle(order)  # images of one caption are not adjacent in a dataset
    return [captions[i] for i in order]


def test_reference_follows_the_prompts_not_the_images():
    captions = _shapes_like_split()
    assert sum(c.startswith("withheld") for c in captions) / len(captions) == pytest.approx(120 / 168)
    prompts = choose_prompts(captions, 20, seed=0)
    draw = select_reference(captions, prompts, per_prompt=2, seed=1)
    # per_prompt images of each prompt's own caption, in prompt order: the generated set's layout
    assert [captions[i] for i in draw.real] == [p for p in prompts for _ in range(2)]
    withheld = sum(p.startswith("withheld") for p in prompts) / len(prompts)
    assert sum(captions[i].startswith("withheld") for i in draw.real) / len(draw.real) == withheld
    # distinct where the caption has enough images, repeated only where it has one
    for k, prompt in enumerate(prompts):
        pair = draw.real[2 * k : 2 * k + 2]
        assert (pair[0] == pair[1]) == (captions.count(prompt) == 1), prompt
    assert draw.real_distinct == sum(min(2, captions.count(p)) for p in prompts)


def test_baseline_is_drawn_the_same_way_and_never_shares_an_image():
    captions = _shapes_like_split()
    prompts = choose_prompts(captions, 20, seed=0)
    draw = select_reference(captions, prompts, per_prompt=2, seed=1)
    assert not set(draw.real) & set(draw.baseline)
    assert len(draw.baseline) == len(draw.real)
    # the prompt's own other images where it has any; else a caption that is not a prompt, one per prompt
    own, substitutes = [], Counter()
    for k, prompt in enumerate(prompts):
        pair = [captions[i] for i in draw.baseline[2 * k : 2 * k + 2]]
        assert pair[0] == pair[1]
        if captions.count(prompt) > 2:  # images left after the reference took two
            own.append(pair[0] == prompt)
        else:
            assert pair[0] not in prompts
            substitutes[pair[0]] += 1
    assert all(own) and all(n == 1 for n in substitutes.values())
    assert draw.baseline_same_caption == pytest.approx(len(own) / len(prompts))


def test_reference_is_seeded():
    captions = _shapes_like_split()
    prompts = choose_prompts(captions, 20, seed=0)
    assert select_reference(captions, prompts, 2, seed=1) == select_reference(captions, prompts, 2, seed=1)
    assert select_reference(captions, prompts, 2, seed=1).real != select_reference(captions, prompts, 2, seed=2).real
    with pytest.raises(ValueError, match="not a caption"):
        select_reference(captions, ["a caption of no image"], 2, seed=1)


def test_a_split_with_too_few_captions_gives_a_short_baseline():
    captions = ["a", "a", "b"]
    draw = select_reference(captions, ["a", "b"], per_prompt=2, seed=0)
    assert sorted(captions[i] for i in draw.real) == ["a", "a", "b", "b"]
    assert [captions[i] for i in draw.baseline] == []  # "a" has no image left over; no substitute caption
