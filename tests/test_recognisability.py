"""The recognisability metric against a hand-computed fixture, and the real EfficientNet-Lite1 judge."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unclip.eval.recognisability import Recogniser, chance_pairs, recognised, recognition_rates

pytestmark = pytest.mark.usefixtures("one_thread")


class FirstRowLogits(nn.Module):
    """A fake classifier whose 10 logits are the first pixel row of the red channel."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x[:, 0, 0, :] + self.dummy


def _image(ranking: list[int]) -> torch.Tensor:
    """A [3, 10, 10] image whose fake logits rank the classes in ``ranking`` order (first = top-1)."""
    logits = torch.full((10,), -1.0)
    for place, cls in enumerate(ranking):
        logits[cls] = 0.9 - 0.1 * place
    image = torch.zeros(3, 10, 10)
    image[0, 0] = logits
    return image


def test_rates_by_hand():
    judge = Recogniser(FirstRowLogits(), input_size=10)
    references = torch.stack([_image([3]), _image([5]), _image([7]), _image([1])])  # top-1: 3, 5, 7, 1
    generated = torch.stack([
        _image([3, 0, 2, 4, 6]),      # 3 is top-1            → recognised
        _image([0, 1, 2, 4, 6, 5]),   # 5 is 6th, not top-5   → not
        _image([0, 1, 2, 4, 7]),      # 7 is 5th              → recognised
        _image([7, 0, 2, 4, 6]),      # no 1                  → not
    ])
    keys = ["a", "b", "c", "d"]
    rates = recognition_rates(judge, generated, references, keys, output_size=10, seed=0)
    assert rates["recognised"] == 0.5 and rates["ceiling"] == 1.0 and rates["n"] == 4
    # chance: generated i against the reference of perm[i] (another prompt), averaged over the rounds
    top5 = judge.top_k(generated, 5)
    expected = [sum(int(c) in top5[i].tolist() for i, c in enumerate(torch.tensor([3, 5, 7, 1])[perm])) / 4
                for perm in chance_pairs(keys, 0)]
    assert rates["chance"] == pytest.approx(sum(expected) / len(expected))
    # by hand for one pairing: 0→ref 1 (5 not in {3,0,2,4,6}), 1→ref 2 (7 no), 2→ref 3 (1 yes), 3→ref 0 (3 no)
    assert recognised(torch.tensor([5, 7, 1, 3]), top5).tolist() == [False, False, True, False]


def test_chance_pairs_never_pair_a_prompt_with_itself():
    keys = ["a", "a", "b", "b", "c", "d", "d", "d"]
    for perm in chance_pairs(keys, seed=3, rounds=20):
        assert sorted(perm) == list(range(len(keys)))
        assert all(keys[p] != keys[i] for i, p in enumerate(perm))


def test_ceiling_resizes_references_to_the_output_size():
    judge = Recogniser(FirstRowLogits(), input_size=10)
    refs = torch.stack([_image([3]), _image([5])])
    generated = refs.clone()
    assert recognition_rates(judge, generated, refs, ["a", "b"], output_size=10)["recognised"] == 1.0
    with pytest.raises(ValueError, match="one row per image"):
        recognition_rates(judge, generated, refs[:1], ["a", "b"])


def test_lite1_judge_reads_a_render_like_itself_and_noise_unlike_it():
    from unclip.eval.recognisability import load_recogniser

    judge = load_recogniser()
    g = torch.Generator().manual_seed(0)
    # smooth coloured blobs: the judge's top-1 on each is in its own top-5; noise images mostly are not
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    blobs = []
    for i in range(6):
        colour = torch.rand(3, 1, 1, generator=g) * 2 - 1
        mask = ((xx - 0.3 * (i % 3 - 1)) ** 2 + (yy - 0.2 * (i % 2)) ** 2 < 0.3 + 0.05 * i).float()
        blobs.append(mask * colour + (1 - mask))
    blobs = torch.stack(blobs)
    rates = recognition_rates(judge, blobs, blobs, [str(i) for i in range(6)])
    assert rates["recognised"] == 1.0 and rates["ceiling"] == 1.0
